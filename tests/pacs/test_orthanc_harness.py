"""The Orthanc harness: a real Orthanc starts on loopback, takes a study from dcmtk's storescu,
lists it in its REST API and over QIDO-RS, refuses a wrong called AE title, and stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pydicom
import pytest

from testing.orthanc import (
    OrthancServer,
    OrthancStartError,
    StoreSCUError,
    orthanc_server,
    storescu,
)
from testing.studies import write_synthetic_study

STUDY_INSTANCE_UID = "0020000D"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), seed=3, slices=8)


def test_a_study_stored_by_storescu_is_listed_by_rest_and_qido(
    pacs: OrthancServer, study: list[Path]
) -> None:
    study_uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    storescu(study, port=pacs.dicom_port, called_aet=pacs.aet)

    studies = httpx2.get(f"{pacs.rest_url}/studies", params={"expand": "1"}).json()
    stored = [s for s in studies if s["MainDicomTags"]["StudyInstanceUID"] == study_uid]
    assert len(stored) == 1
    instances = httpx2.get(f"{pacs.rest_url}/studies/{stored[0]['ID']}/instances").json()
    assert len(instances) == len(study)

    qido = httpx2.get(f"{pacs.dicomweb_url}/studies", headers={"Accept": "application/dicom+json"})
    assert qido.status_code == 200
    assert study_uid in [s[STUDY_INSTANCE_UID]["Value"][0] for s in qido.json()]


def test_a_wrong_called_ae_title_is_refused(pacs: OrthancServer, study: list[Path]) -> None:
    with pytest.raises(StoreSCUError, match="Called AE Title Not Recognized"):
        storescu(study[:1], port=pacs.dicom_port, called_aet="NOT_ORTHANC")


def test_the_server_stops_when_the_block_ends(tmp_path: Path) -> None:
    with orthanc_server(tmp_path / "orthanc") as server:
        assert server.process.poll() is None
    assert server.process.poll() is not None
    with pytest.raises(httpx2.HTTPError):
        httpx2.get(f"{server.rest_url}/system", timeout=1)


def test_a_failed_start_raises_with_the_log(tmp_path: Path) -> None:
    # Orthanc refuses an AE title over 16 characters at start-up.
    with (
        pytest.raises(OrthancStartError, match=r"(?s)exited with.*longer than 16 characters"),
        orthanc_server(tmp_path / "orthanc", aet="AN_AE_TITLE_FAR_TOO_LONG"),
    ):
        pass
