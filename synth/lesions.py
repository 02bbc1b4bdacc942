"""Which drawer draws each of the 75 findings, in what order, and the plan they share.

Order matters: anatomy is redrawn first (atrophy, ventricles, edema, mass effect), then
extra-axial collections push the brain in, the midline shift warps it, herniations follow, and
only then are density lesions painted (ischemia, masses, blood, calcium, bone, face, devices),
each leaving earlier lesions alone. Image-level findings come last.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.findings import FINDING_CODES
from synth import (
    lesions_blood,
    lesions_extraaxial,
    lesions_face,
    lesions_image,
    lesions_ischemia,
    lesions_masses,
    lesions_skull,
    lesions_structural,
)
from synth.anatomy import Anatomy
from synth.canvas import Canvas, Plan
from synth.cooccurrence import to_codes
from synth.regions import convexity_point

Drawer = Callable[[Canvas], None]

DRAW_ORDER: tuple[tuple[str, Drawer], ...] = tuple(
    (fn.__name__, fn)
    for fn in (
        lesions_structural.global_atrophy,
        lesions_structural.focal_atrophy,
        lesions_structural.cerebellar_atrophy,
        lesions_structural.congenital_malformation,
        lesions_structural.acute_hydrocephalus,
        lesions_structural.ventriculomegaly,
        lesions_structural.trapped_ventricle,
        lesions_structural.fourth_ventricle_compression,
        lesions_structural.diffuse_cerebral_edema,
        lesions_structural.mass_effect,
        lesions_extraaxial.epidural_hematoma,
        lesions_extraaxial.subdural_hematoma_acute,
        lesions_extraaxial.subdural_hematoma_subacute,
        lesions_extraaxial.subdural_hematoma_chronic,
        lesions_extraaxial.subdural_hygroma,
        lesions_extraaxial.extra_axial_collection,
        lesions_extraaxial.arachnoid_cyst,
        lesions_structural.midline_shift,
        lesions_structural.subfalcine_herniation,
        lesions_structural.effaced_basal_cisterns,
        lesions_structural.transtentorial_herniation,
        lesions_structural.tonsillar_herniation,
        lesions_structural.chiari_malformation,
        lesions_structural.empty_sella,
        lesions_ischemia.acute_territorial_infarct,
        lesions_ischemia.early_ischemic_change,
        lesions_ischemia.subacute_infarct,
        lesions_ischemia.chronic_infarct,
        lesions_ischemia.hypoxic_ischemic_injury,
        lesions_ischemia.small_vessel_disease,
        lesions_ischemia.posterior_reversible_edema,
        lesions_ischemia.acute_lacunar_infarct,
        lesions_ischemia.chronic_lacunar_infarcts,
        lesions_ischemia.cerebellar_infarct,
        lesions_ischemia.brainstem_infarct,
        lesions_ischemia.encephalomalacia,
        lesions_masses.intra_axial_mass,
        lesions_masses.multiple_lesions,
        lesions_masses.infection_abscess,
        lesions_extraaxial.extra_axial_mass,
        lesions_masses.posterior_fossa_mass,
        lesions_masses.sellar_suprasellar_mass,
        lesions_masses.colloid_cyst,
        lesions_masses.incidental_cyst,
        lesions_masses.vascular_malformation,
        lesions_blood.intraparenchymal_hemorrhage,
        lesions_ischemia.vasogenic_edema,
        lesions_blood.hemorrhagic_transformation,
        lesions_blood.cerebral_contusion,
        lesions_blood.diffuse_axonal_injury,
        lesions_blood.subarachnoid_hemorrhage,
        lesions_blood.intraventricular_hemorrhage,
        lesions_blood.ich_any,
        lesions_masses.pathologic_calcification,
        lesions_masses.vascular_calcification,
        lesions_ischemia.hyperdense_artery_sign,
        lesions_ischemia.dense_venous_sinus,
        lesions_skull.calvarial_fracture,
        lesions_skull.depressed_skull_fracture,
        lesions_skull.skull_base_fracture,
        lesions_skull.facial_orbital_fracture,
        lesions_skull.calvarial_lesion,
        lesions_skull.postoperative_changes,
        lesions_skull.scalp_hematoma,
        lesions_skull.scalp_soft_tissue_mass,
        lesions_face.sinus_air_fluid_level,
        lesions_face.paranasal_sinus_disease,
        lesions_face.mastoid_opacification,
        lesions_face.orbital_abnormality,
        lesions_face.craniocervical_junction_abnormality,
        lesions_skull.shunt_catheter,
        lesions_blood.pneumocephalus,
        lesions_skull.penetrating_foreign_body,
        lesions_image.artifact_limited_study,
        lesions_image.incomplete_coverage,
    )
)
assert sorted(code for code, _ in DRAW_ORDER) == sorted(FINDING_CODES), "a finding lacks a drawer"

# The lesion that causes the mass effect (and is drawn large), in order of precedence.
DOMINANCE = (
    "epidural_hematoma",
    "subdural_hematoma_acute",
    "intraparenchymal_hemorrhage",
    "subdural_hematoma_chronic",
    "subdural_hematoma_subacute",
    "intra_axial_mass",
    "infection_abscess",
    "extra_axial_mass",
    "acute_territorial_infarct",
    "cerebral_contusion",
)
# Findings in the skull base, posterior fossa or neck: a study with one keeps its bottom slices.
LOW_FINDINGS = frozenset(
    {
        "skull_base_fracture",
        "facial_orbital_fracture",
        "sinus_air_fluid_level",
        "paranasal_sinus_disease",
        "mastoid_opacification",
        "orbital_abnormality",
        "craniocervical_junction_abnormality",
        "chiari_malformation",
        "tonsillar_herniation",
        "cerebellar_infarct",
        "cerebellar_atrophy",
        "brainstem_infarct",
        "posterior_fossa_mass",
        "fourth_ventricle_compression",
        "sellar_suprasellar_mass",
        "empty_sella",
        "vascular_calcification",
        "hyperdense_artery_sign",
        "transtentorial_herniation",
        "effaced_basal_cisterns",
        "arachnoid_cyst",
        "subarachnoid_hemorrhage",
        "cerebral_contusion",
        "encephalomalacia",
        "dense_venous_sinus",
        "focal_atrophy",
        "mass_effect",
        "diffuse_cerebral_edema",
        "hypoxic_ischemic_injury",
    }
)


def make_plan(labels: np.ndarray, anatomy: Anatomy, rng: np.random.Generator) -> Plan:
    """Side, dominant lesion, impact site, territory and coverage of a study. The same number
    of random draws whatever the labels, so the labels change the plan only where they must."""
    positive = to_codes(labels)
    draw = rng.random(10)
    side = 1 if draw[0] < 0.5 else -1
    lateral = 0.0 if side > 0 else 180.0
    impact_azimuth = lateral - 50.0 + 100.0 * float(draw[1])
    impact_z = 35.0 * float(draw[2])
    candidates = [code for code in DOMINANCE if code in positive]
    dominant = candidates[0] if candidates else None
    focus = _focus(dominant, side, anatomy, impact_azimuth, impact_z, draw[3:6])
    if dominant is None and positive & {"posterior_fossa_mass", "cerebellar_infarct"}:
        focus = (side * 22.0, 42.0, -38.0)
    stroke_mca = positive & {"hyperdense_artery_sign", "early_ischemic_change"}
    territories = ("MCA", "MCA", "MCA", "ACA", "PCA")
    territory = "MCA" if stroke_mca else territories[int(draw[6] * len(territories))]
    coverage, shift = "full", 0.0
    if "incomplete_coverage" in positive:
        coverage = "vertex_cut" if positive & LOW_FINDINGS or draw[7] < 0.5 else "base_cut"
        shift = (25.0 + 10.0 * float(draw[8])) * (-1.0 if coverage == "vertex_cut" else 1.0)
    return Plan(side, dominant, focus, impact_azimuth, impact_z, territory, coverage, shift)


def _focus(
    dominant: str | None,
    side: int,
    anatomy: Anatomy,
    impact_azimuth: float,
    impact_z: float,
    draw: np.ndarray,
) -> tuple[float, float, float]:
    lateral = 0.0 if side > 0 else 180.0
    if dominant == "epidural_hematoma":
        return convexity_point(anatomy, impact_azimuth, impact_z, 10.0)
    if (dominant is not None and dominant.startswith("subdural")) or dominant == "extra_axial_mass":
        return convexity_point(anatomy, lateral - 30.0 + 60.0 * float(draw[0]), 20.0, 10.0)
    if dominant == "intraparenchymal_hemorrhage" and draw[0] < 0.6:
        return side * 21.0, -2.0, 2.0
    if dominant == "acute_territorial_infarct":
        return side * 40.0, -5.0, 12.0
    if dominant == "cerebral_contusion":
        return side * 22.0, -55.0, -8.0
    return side * 32.0, -35.0 + 65.0 * float(draw[1]), 8.0 + 24.0 * float(draw[2])


def draw_findings(canvas: Canvas, seed: int) -> None:
    """Draw every positive finding, each with its own random stream (seeded by ``seed`` and its
    code), so adding or removing one finding leaves the others where they were."""
    for code, drawer in DRAW_ORDER:
        if canvas.positive(code):
            canvas.rng = np.random.default_rng([seed, FINDING_CODES.index(code)])
            drawer(canvas)
