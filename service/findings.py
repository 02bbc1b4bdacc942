"""The 75 head CT findings: the single source of their codes, names, categories and order.

The order here is the order of the model's output vector, of the columns of ``labels.csv`` and of
the findings in every result. Sources: RSNA ICH, CQ500, qER and report-derived head CT taxonomies.
Each finding has a triage class: a positive ``critical`` finding makes the study critical, a
positive ``urgent`` one makes it urgent, and ``none`` does not change the priority.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class TriageClass(StrEnum):
    CRITICAL = "critical"
    URGENT = "urgent"
    NONE = "none"


class TriagePriority(StrEnum):
    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"


class Category(StrEnum):
    HEMORRHAGE = "hemorrhage"
    INFARCTION = "infarction_ischemia"
    TRAUMA = "trauma"
    MASS = "mass_lesions"
    STRUCTURAL = "structural"
    CHRONIC = "chronic_changes"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    name: str
    category: Category
    triage: TriageClass

    @property
    def critical(self) -> bool:
        return self.triage is TriageClass.CRITICAL


_C, _U, _N = TriageClass.CRITICAL, TriageClass.URGENT, TriageClass.NONE

# (code, display name, triage class) per category, in output order.
_TABLE: dict[Category, list[tuple[str, str, TriageClass]]] = {
    Category.HEMORRHAGE: [
        ("ich_any", "Intracranial hemorrhage (any)", _C),
        ("intraparenchymal_hemorrhage", "Intraparenchymal hemorrhage", _C),
        ("intraventricular_hemorrhage", "Intraventricular hemorrhage", _C),
        ("subarachnoid_hemorrhage", "Subarachnoid hemorrhage", _C),
        ("subdural_hematoma_acute", "Acute subdural hematoma", _C),
        ("subdural_hematoma_subacute", "Subacute subdural hematoma", _C),
        ("subdural_hematoma_chronic", "Chronic subdural hematoma", _U),
        ("epidural_hematoma", "Epidural hematoma", _C),
        ("hemorrhagic_transformation", "Hemorrhagic transformation of infarct", _C),
        ("extra_axial_collection", "Extra-axial collection", _U),
    ],
    Category.INFARCTION: [
        ("acute_territorial_infarct", "Acute territorial infarct", _C),
        ("early_ischemic_change", "Early ischemic change", _C),
        ("hyperdense_artery_sign", "Hyperdense artery sign", _C),
        ("subacute_infarct", "Subacute infarct", _U),
        ("acute_lacunar_infarct", "Acute lacunar infarct", _U),
        ("cerebellar_infarct", "Cerebellar infarct", _C),
        ("brainstem_infarct", "Brainstem infarct", _C),
        ("hypoxic_ischemic_injury", "Hypoxic-ischemic injury", _C),
        ("dense_venous_sinus", "Dense venous sinus (venous thrombosis)", _C),
    ],
    Category.TRAUMA: [
        ("calvarial_fracture", "Calvarial fracture", _C),
        ("depressed_skull_fracture", "Depressed skull fracture", _C),
        ("skull_base_fracture", "Skull base fracture", _C),
        ("facial_orbital_fracture", "Facial or orbital fracture", _U),
        ("cerebral_contusion", "Cerebral contusion", _C),
        ("diffuse_axonal_injury", "Diffuse axonal injury", _C),
        ("pneumocephalus", "Pneumocephalus", _C),
        ("scalp_hematoma", "Scalp hematoma", _N),
        ("penetrating_foreign_body", "Penetrating foreign body", _C),
        ("sinus_air_fluid_level", "Sinus air-fluid level", _U),
    ],
    Category.MASS: [
        ("intra_axial_mass", "Intra-axial mass", _U),
        ("extra_axial_mass", "Extra-axial mass", _U),
        ("multiple_lesions", "Multiple lesions", _U),
        ("vasogenic_edema", "Vasogenic edema", _U),
        ("sellar_suprasellar_mass", "Sellar or suprasellar mass", _U),
        ("posterior_fossa_mass", "Posterior fossa mass", _C),
        ("colloid_cyst", "Colloid cyst", _U),
        ("calvarial_lesion", "Calvarial lesion", _N),
        ("arachnoid_cyst", "Arachnoid cyst", _N),
    ],
    Category.STRUCTURAL: [
        ("midline_shift", "Midline shift", _C),
        ("mass_effect", "Mass effect", _C),
        ("subfalcine_herniation", "Subfalcine herniation", _C),
        ("transtentorial_herniation", "Transtentorial herniation", _C),
        ("tonsillar_herniation", "Tonsillar herniation", _C),
        ("effaced_basal_cisterns", "Effaced basal cisterns", _C),
        ("diffuse_cerebral_edema", "Diffuse cerebral edema", _C),
        ("acute_hydrocephalus", "Acute hydrocephalus", _C),
        ("trapped_ventricle", "Trapped ventricle", _C),
        ("fourth_ventricle_compression", "Fourth ventricle compression", _C),
        ("ventriculomegaly", "Ventriculomegaly", _U),
        ("chiari_malformation", "Chiari malformation", _N),
        ("congenital_malformation", "Congenital malformation", _N),
    ],
    Category.CHRONIC: [
        ("global_atrophy", "Global atrophy", _N),
        ("focal_atrophy", "Focal atrophy", _N),
        ("cerebellar_atrophy", "Cerebellar atrophy", _N),
        ("small_vessel_disease", "Small vessel ischemic disease", _N),
        ("chronic_infarct", "Chronic infarct", _N),
        ("chronic_lacunar_infarcts", "Chronic lacunar infarcts", _N),
        ("encephalomalacia", "Encephalomalacia", _N),
        ("vascular_calcification", "Vascular calcification", _N),
        ("postoperative_changes", "Postoperative changes", _N),
        ("shunt_catheter", "Shunt catheter", _N),
        ("empty_sella", "Empty sella", _N),
    ],
    Category.OTHER: [
        ("subdural_hygroma", "Subdural hygroma", _U),
        ("pathologic_calcification", "Pathologic calcification", _N),
        ("infection_abscess", "Infection or abscess", _C),
        ("vascular_malformation", "Vascular malformation", _U),
        ("posterior_reversible_edema", "Posterior reversible encephalopathy (PRES)", _U),
        ("orbital_abnormality", "Orbital abnormality", _U),
        ("craniocervical_junction_abnormality", "Craniocervical junction abnormality", _C),
        ("paranasal_sinus_disease", "Paranasal sinus disease", _N),
        ("mastoid_opacification", "Mastoid opacification", _N),
        ("incidental_cyst", "Incidental cyst", _N),
        ("scalp_soft_tissue_mass", "Scalp soft-tissue mass", _N),
        ("artifact_limited_study", "Artifact-limited study", _N),
        ("incomplete_coverage", "Incomplete coverage", _N),
    ],
}

FINDINGS: tuple[Finding, ...] = tuple(
    Finding(code, name, category, triage)
    for category, rows in _TABLE.items()
    for code, name, triage in rows
)
FINDING_CODES: tuple[str, ...] = tuple(f.code for f in FINDINGS)
FINDING_INDEX: dict[str, int] = {code: i for i, code in enumerate(FINDING_CODES)}
NUM_FINDINGS = len(FINDINGS)


def finding(code: str) -> Finding:
    """The finding with this code; a ``KeyError`` naming the code if there is none."""
    try:
        return FINDINGS[FINDING_INDEX[code]]
    except KeyError:
        raise KeyError(f"unknown finding code {code!r}") from None


def triage_priority(positive_codes: Iterable[str]) -> TriagePriority:
    """Critical if any critical finding is positive, else urgent if any urgent is, else routine."""
    classes = {finding(code).triage for code in positive_codes}
    if TriageClass.CRITICAL in classes:
        return TriagePriority.CRITICAL
    if TriageClass.URGENT in classes:
        return TriagePriority.URGENT
    return TriagePriority.ROUTINE


def triage_drivers(positive_codes: Iterable[str]) -> list[str]:
    """The positive findings that set the priority (all criticals or all urgents), in order."""
    codes = set(positive_codes)
    priority = triage_priority(codes)
    if priority is TriagePriority.ROUTINE:
        return []
    wanted = TriageClass(priority.value)
    return [f.code for f in FINDINGS if f.code in codes and f.triage is wanted]
