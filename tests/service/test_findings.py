from collections import Counter

import pytest

from service.findings import (
    FINDING_CODES,
    FINDINGS,
    Category,
    TriageClass,
    TriagePriority,
    finding,
    triage_drivers,
    triage_priority,
)


def test_seventy_five_unique_findings_in_category_order() -> None:
    assert len(FINDINGS) == 75
    assert len(set(FINDING_CODES)) == 75
    counts = Counter(f.category for f in FINDINGS)
    assert counts == {
        Category.HEMORRHAGE: 10,
        Category.INFARCTION: 9,
        Category.TRAUMA: 10,
        Category.MASS: 9,
        Category.STRUCTURAL: 13,
        Category.CHRONIC: 11,
        Category.OTHER: 13,
    }
    # Categories are contiguous: the output vector is grouped.
    seen = [f.category for f in FINDINGS]
    assert seen == sorted(seen, key=list(Category).index)
    assert FINDING_CODES[0] == "ich_any" and FINDING_CODES[-1] == "incomplete_coverage"


def test_triage_classes_follow_the_taxonomy() -> None:
    assert finding("epidural_hematoma").triage is TriageClass.CRITICAL
    assert finding("subdural_hematoma_chronic").triage is TriageClass.URGENT
    assert finding("global_atrophy").triage is TriageClass.NONE
    assert finding("midline_shift").critical
    assert sum(f.triage is TriageClass.CRITICAL for f in FINDINGS) == 35
    assert sum(f.triage is TriageClass.URGENT for f in FINDINGS) == 17


@pytest.mark.parametrize(
    ("positives", "priority", "drivers"),
    [
        ([], TriagePriority.ROUTINE, []),
        (["global_atrophy", "mastoid_opacification"], TriagePriority.ROUTINE, []),
        (["ventriculomegaly", "global_atrophy"], TriagePriority.URGENT, ["ventriculomegaly"]),
        (
            ["ventriculomegaly", "midline_shift", "ich_any"],
            TriagePriority.CRITICAL,
            ["ich_any", "midline_shift"],
        ),
    ],
)
def test_triage_priority(
    positives: list[str], priority: TriagePriority, drivers: list[str]
) -> None:
    assert triage_priority(positives) is priority
    assert triage_drivers(positives) == drivers


def test_unknown_code_is_named() -> None:
    with pytest.raises(KeyError, match="no_such_finding"):
        triage_priority(["no_such_finding"])
