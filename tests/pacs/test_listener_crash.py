"""kill -9 of ``headct listen`` in the middle of an association, then a restart on the same data
folder: every instance that got a success status is still there, and the study is triaged once."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from service.pacs.store import StudyStore
from service.pacs.tables import StudyState
from testing.gateway_process import free_port
from testing.listener_process import listener_process
from testing.onnx_fixture import FixtureModel
from testing.studies import write_synthetic_study
from tests.pacs.conftest import AE_TITLE, ROOT, pacs_env, wait_for

LISTEN = [sys.executable, "-m", "service.cli", "listen"]
SENT_BEFORE_KILL = 18
QUIET_S = 5.0  # longer than any pause between two sends, so nothing is triaged before the kill


def test_kill_during_an_association_loses_no_acknowledged_instance(
    fixture_model: FixtureModel, tmp_path: Path
) -> None:
    files = write_synthetic_study(tmp_path / "study", seed=9, slices=24)
    datasets = [pydicom.dcmread(f) for f in files]
    data_dir = tmp_path / "data"
    env = pacs_env(fixture_model, data_dir, study_quiet_s=str(QUIET_S))
    port, log = free_port(), tmp_path / "listener.log"
    options = {"log": log, "env": env, "cwd": ROOT, "ae_title": AE_TITLE, "calling_ae": "STORESCU"}

    acknowledged = []
    with listener_process(LISTEN, port=port, **options) as first:  # type: ignore[arg-type]
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CTImageStorage)
        association = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
        assert association.is_established
        for ds in datasets[:SENT_BEFORE_KILL]:
            assert association.send_c_store(ds).Status == 0x0000
            acknowledged.append(ds.SOPInstanceUID)
        killed_at = time.monotonic()
        first.process.kill()  # SIGKILL: no shutdown, no flush
        first.process.wait()
        # the association died with the listener: no status comes back (or pynetdicom noticed
        # first and refuses to send: "association not established")
        with contextlib.suppress(RuntimeError):
            assert "Status" not in association.send_c_store(datasets[SENT_BEFORE_KILL])
        association.abort()

    with listener_process(LISTEN, port=port, **options):  # type: ignore[arg-type]
        store = StudyStore(data_dir, f"sqlite:///{data_dir / 'store.sqlite3'}")
        try:
            uid = datasets[0].StudyInstanceUID
            record = wait_for(store, uid, lambda r: r.state is StudyState.TRIAGED)
            assert time.monotonic() - killed_at >= QUIET_S
            assert (record.instances, record.triage_runs) == (SENT_BEFORE_KILL, 1)
            assert record.result_json is not None
            assert f'"source_count":{SENT_BEFORE_KILL}' in record.result_json
            stored = sorted(p.stem for p in (data_dir / "instances" / uid).glob("*.dcm"))
            assert stored == sorted(acknowledged)
            time.sleep(1.0)  # the second listener's worker polls again: still triaged once
            assert store.get_study(uid).triage_runs == 1  # type: ignore[union-attr]
        finally:
            store.close()
