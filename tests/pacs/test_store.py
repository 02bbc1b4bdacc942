"""The study store on real databases: SQLite in a temporary data folder, and a real PostgreSQL
server (testing/postgres.py). Time is a controlled clock, so quiet periods and leases are exact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.pacs.instances import InstanceRef
from service.pacs.store import StudyStore
from service.pacs.tables import ABANDONED_CODE, DeliveryState, StudyClaim, StudyState
from testing.postgres import postgres_server

MODEL = ("headct_molre", 2)
QUIET, LEASE = 10.0, 100.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    yield url
    engine = sa.create_engine(url)  # each test starts from empty tables
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS studies, instances, deliveries")
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[StudyStore]:
    store = StudyStore(tmp_path / "data", database_url, clock=clock)
    yield store
    store.close()


def ref(study: str, sop: str, series: str = "1.2.3.9") -> InstanceRef:
    return InstanceRef(study, series, sop, "1.2.840.10008.5.1.4.1.1.2")


def claim(
    store: StudyStore, owner: str = "w1", model: tuple[str, int] = MODEL
) -> StudyClaim | None:
    return store.claim_study(owner, model=model, quiet_s=QUIET, lease_s=LEASE, max_attempts=2)


def test_instances_are_stored_durably_once(store: StudyStore, clock: Clock) -> None:
    first = store.add_instance(ref("1.2.3", "1.2.3.1"), b"first", route="dimse")
    assert not first.duplicate and first.path.read_bytes() == b"first"
    assert first.path.is_relative_to(store.data_dir)
    again = store.add_instance(ref("1.2.3", "1.2.3.1"), b"second copy", route="stowrs")
    assert again.duplicate and again.path == first.path
    assert first.path.read_bytes() == b"first", "the first copy is kept"
    store.add_instance(ref("1.2.3", "1.2.3.2"), b"other", route="dimse")
    record = store.get_study("1.2.3")
    assert record is not None
    assert (record.state, record.instances) == (StudyState.RECEIVING, 2)
    assert not list(first.path.parent.glob(".*.tmp")), "no temporary file is left"
    assert store.get_study("9.9") is None


def test_a_study_is_claimed_after_its_quiet_period_by_one_worker(
    store: StudyStore, clock: Clock
) -> None:
    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")
    clock.now += QUIET - 1
    assert claim(store) is None, "not quiet yet"
    clock.now += 1
    got = claim(store, "w1")
    assert got is not None and got.study_uid == "1.2.3" and len(got.paths) == 1
    assert got.paths[0].read_bytes() == b"a"
    assert claim(store, "w2") is None, "leased to w1"
    assert store.get_study("1.2.3").state is StudyState.TRIAGING  # type: ignore[union-attr]
    clock.now += LEASE + 1  # w1 died: its lease expires and w2 takes the study
    retaken = claim(store, "w2")
    assert retaken is not None and retaken.owner == "w2"
    assert not store.finish_study(got, model=MODEL, result_json="{}"), "w1 lost its lease"
    clock.now += LEASE + 1  # w2 died too: two attempts were allowed
    assert claim(store, "w3") is None
    record = store.get_study("1.2.3")
    assert record is not None
    assert (record.state, record.error_code) == (StudyState.FAILED, ABANDONED_CODE)


def test_triaged_once_unless_new_instances_or_another_model(
    store: StudyStore, clock: Clock
) -> None:
    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")
    clock.now += QUIET
    got = claim(store)
    assert got is not None
    assert store.finish_study(got, model=MODEL, result_json='{"ok": 1}')
    record = store.get_study("1.2.3")
    assert record is not None
    assert (record.state, record.result_json, record.triage_runs) == (
        StudyState.TRIAGED,
        '{"ok": 1}',
        1,
    )
    assert (record.model_name, record.model_version) == MODEL

    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")  # sent again
    clock.now += QUIET
    assert claim(store) is None, "the same instances and model: not triaged again"
    assert store.get_study("1.2.3").state is StudyState.TRIAGED  # type: ignore[union-attr]

    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")  # again, model upgraded
    clock.now += QUIET
    upgraded = claim(store, model=("headct_molre", 3))
    assert upgraded is not None and upgraded.study_uid == "1.2.3"
    assert store.finish_study(upgraded, model=("headct_molre", 3), result_json="{}")

    store.add_instance(ref("1.2.3", "1.2.3.2"), b"b", route="stowrs")  # a new instance
    assert store.get_study("1.2.3").state is StudyState.RECEIVING  # type: ignore[union-attr]
    clock.now += QUIET
    reopened = claim(store, model=("headct_molre", 3))
    assert reopened is not None and len(reopened.paths) == 2


def test_instances_arriving_during_triage_reopen_the_study(store: StudyStore, clock: Clock) -> None:
    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")
    clock.now += QUIET
    got = claim(store)
    assert got is not None
    store.add_instance(ref("1.2.3", "1.2.3.2"), b"b", route="dimse")
    assert claim(store, "w2") is None, "still leased while w1 triages"
    assert not store.finish_study(got, model=MODEL, error=("too_few_slices", "Too few.")), (
        "the outcome is not current: the study is receiving again"
    )
    record = store.get_study("1.2.3")
    assert record is not None and record.state is StudyState.RECEIVING
    clock.now += QUIET
    again = claim(store, "w2")
    assert again is not None and len(again.paths) == 2


def test_complete_trigger_and_release(store: StudyStore, clock: Clock) -> None:
    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")
    assert store.mark_complete("9.9") is None
    record = store.mark_complete("1.2.3")
    assert record is not None and record.state is StudyState.PENDING
    got = claim(store)
    assert got is not None, "complete: no quiet period to wait"
    store.release_study(got)  # the backend went away: back in the queue, attempt not counted
    assert store.get_study("1.2.3").state is StudyState.PENDING  # type: ignore[union-attr]
    for _ in range(3):
        got = claim(store)
        assert got is not None
        store.release_study(got)
    assert store.count_by_state()[StudyState.PENDING] == 1


def test_delivery_bookkeeping(store: StudyStore, clock: Clock) -> None:
    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")
    clock.now += QUIET
    got = claim(store)
    assert got is not None and store.finish_study(got, model=MODEL, result_json="{}")
    store.schedule_delivery("1.2.3", "orthanc-dicomweb")
    store.schedule_delivery("1.2.3", "pacs-dimse")
    due = store.claim_due_deliveries("w1", lease_s=30)
    assert {d.destination for d in due} == {"orthanc-dicomweb", "pacs-dimse"}
    assert store.claim_due_deliveries("w2", lease_s=30) == [], "leased to w1"

    state = store.record_delivery_attempt(
        "1.2.3",
        "orthanc-dicomweb",
        owner="w1",
        error="connection refused",
        retry_at=clock.now + 60,
    )
    assert state is DeliveryState.PENDING
    assert store.record_delivery_attempt("1.2.3", "pacs-dimse", owner="w1") is (
        DeliveryState.DELIVERED
    )
    assert store.get_study("1.2.3").state is StudyState.TRIAGED  # type: ignore[union-attr]
    assert store.claim_due_deliveries("w1", lease_s=30) == [], "not due before retry_at"
    clock.now += 60
    (retry,) = store.claim_due_deliveries("w2", lease_s=30)
    assert (retry.attempts, retry.last_error) == (1, "connection refused")
    assert store.record_delivery_attempt("1.2.3", "orthanc-dicomweb", owner="w2") is (
        DeliveryState.DELIVERED
    )
    record = store.get_study("1.2.3")
    assert record is not None and record.state is StudyState.DELIVERED
    assert [d.attempts for d in record.deliveries] == [2, 1]

    store.schedule_delivery("1.2.3", "orthanc-dicomweb")  # a new result: sent again
    assert store.get_study("1.2.3").state is StudyState.TRIAGED  # type: ignore[union-attr]
    store.claim_due_deliveries("w1", lease_s=30)
    store.record_delivery_attempt("1.2.3", "orthanc-dicomweb", owner="w1", error="HTTP 500")
    record = store.get_study("1.2.3")
    assert record is not None and record.state is StudyState.DEAD_LETTER
    store.schedule_delivery("1.2.3", "other")
    store.mark_dead_letter("1.2.3", "other", "destination removed")
    states = {d.destination: d.state for d in store.get_study("1.2.3").deliveries}  # type: ignore[union-attr]
    assert states == {
        "orthanc-dicomweb": DeliveryState.DEAD_LETTER,
        "other": DeliveryState.DEAD_LETTER,
        "pacs-dimse": DeliveryState.DELIVERED,
    }


def test_an_attempt_whose_claim_was_lost_is_not_recorded(store: StudyStore, clock: Clock) -> None:
    """An attempt that outlived its lease (another worker claimed the delivery), or that sent a
    result a newer one replaced meanwhile, records nothing: the current claim's outcome counts."""
    store.add_instance(ref("1.2.3", "1.2.3.1"), b"a", route="dimse")
    clock.now += QUIET
    got = claim(store)
    assert got is not None and store.finish_study(got, model=MODEL, result_json="{}")
    store.schedule_delivery("1.2.3", "pacs")
    assert len(store.claim_due_deliveries("w1", lease_s=30)) == 1
    clock.now += 31
    assert len(store.claim_due_deliveries("w2", lease_s=30)) == 1
    assert store.record_delivery_attempt("1.2.3", "pacs", owner="w1") is None
    (delivery,) = store.get_study("1.2.3").deliveries  # type: ignore[union-attr]
    assert (delivery.state, delivery.attempts) == (DeliveryState.PENDING, 0)

    store.schedule_delivery("1.2.3", "pacs")  # a newer result while w2 sends the older one
    assert store.record_delivery_attempt("1.2.3", "pacs", owner="w2") is None
    assert len(store.claim_due_deliveries("w3", lease_s=30)) == 1
    assert store.record_delivery_attempt("1.2.3", "pacs", owner="w3") is DeliveryState.DELIVERED
    assert store.get_study("1.2.3").state is StudyState.DELIVERED  # type: ignore[union-attr]


