"""PACS intake fixtures: a real ONNX model, the environment of a ``headct listen`` or ``headct
serve`` process on a study store, waiting for a stored study to reach a state."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.pacs.store import StudyStore
from service.pacs.tables import StudyRecord
from testing.onnx_fixture import FixtureModel, write_fixture_repository

ROOT = Path(__file__).resolve().parents[2]
QUIET_S = 1.0
AE_TITLE = "HEADCT"
CALLING_AES = ("STORESCU", "ORTHANC")


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    return write_fixture_repository(tmp_path_factory.mktemp("model_repository"))


def pacs_env(fixture_model: FixtureModel, data_dir: Path, **settings: str) -> dict[str, str]:
    """A server's environment: the fixture model, the store in ``data_dir``, a 1 s quiet period,
    and ``settings`` (HEADCT_ names without the prefix, lower case) on top."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HEADCT_MODEL_REPOSITORY": str(fixture_model.repository),
        "HEADCT_ONNX_INTRA_OP_THREADS": "1",
        "HEADCT_DATA_DIR": str(data_dir),
        "HEADCT_STUDY_QUIET_S": str(QUIET_S),
        "HEADCT_WORKER_POLL_S": "0.2",
        "HEADCT_LISTEN_AE_TITLE": AE_TITLE,
        "HEADCT_LISTEN_CALLING_AES": ",".join(CALLING_AES),
    }
    env.update({"HEADCT_" + k.upper(): v for k, v in settings.items()})
    return env


def wait_for(
    store: StudyStore,
    study_uid: str,
    until: Callable[[StudyRecord], bool],
    *,
    timeout_s: float = 60.0,
) -> StudyRecord:
    """The study's record once ``until`` holds; fails with its last state after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = store.get_study(study_uid)
        if record is not None and until(record):
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"study never reached the expected state; last: {record}")
        time.sleep(0.2)
