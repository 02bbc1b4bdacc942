"""Synthetic head CT studies with known findings (numpy + pydicom; no patient data, no torch)."""

from training.synth.options import SynthOptions
from training.synth.signatures import FINDING_SIGNATURES
from training.synth.study import SyntheticStudy, generate_study, synthesize, write_study

__all__ = [
    "FINDING_SIGNATURES",
    "SynthOptions",
    "SyntheticStudy",
    "generate_study",
    "synthesize",
    "write_study",
]