def test_finished_studies_are_listed_in_pages(store: StudyStore, clock: Clock) -> None:
    for n in range(5):
        store.add_instance(ref(f"1.2.{n}", f"1.2.{n}.1"), b"a", route="dimse")
    clock.now += QUIET
    for _ in range(5):
        got = claim(store)
        assert got is not None
        store.finish_study(got, model=MODEL, result_json="{}")
        if got.study_uid != "1.2.2":  # two finish at the same time: the UID breaks the tie
            clock.now += 1
    first = store.list_studies(since=None, after=None, limit=3)  # ends inside the tie
    last = first[-1]
    assert last.study_uid == "1.2.2"
    rest = store.list_studies(since=None, after=(last.finished_at, last.study_uid), limit=10)  # type: ignore[arg-type]
    uids = [r.study_uid for r in first + rest]
    assert sorted(uids) == [f"1.2.{n}" for n in range(5)] and len(set(uids)) == 5
    times = [r.finished_at for r in first + rest]
    assert times == sorted(times)  # type: ignore[type-var]
    assert len(store.list_studies(since=times[3], after=None, limit=10)) == 3  # type: ignore[arg-type]


def test_concurrent_workers_never_claim_a_study_twice(
    tmp_path: Path, database_url: str, clock: Clock
) -> None:
    """Two stores (two processes' worth of connections) racing over 30 complete studies."""
    stores = [StudyStore(tmp_path / "data", database_url, clock=clock) for _ in range(2)]
    try:
        for n in range(30):
            stores[0].add_instance(ref(f"1.5.{n}", f"1.5.{n}.1"), b"a", route="dimse")
        clock.now += QUIET
        won: dict[str, list[str]] = {"a": [], "b": []}

        def work(store: StudyStore, name: str) -> None:
            while (got := claim(store, name)) is not None:
                won[name].append(got.study_uid)

        threads = [
            threading.Thread(target=work, args=(s, n)) for s, n in zip(stores, won, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = won["a"] + won["b"]
        assert sorted(claimed) == sorted(f"1.5.{n}" for n in range(30))
        assert len(set(claimed)) == 30
    finally:
        for store in stores:
            store.close()
