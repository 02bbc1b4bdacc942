"""Hold deployment environments (compose ``environment``, Kubernetes ConfigMaps) against the
gateway's real settings: every ``HEADCT_*`` name is a field of ``service.settings.Settings`` and
the values validate, so a typo or a bad value fails here, not at a hospital's first start."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

PREFIX = "HEADCT_"
# Read by the Triton image's serve.sh and tests, not by the gateway.
NOT_GATEWAY_SETTINGS = frozenset({"HEADCT_TRITON_MODELS"})
_DEFAULTED = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def triton_model_names() -> set[str]:
    """The models the export step writes (training/repository.py): the ONNX model on Triton's
    onnxruntime backend and its python-backend twin."""
    from training.repository import CPU_SUFFIX

    name = str(Settings.model_fields["model_name"].default)
    return {name, name + CPU_SUFFIX}


def setting_names() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields}


def compose_default(value: object) -> str:
    """A compose value with each ``${VAR:-default}`` replaced by its default (``""`` without)."""
    return _DEFAULTED.sub(lambda m: m.group(2) or "", str(value))


def unknown_settings(environment: dict[str, str]) -> list[str]:
    known = setting_names() | NOT_GATEWAY_SETTINGS
    return sorted(k for k in environment if k.startswith(PREFIX) and k not in known)


def validate_settings(environment: dict[str, str], existing_folder: Path) -> Settings:
    """``Settings`` built from the environment's HEADCT_* values. Paths inside an image
    (the model repository, the upload folder) do not exist here: they become ``existing_folder``.
    """
    values: dict[str, object] = {
        key.removeprefix(PREFIX).lower(): value
        for key, value in environment.items()
        if key.startswith(PREFIX) and key not in NOT_GATEWAY_SETTINGS
    }
    for path_field in ("model_repository", "upload_dir"):
        if path_field in values:
            values[path_field] = existing_folder
    return Settings.model_validate(values)
