"""Finding labels for a synthetic study: realistic prevalences and clinical co-occurrence.

A study first draws its clinical contexts (trauma, stroke, tumour, elderly patient), each of
which raises the chance of its findings while keeping every finding's marginal prevalence at its
base value. Then consequences follow with a probability (a large subdural brings mass effect,
mass effect brings midline shift, IVH brings hydrocephalus, ...). Last, hard rules are closed
over (herniation implies mass effect, hemorrhagic transformation implies an infarct, ``ich_any``
is positive exactly when a hemorrhage is) so every label vector is clinically consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.findings import FINDING_CODES, FINDING_INDEX

# Findings drawn with blood: ich_any is positive if and only if one of these is.
ICH_SUBTYPES: tuple[str, ...] = (
    "intraparenchymal_hemorrhage",
    "intraventricular_hemorrhage",
    "subarachnoid_hemorrhage",
    "subdural_hematoma_acute",
    "subdural_hematoma_subacute",
    "subdural_hematoma_chronic",
    "epidural_hematoma",
    "hemorrhagic_transformation",
    "cerebral_contusion",
    "diffuse_axonal_injury",
)
# Extra-axial collections: each makes extra_axial_collection positive (which may also stand alone).
EXTRA_AXIAL_COLLECTIONS: tuple[str, ...] = (
    "subdural_hematoma_acute",
    "subdural_hematoma_subacute",
    "subdural_hematoma_chronic",
    "epidural_hematoma",
    "subdural_hygroma",
)
# Lateralised supratentorial lesions that can push the midline across.
SHIFTING_LESIONS: tuple[str, ...] = (
    "epidural_hematoma",
    "subdural_hematoma_acute",
    "subdural_hematoma_subacute",
    "subdural_hematoma_chronic",
    "intraparenchymal_hemorrhage",
    "acute_territorial_infarct",
    "intra_axial_mass",
    "extra_axial_mass",
    "infection_abscess",
    "cerebral_contusion",
)


@dataclass(frozen=True)
class Context:
    """A clinical setting: how often it occurs and how much it concentrates its findings."""

    probability: float
    lift: float


CONTEXTS: dict[str, Context] = {
    "trauma": Context(0.20, 4.5),
    "stroke": Context(0.09, 7.0),
    "tumor": Context(0.05, 10.0),
    "elderly": Context(0.35, 2.2),
}

# Marginal probability of each finding arising on its own, and its context. Findings absent
# here arise only as consequences (their marginal prevalence is reported by the tests).
BASE_PREVALENCE: dict[str, tuple[float, str | None]] = {
    "intraparenchymal_hemorrhage": (0.035, "stroke"),
    "intraventricular_hemorrhage": (0.006, None),
    "subarachnoid_hemorrhage": (0.035, "trauma"),
    "subdural_hematoma_acute": (0.045, "trauma"),
    "subdural_hematoma_subacute": (0.012, "trauma"),
    "subdural_hematoma_chronic": (0.020, "elderly"),
    "epidural_hematoma": (0.01, "trauma"),
    "hemorrhagic_transformation": (0.004, "stroke"),
    "extra_axial_collection": (0.006, None),
    "acute_territorial_infarct": (0.028, "stroke"),
    "early_ischemic_change": (0.015, "stroke"),
    "hyperdense_artery_sign": (0.010, "stroke"),
    "subacute_infarct": (0.020, "stroke"),
    "acute_lacunar_infarct": (0.012, "stroke"),
    "cerebellar_infarct": (0.008, "stroke"),
    "brainstem_infarct": (0.007, "stroke"),
    "hypoxic_ischemic_injury": (0.007, None),
    "dense_venous_sinus": (0.007, None),
    "calvarial_fracture": (0.025, "trauma"),
    "depressed_skull_fracture": (0.008, "trauma"),
    "skull_base_fracture": (0.012, "trauma"),
    "facial_orbital_fracture": (0.015, "trauma"),
    "cerebral_contusion": (0.020, "trauma"),
    "diffuse_axonal_injury": (0.008, "trauma"),
    "pneumocephalus": (0.006, "trauma"),
    "scalp_hematoma": (0.045, "trauma"),
    "penetrating_foreign_body": (0.006, "trauma"),
    "sinus_air_fluid_level": (0.010, "trauma"),
    "intra_axial_mass": (0.015, "tumor"),
    "extra_axial_mass": (0.015, "elderly"),
    "multiple_lesions": (0.008, "tumor"),
    "vasogenic_edema": (0.003, "tumor"),
    "sellar_suprasellar_mass": (0.007, "tumor"),
    "posterior_fossa_mass": (0.008, "tumor"),
    "colloid_cyst": (0.006, None),
    "calvarial_lesion": (0.006, "tumor"),
    "arachnoid_cyst": (0.010, None),
    "midline_shift": (0.002, None),
    "tonsillar_herniation": (0.002, None),
    "fourth_ventricle_compression": (0.002, None),
    "mass_effect": (0.004, None),
    "diffuse_cerebral_edema": (0.004, "trauma"),
    "acute_hydrocephalus": (0.005, None),
    "trapped_ventricle": (0.003, None),
    "ventriculomegaly": (0.025, "elderly"),
    "chiari_malformation": (0.007, None),
    "congenital_malformation": (0.007, None),
    "global_atrophy": (0.08, "elderly"),
    "focal_atrophy": (0.012, "elderly"),
    "cerebellar_atrophy": (0.012, "elderly"),
    "small_vessel_disease": (0.07, "elderly"),
    "chronic_infarct": (0.035, "elderly"),
    "chronic_lacunar_infarcts": (0.035, "elderly"),
    "encephalomalacia": (0.015, "trauma"),
    "vascular_calcification": (0.05, "elderly"),
    "postoperative_changes": (0.015, None),
    "shunt_catheter": (0.008, None),
    "empty_sella": (0.015, "elderly"),
    "subdural_hygroma": (0.006, "elderly"),
    "pathologic_calcification": (0.012, None),
    "infection_abscess": (0.006, None),
    "vascular_malformation": (0.007, None),
    "posterior_reversible_edema": (0.007, None),
    "orbital_abnormality": (0.006, None),
    "craniocervical_junction_abnormality": (0.007, None),
    "paranasal_sinus_disease": (0.05, None),
    "mastoid_opacification": (0.02, None),
    "incidental_cyst": (0.015, None),
    "scalp_soft_tissue_mass": (0.008, None),
    "artifact_limited_study": (0.015, None),
    "incomplete_coverage": (0.012, None),
}


@dataclass(frozen=True)
class Consequence:
    """If any of ``causes`` (and all of ``requires``) is positive, ``effect`` follows with
    ``probability``."""

    causes: tuple[str, ...]
    effect: str
    probability: float
    requires: tuple[str, ...] = ()


def _c(
    causes: str | tuple[str, ...], effect: str, p: float, requires: tuple[str, ...] = ()
) -> Consequence:
    return Consequence((causes,) if isinstance(causes, str) else causes, effect, p, requires)


# Applied in this order, so later rules see the effects of earlier ones.
CONSEQUENCES: tuple[Consequence, ...] = (
    _c("intraparenchymal_hemorrhage", "intraventricular_hemorrhage", 0.25),
    _c("subarachnoid_hemorrhage", "intraventricular_hemorrhage", 0.12),
    _c("acute_territorial_infarct", "hyperdense_artery_sign", 0.30),
    _c("acute_territorial_infarct", "early_ischemic_change", 0.30),
    _c("hyperdense_artery_sign", "early_ischemic_change", 0.40),
    _c(("acute_territorial_infarct", "subacute_infarct"), "hemorrhagic_transformation", 0.10),
    _c("epidural_hematoma", "calvarial_fracture", 0.60),
    _c("calvarial_fracture", "epidural_hematoma", 0.10),
    _c(("calvarial_fracture", "depressed_skull_fracture"), "scalp_hematoma", 0.60),
    _c("depressed_skull_fracture", "cerebral_contusion", 0.40),
    _c("cerebral_contusion", "subarachnoid_hemorrhage", 0.30),
    _c("cerebral_contusion", "subdural_hematoma_acute", 0.20),
    _c("diffuse_axonal_injury", "subarachnoid_hemorrhage", 0.30),
    _c(
        ("skull_base_fracture", "depressed_skull_fracture", "penetrating_foreign_body"),
        "pneumocephalus",
        0.25,
    ),
    _c("calvarial_fracture", "pneumocephalus", 0.08),
    _c("postoperative_changes", "pneumocephalus", 0.15),
    _c("skull_base_fracture", "mastoid_opacification", 0.35),
    _c(("skull_base_fracture", "facial_orbital_fracture"), "sinus_air_fluid_level", 0.35),
    _c("facial_orbital_fracture", "orbital_abnormality", 0.15),
    _c("penetrating_foreign_body", "intraparenchymal_hemorrhage", 0.50),
    _c("penetrating_foreign_body", "calvarial_fracture", 0.50),
    _c("intra_axial_mass", "vasogenic_edema", 0.70),
    _c("multiple_lesions", "vasogenic_edema", 0.80),
    _c("infection_abscess", "vasogenic_edema", 0.85),
    _c("extra_axial_mass", "vasogenic_edema", 0.25),
    _c(("paranasal_sinus_disease", "mastoid_opacification"), "infection_abscess", 0.02),
    _c("vascular_malformation", "intraparenchymal_hemorrhage", 0.15),
    _c("dense_venous_sinus", "intraparenchymal_hemorrhage", 0.20),
    _c("hypoxic_ischemic_injury", "diffuse_cerebral_edema", 0.50),
    _c("subdural_hematoma_acute", "mass_effect", 0.45),
    _c(("subdural_hematoma_subacute", "subdural_hematoma_chronic"), "mass_effect", 0.35),
    _c("epidural_hematoma", "mass_effect", 0.60),
    _c("intraparenchymal_hemorrhage", "mass_effect", 0.35),
    _c("acute_territorial_infarct", "mass_effect", 0.25),
    _c("intra_axial_mass", "mass_effect", 0.50),
    _c(("extra_axial_mass", "infection_abscess"), "mass_effect", 0.35),
    _c("cerebral_contusion", "mass_effect", 0.15),
    _c("posterior_fossa_mass", "mass_effect", 0.50),
    _c("cerebellar_infarct", "mass_effect", 0.20),
    _c(SHIFTING_LESIONS, "midline_shift", 0.60, requires=("mass_effect",)),
    _c("midline_shift", "subfalcine_herniation", 0.35),
    _c("midline_shift", "transtentorial_herniation", 0.12),
    _c("subfalcine_herniation", "trapped_ventricle", 0.30),
    _c("mass_effect", "effaced_basal_cisterns", 0.15),
    _c("diffuse_cerebral_edema", "effaced_basal_cisterns", 0.70),
    _c("posterior_fossa_mass", "fourth_ventricle_compression", 0.55),
    _c("cerebellar_infarct", "fourth_ventricle_compression", 0.25, requires=("mass_effect",)),
    _c(
        ("posterior_fossa_mass", "cerebellar_infarct"),
        "tonsillar_herniation",
        0.15,
        requires=("mass_effect",),
    ),
    _c("diffuse_cerebral_edema", "tonsillar_herniation", 0.10),
    _c("fourth_ventricle_compression", "acute_hydrocephalus", 0.50),
    _c("colloid_cyst", "acute_hydrocephalus", 0.40),
    _c("intraventricular_hemorrhage", "acute_hydrocephalus", 0.25),
    _c("subarachnoid_hemorrhage", "acute_hydrocephalus", 0.10),
    _c("chiari_malformation", "acute_hydrocephalus", 0.05),
    _c("shunt_catheter", "ventriculomegaly", 0.50),
    _c("shunt_catheter", "postoperative_changes", 0.20),
    _c("postoperative_changes", "encephalomalacia", 0.20),
    _c("penetrating_foreign_body", "artifact_limited_study", 0.20),
)

# Hard rules: if the first is positive, so is the second.
IMPLICATIONS: tuple[tuple[str, str], ...] = (
    ("multiple_lesions", "intra_axial_mass"),
    ("subfalcine_herniation", "midline_shift"),
    ("transtentorial_herniation", "effaced_basal_cisterns"),
    ("subfalcine_herniation", "mass_effect"),
    ("transtentorial_herniation", "mass_effect"),
    ("tonsillar_herniation", "mass_effect"),
    ("midline_shift", "mass_effect"),
    ("effaced_basal_cisterns", "mass_effect"),
    ("diffuse_cerebral_edema", "mass_effect"),
    ("acute_hydrocephalus", "ventriculomegaly"),
    *((code, "extra_axial_collection") for code in EXTRA_AXIAL_COLLECTIONS),
    *((code, "ich_any") for code in ICH_SUBTYPES),
)
INFARCTS_FOR_TRANSFORMATION = ("acute_territorial_infarct", "subacute_infarct")
# Sampling drops the second finding when the first is present: drawn together, the first would
# hide the second (a mass filling the sella; edema or hydrocephalus closing atrophic sulci).
EXCLUSIONS: tuple[tuple[str, str], ...] = (
    ("sellar_suprasellar_mass", "empty_sella"),
    ("diffuse_cerebral_edema", "global_atrophy"),
    ("diffuse_cerebral_edema", "focal_atrophy"),
    ("global_atrophy", "focal_atrophy"),
    ("acute_hydrocephalus", "global_atrophy"),
    ("acute_hydrocephalus", "focal_atrophy"),
    ("hypoxic_ischemic_injury", "early_ischemic_change"),
)


def sample_labels(rng: np.random.Generator, prevalence_scale: float = 1.0) -> np.ndarray:
    """A consistent uint8 label vector in ``FINDING_CODES`` order."""
    positive: set[str] = set()
    active = {name: rng.random() < ctx.probability for name, ctx in CONTEXTS.items()}
    draws = rng.random(len(FINDING_CODES))
    for code, (base, context) in BASE_PREVALENCE.items():
        p = base * prevalence_scale
        if context is not None:
            ctx = CONTEXTS[context]
            inside = p * ctx.lift
            p = (
                inside
                if active[context]
                else max(0.0, p - ctx.probability * inside) / (1.0 - ctx.probability)
            )
        if draws[FINDING_INDEX[code]] < p:
            positive.add(code)
    for rule in CONSEQUENCES:
        triggered = any(c in positive for c in rule.causes) and all(
            r in positive for r in rule.requires
        )
        if triggered and rule.effect not in positive and rng.random() < rule.probability:
            positive.add(rule.effect)
    if "hemorrhagic_transformation" in positive and not positive & set(INFARCTS_FOR_TRANSFORMATION):
        positive.add(INFARCTS_FOR_TRANSFORMATION[int(rng.random() < 0.3)])
    for keep, drop in EXCLUSIONS:
        if keep in positive:
            positive.discard(drop)
    return close_implications(to_vector(positive))


def close_implications(labels: np.ndarray) -> np.ndarray:
    """``labels`` with every hard rule applied until nothing changes (a new array)."""
    out = labels.astype(np.uint8).copy()
    changed = True
    while changed:
        changed = False
        for cause, effect in IMPLICATIONS:
            if out[FINDING_INDEX[cause]] and not out[FINDING_INDEX[effect]]:
                out[FINDING_INDEX[effect]] = 1
                changed = True
    return out


def violated_rules(labels: np.ndarray) -> list[str]:
    """The hard rules a label vector breaks, in words (empty when consistent)."""
    positive = to_codes(labels)
    problems = [f"{a} without {b}" for a, b in IMPLICATIONS if a in positive and b not in positive]
    if "ich_any" in positive and not positive & set(ICH_SUBTYPES):
        problems.append("ich_any without a hemorrhage subtype")
    if "hemorrhagic_transformation" in positive and not positive & set(INFARCTS_FOR_TRANSFORMATION):
        problems.append("hemorrhagic_transformation without an infarct")
    return problems


def to_vector(codes: set[str] | list[str] | tuple[str, ...]) -> np.ndarray:
    labels = np.zeros(len(FINDING_CODES), dtype=np.uint8)
    for code in codes:
        labels[FINDING_INDEX[code]] = 1
    return labels


def to_codes(labels: np.ndarray) -> set[str]:
    return {FINDING_CODES[i] for i in np.flatnonzero(labels)}
