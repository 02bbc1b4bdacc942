"""Synthetic head CT studies with known findings (numpy + pydicom; no patient data, no torch)."""

from synth.options import SynthOptions
from synth.signatures import FINDING_SIGNATURES
from synth.study import SyntheticStudy, generate_study, is_synthetic, synthesize, write_study

__all__ = [
    "FINDING_SIGNATURES",
    "SynthOptions",
    "SyntheticStudy",
    "generate_study",
    "is_synthetic",
    "synthesize",
    "write_study",
]
