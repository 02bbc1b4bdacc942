"""The key finding: which of the 75 findings the key slice shows."""

import numpy as np

from service.findings import FINDING_CODES
from service.postprocess import key_finding

ICH = FINDING_CODES.index("ich_any")  # critical
MASS_EFFECT = FINDING_CODES.index("mass_effect")  # critical
MASS = FINDING_CODES.index("intra_axial_mass")  # urgent
ATROPHY = FINDING_CODES.index("global_atrophy")  # no triage class
THRESHOLDS = np.full(len(FINDING_CODES), 0.5)


def _probabilities(**values: float) -> np.ndarray:
    p = np.full(len(FINDING_CODES), 0.1)
    for code, value in values.items():
        p[FINDING_CODES.index(code)] = value
    return p


def test_a_critical_finding_beats_a_more_confident_urgent_one() -> None:
    p = _probabilities(ich_any=0.6, intra_axial_mass=0.99)
    assert key_finding(p, THRESHOLDS) == ICH


def test_among_the_triage_findings_the_margin_in_logits_decides() -> None:
    # mass_effect is further above a low threshold than ich_any above a high one, though its
    # probability is lower.
    thresholds = THRESHOLDS.copy()
    thresholds[ICH], thresholds[MASS_EFFECT] = 0.9, 0.2
    p = _probabilities(ich_any=0.95, mass_effect=0.6)
    assert key_finding(p, thresholds) == MASS_EFFECT
    assert key_finding(p, THRESHOLDS) == ICH


def test_a_routine_study_shows_its_positive_finding() -> None:
    p = _probabilities(global_atrophy=0.55, intra_axial_mass=0.45)
    assert key_finding(p, THRESHOLDS) == ATROPHY


def test_with_nothing_positive_the_finding_nearest_its_threshold() -> None:
    p = _probabilities(intra_axial_mass=0.45)
    assert key_finding(p, THRESHOLDS) == MASS
