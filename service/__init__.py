"""headct-triage serving package: DICOM ingest, preprocessing, inference backends and the gateway.

Nothing here imports torch or ``training``: a gateway install stays small.
"""

__version__ = "0.1.0"
