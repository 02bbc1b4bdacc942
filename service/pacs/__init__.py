"""PACS integration: studies in (STOW-RS, C-STORE), results out (DICOM SR, key image)."""
