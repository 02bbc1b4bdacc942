"""The study store: every instance the listener or STOW-RS accepted, the studies they make up, each
study's triage state and result, and the delivery of its results to the PACS.

Durability: an instance's file is written under the data folder and fsync'd (file and folder), and
its row committed, before ``add_instance`` returns, so a success answered after it survives a crash
(SQLite runs in WAL mode with ``synchronous=FULL``). Instances are keyed by SOP Instance UID: the
same instance again is accepted and changes nothing (its first copy is kept).

A study's life (``StudyState``)::

    receiving --(quiet period, or mark_complete)--> pending --(claim)--> triaging
    triaging --(finish)--> triaged | failed            (receiving again if instances came meanwhile)
    triaged --(deliveries recorded)--> delivered | dead_letter
    any state but triaging --(a new instance)--> receiving

A study is triaged once per revision (each new instance makes one) and model: instances sent again
do not reopen it, unless the worker's model (name and version) is not the one that triaged it.

Claims are leases: ``claim_study`` moves a study to triaging with ``lease_until``, through a
conditional UPDATE that only one of several workers (processes, replicas) can win; a worker that
dies leaves the lease to expire, and another takes the study (after ``attempts`` such losses it is
failed as ``triage_abandoned``, so a study that kills its worker cannot loop). Deliveries are
leased the same way.

SQLite by default; any SQLAlchemy URL otherwise (PostgreSQL for several replicas, with the data
folder on a volume they share). Times are seconds since the epoch (``clock``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from service.errors import StoreUnavailableError
from service.pacs.instances import InstanceRef, valid_uid
from service.pacs.tables import (
    ABANDONED_CODE,
    FINISHED,
    DeliveryRecord,
    DeliveryState,
    StoredInstance,
    StudyClaim,
    StudyRecord,
    StudyState,
    deliveries,
    delivery_record,
    instances,
    metadata,
    studies,
)
from service.settings import Settings

log = logging.getLogger(__name__)


def _dialect_insert(engine: Engine) -> Callable[[sa.Table], Any]:
    """``INSERT ... ON CONFLICT DO NOTHING`` needs the dialect's own insert."""
    return {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[engine.dialect.name]


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL (readers never block the writer; the gateway and the listener share the file),
    synchronous FULL (a commit is on disk when it returns), and transactions that take the write
    lock at BEGIN, so two processes' read-then-write transactions serialise instead of failing."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below opens transactions
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """``data`` at ``path``, on disk when this returns: a temporary file fsync'd, renamed over the
    target, and the folder fsync'd (a new folder's parent too)."""
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        _fsync_dir(path.parent.parent)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with suppress(FileNotFoundError):
            temporary.unlink()
    _fsync_dir(path.parent)


class StudyStore:
    """The store over one database and one data folder. Thread-safe; every method blocks (call it
    from a worker thread in async code). Database and disk failures raise
    ``StoreUnavailableError``."""

    def __init__(self, data_dir: Path, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        options: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        self.engine = sa.create_engine(url, **options)
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        self._insert = _dialect_insert(self.engine)
        self._create_tables()

    @classmethod
    def from_settings(cls, settings: Settings) -> StudyStore:
        """The store HEADCT_DATA_DIR and HEADCT_STORE_URL name. Blocks."""
        assert settings.data_dir is not None, "the study store needs HEADCT_DATA_DIR"
        return cls(settings.data_dir, settings.database_url())

    def _create_tables(self) -> None:
        """Idempotent; two processes starting at once may race to create: the loser retries."""
        for attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    metadata.create_all(connection)
                return
            except sa.exc.DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except sa.exc.SQLAlchemyError as exc:
            log.error("study store failed", extra={"reason": type(exc).__name__})
            raise StoreUnavailableError("The study store's database failed.") from None

    # ---- instances ----

    def instance_path(self, ref: InstanceRef) -> Path:
        assert valid_uid(ref.study_uid) and valid_uid(ref.sop_instance_uid)
        return self.data_dir / "instances" / ref.study_uid / f"{ref.sop_instance_uid}.dcm"

    def add_instance(self, ref: InstanceRef, data: bytes, *, route: str) -> StoredInstance:
        """Store one instance (a DICOM Part 10 file's bytes) durably; ``route``: how it came
        (``dimse``, ``stowrs``). An instance already stored changes nothing but the study's last
        arrival time (a study sent again is marked ``resent``)."""
        path = self.instance_path(ref)
        now = self.clock()
        with self._transaction() as db:
            known = db.execute(
                sa.select(instances.c.path).where(
                    instances.c.sop_instance_uid == ref.sop_instance_uid
                )
            ).first()
            if known is not None:
                self._touch_resent(db, ref.study_uid, now)
                return StoredInstance(self.data_dir / known.path, duplicate=True)
        try:
            write_durably(path, data)
        except OSError as exc:
            log.error("instance not written", extra={"reason": exc.strerror or type(exc).__name__})
            raise StoreUnavailableError("The instance could not be written to disk.") from None
        with self._transaction() as db:
            db.execute(
                self._insert(studies)
                .values(
                    study_uid=ref.study_uid,
                    state=StudyState.RECEIVING,
                    revision=0,
                    resent=False,
                    received_at=now,
                    last_instance_at=now,
                    attempts=0,
                    triage_runs=0,
                )
                .on_conflict_do_nothing()
            )
            inserted = db.execute(
                self._insert(instances)
                .values(
                    sop_instance_uid=ref.sop_instance_uid,
                    study_uid=ref.study_uid,
                    series_uid=ref.series_uid,
                    sop_class_uid=ref.sop_class_uid,
                    path=str(path.relative_to(self.data_dir)),
                    size=len(data),
                    route=route,
                    received_at=now,
                )
                .on_conflict_do_nothing()
            ).rowcount
            if not inserted:  # another receiver stored it meanwhile
                self._touch_resent(db, ref.study_uid, now)
                return StoredInstance(path, duplicate=True)
            still_triaging = studies.c.state == StudyState.TRIAGING
            db.execute(
                studies.update()
                .where(studies.c.study_uid == ref.study_uid)
                .values(
                    revision=studies.c.revision + 1,
                    last_instance_at=now,
                    resent=False,
                    state=sa.case((still_triaging, studies.c.state), else_=StudyState.RECEIVING),
                    attempts=sa.case((still_triaging, studies.c.attempts), else_=0),
                )
            )
        return StoredInstance(path, duplicate=False)

    def _touch_resent(self, db: Connection, study_uid: str, now: float) -> None:
        db.execute(
            studies.update()
            .where(studies.c.study_uid == study_uid)
            .values(
                last_instance_at=now,
                resent=studies.c.resent | studies.c.state.in_(FINISHED),
            )
        )

    # ---- triage ----

    def mark_complete(self, study_uid: str) -> StudyRecord | None:
        """The sender says the study is whole: triage it without waiting for the quiet period.
        A study in any other state than receiving is left as it is. None if unknown."""
        with self._transaction() as db:
            db.execute(
                studies.update()
                .where(studies.c.study_uid == study_uid)
                .where(studies.c.state == StudyState.RECEIVING)
                .values(state=StudyState.PENDING)
            )
        return self.get_study(study_uid)

    def claim_study(
        self,
        owner: str,
        *,
        model: tuple[str, int],
        quiet_s: float,
        lease_s: float,
        max_attempts: int,
    ) -> StudyClaim | None:
        """Take the longest-waiting complete study for ``owner`` until the lease ends, or None.

        Complete: pending, or receiving with nothing new for ``quiet_s``, or triaging under an
        expired lease. Before choosing, studies sent again are reopened if ``model`` is not the
        one that triaged them, and studies whose lease expired ``max_attempts`` times are failed.
        """
        now = self.clock()
        quiet_since = now - quiet_s
        name, version = model
        with self._transaction() as db:
            other_model = sa.or_(
                studies.c.model_name.is_(None),
                studies.c.model_name != name,
                studies.c.model_version != version,
            )
            db.execute(
                studies.update()
                .where(studies.c.resent, studies.c.state.in_(FINISHED))
                .where(studies.c.last_instance_at <= quiet_since)
                .values(
                    resent=False,
                    state=sa.case((other_model, StudyState.PENDING), else_=studies.c.state),
                )
            )
            expired = sa.and_(studies.c.state == StudyState.TRIAGING, studies.c.lease_until < now)
            db.execute(
                studies.update()
                .where(expired, studies.c.attempts >= max_attempts)
                .values(
                    state=StudyState.FAILED,
                    error_code=ABANDONED_CODE,
                    error_message=f"Triage was started {max_attempts} times and never finished "
                    "(its worker stopped each time).",
                    finished_at=now,
                    lease_owner=None,
                    lease_until=None,
                    attempts=0,
                )
            )
        due = sa.or_(
            studies.c.state == StudyState.PENDING,
            sa.and_(
                studies.c.state == StudyState.RECEIVING,
                studies.c.last_instance_at <= quiet_since,
            ),
            sa.and_(studies.c.state == StudyState.TRIAGING, studies.c.lease_until < now),
        )
        with self._transaction() as db:
            candidates = db.execute(
                sa.select(studies.c.study_uid)
                .where(due)
                .order_by(studies.c.last_instance_at)
                .limit(8)
            ).scalars()
            for study_uid in list(candidates):
                won = db.execute(
                    studies.update()
                    .where(studies.c.study_uid == study_uid, due)
                    .values(
                        state=StudyState.TRIAGING,
                        lease_owner=owner,
                        lease_until=now + lease_s,
                        attempts=studies.c.attempts + 1,
                        claimed_revision=studies.c.revision,
                    )
                ).rowcount
                if won:
                    revision = db.execute(
                        sa.select(studies.c.revision).where(studies.c.study_uid == study_uid)
                    ).scalar_one()
                    return StudyClaim(study_uid, revision, owner, self._paths(db, study_uid))
        return None

    def finish_study(
        self,
        claim: StudyClaim,
        *,
        model: tuple[str, int],
        result_json: str | None = None,
        error: tuple[str, str] | None = None,
        deliver_to: Collection[str] = (),
        deliver_after_s: float = 0.0,
    ) -> bool:
        """Record a claim's outcome: ``result_json`` (triaged) or ``error`` (code, message;
        failed). True when that outcome is the study's current one; False when instances arrived
        during the triage (the study is receiving again and will be triaged anew) or the lease
        was lost to another worker (nothing is recorded then).

        A current result is scheduled for delivery to ``deliver_to`` in the same transaction,
        due ``deliver_after_s`` from now (time for the worker to build the outputs; a process
        that dies first leaves them to the delivery loop), so no crash can leave a triaged study
        that is never sent."""
        assert (result_json is None) != (error is None)
        now = self.clock()
        finished = StudyState.TRIAGED if error is None else StudyState.FAILED
        current = studies.c.revision == claim.revision
        with self._transaction() as db:
            updated = db.execute(
                studies.update()
                .where(
                    studies.c.study_uid == claim.study_uid,
                    studies.c.state == StudyState.TRIAGING,
                    studies.c.lease_owner == claim.owner,
                )
                .values(
                    state=sa.case((current, finished), else_=StudyState.RECEIVING),
                    result=result_json,
                    error_code=error[0] if error else None,
                    error_message=error[1] if error else None,
                    model_name=model[0],
                    model_version=model[1],
                    finished_at=now,
                    triage_runs=studies.c.triage_runs + 1,
                    lease_owner=None,
                    lease_until=None,
                    attempts=0,
                )
            ).rowcount
            if not updated:
                log.warning("triage lease lost; result dropped", extra={"owner": claim.owner})
                return False
            state = db.execute(
                sa.select(studies.c.state).where(studies.c.study_uid == claim.study_uid)
            ).scalar_one()
            if state == StudyState.TRIAGED:
                for destination in deliver_to:
                    self._schedule(db, claim.study_uid, destination, due=now + deliver_after_s)
        return bool(state == finished)

    def release_study(self, claim: StudyClaim) -> None:
        """Give a claimed study back untried (the backend or the store failed, not the study):
        due again, and the attempt not counted."""
        with self._transaction() as db:
            db.execute(
                studies.update()
                .where(
                    studies.c.study_uid == claim.study_uid,
                    studies.c.state == StudyState.TRIAGING,
                    studies.c.lease_owner == claim.owner,
                )
                .values(
                    state=sa.case(
                        (studies.c.revision == claim.revision, StudyState.PENDING),
                        else_=StudyState.RECEIVING,
                    ),
                    lease_owner=None,
                    lease_until=None,
                    attempts=studies.c.attempts - 1,
                )
            )

    # ---- deliveries (the results sent back to the PACS) ----

    def schedule_delivery(self, study_uid: str, destination: str) -> None:
        """A delivery of the study's current result to ``destination`` (a name the delivery
        configuration knows), due now; one scheduled before (an earlier result's) starts over."""
        with self._transaction() as db:
            self._schedule(db, study_uid, destination, due=self.clock())

    def _schedule(self, db: Connection, study_uid: str, destination: str, *, due: float) -> None:
        values = {
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": due,
            "lease_owner": None,
            "lease_until": None,
            "updated_at": self.clock(),
        }
        db.execute(
            self._insert(deliveries)
            .values(study_uid=study_uid, destination=destination, **values)
            .on_conflict_do_update(
                index_elements=[deliveries.c.study_uid, deliveries.c.destination],
                set_=values,
            )
        )
        self._roll_up(db, study_uid)

    def claim_due_deliveries(
        self,
        owner: str,
        *,
        lease_s: float,
        destinations: Collection[str] | None = None,
        limit: int = 16,
    ) -> list[DeliveryRecord]:
        """Pending deliveries whose next attempt is due, leased to ``owner`` for ``lease_s`` (no
        other worker gets them until then); record each attempt with ``record_delivery_attempt``.
        ``destinations``: only deliveries to these (the ones the caller can reach; others wait
        for a process configured with them); None: any."""
        now = self.clock()
        due = sa.and_(
            deliveries.c.state == DeliveryState.PENDING,
            deliveries.c.next_attempt_at <= now,
            sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
        )
        if destinations is not None:
            due = sa.and_(due, deliveries.c.destination.in_(list(destinations)))
        claimed: list[DeliveryRecord] = []
        with self._transaction() as db:
            rows = db.execute(
                sa.select(deliveries.c.study_uid, deliveries.c.destination)
                .where(due)
                .order_by(deliveries.c.next_attempt_at)
                .limit(limit)
            ).all()
            for row in rows:
                key = sa.and_(
                    deliveries.c.study_uid == row.study_uid,
                    deliveries.c.destination == row.destination,
                )
                won = db.execute(
                    deliveries.update()
                    .where(key, due)
                    .values(lease_owner=owner, lease_until=now + lease_s)
                ).rowcount
                if won:
                    record = db.execute(sa.select(deliveries).where(key)).one()
                    claimed.append(delivery_record(record))
        return claimed

    def record_delivery_attempt(
        self,
        study_uid: str,
        destination: str,
        *,
        owner: str,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> DeliveryState | None:
        """One attempt's outcome, by the ``owner`` that claimed it: ``error`` None: delivered; an
        error with ``retry_at``: pending again from then; an error without: dead letter (the retry
        policy gave up). The study's state follows its deliveries: delivered when all are,
        dead_letter when any is. None, and nothing recorded, when the claim is no longer the
        owner's: its lease ran out and another worker claimed the delivery, or a newer result
        was scheduled meanwhile (this attempt sent the older one)."""
        if error is None:
            state = DeliveryState.DELIVERED
        else:
            state = DeliveryState.PENDING if retry_at is not None else DeliveryState.DEAD_LETTER
        with self._transaction() as db:
            recorded = db.execute(
                deliveries.update()
                .where(
                    deliveries.c.study_uid == study_uid,
                    deliveries.c.destination == destination,
                    deliveries.c.lease_owner == owner,
                )
                .values(
                    state=state,
                    attempts=deliveries.c.attempts + 1,
                    last_error=error,
                    next_attempt_at=retry_at,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=self.clock(),
                )
            ).rowcount
            if not recorded:
                log.warning("delivery lease lost; attempt not recorded", extra={"owner": owner})
                return None
            self._roll_up(db, study_uid)
        return state

    def mark_dead_letter(self, study_uid: str, destination: str, error: str) -> None:
        """Give up on a delivery without another attempt (a destination removed, a result that
        can never be sent)."""
        with self._transaction() as db:
            db.execute(
                deliveries.update()
                .where(deliveries.c.study_uid == study_uid, deliveries.c.destination == destination)
                .values(
                    state=DeliveryState.DEAD_LETTER,
                    last_error=error,
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=self.clock(),
                )
            )
            self._roll_up(db, study_uid)

    def _roll_up(self, db: Connection, study_uid: str) -> None:
        states = set(
            db.execute(
                sa.select(deliveries.c.state).where(deliveries.c.study_uid == study_uid)
            ).scalars()
        )
        if DeliveryState.DEAD_LETTER in states:
            state = StudyState.DEAD_LETTER
        elif states == {DeliveryState.DELIVERED}:
            state = StudyState.DELIVERED
        else:
            state = StudyState.TRIAGED
        delivered_states = (StudyState.TRIAGED, StudyState.DELIVERED, StudyState.DEAD_LETTER)
        db.execute(
            studies.update()
            .where(studies.c.study_uid == study_uid, studies.c.state.in_(delivered_states))
            .values(state=state)
        )

    # ---- queries ----

    def study_paths(self, study_uid: str) -> list[Path]:
        """The stored instance files of a study, in the order they arrived."""
        with self._transaction() as db:
            return self._paths(db, study_uid)

    def _paths(self, db: Connection, study_uid: str) -> list[Path]:
        paths = db.execute(
            sa.select(instances.c.path)
            .where(instances.c.study_uid == study_uid)
            .order_by(instances.c.received_at, instances.c.sop_instance_uid)
        ).scalars()
        return [self.data_dir / p for p in paths]

    def get_study(self, study_uid: str) -> StudyRecord | None:
        with self._transaction() as db:
            rows = self._records(db, studies.c.study_uid == study_uid)
        return rows[0] if rows else None

    def list_studies(
        self, *, since: float | None, after: tuple[float, str] | None, limit: int
    ) -> list[StudyRecord]:
        """Finished studies (a result or an error) in the order they finished, from ``since``,
        after the (finished_at, study_uid) key ``after`` (a page's last), at most ``limit``."""
        conditions: list[sa.ColumnElement[bool]] = [studies.c.finished_at.is_not(None)]
        if since is not None:
            conditions.append(studies.c.finished_at >= since)
        if after is not None:
            at, uid = after
            conditions.append(
                sa.or_(
                    studies.c.finished_at > at,
                    sa.and_(studies.c.finished_at == at, studies.c.study_uid > uid),
                )
            )
        with self._transaction() as db:
            return self._records(db, sa.and_(*conditions), limit=limit)

    def count_by_state(self) -> dict[StudyState, int]:
        with self._transaction() as db:
            rows = db.execute(
                sa.select(studies.c.state, sa.func.count()).group_by(studies.c.state)
            ).all()
        counts = dict.fromkeys(StudyState, 0)
        counts.update({StudyState(state): n for state, n in rows})
        return counts

    def _records(
        self, db: Connection, where: sa.ColumnElement[bool], limit: int | None = None
    ) -> list[StudyRecord]:
        count = (
            sa.select(sa.func.count())
            .where(instances.c.study_uid == studies.c.study_uid)
            .scalar_subquery()
        )
        query = (
            sa.select(studies, count.label("instance_count"))
            .where(where)
            .order_by(studies.c.finished_at, studies.c.study_uid)
        )
        if limit is not None:
            query = query.limit(limit)
        rows = db.execute(query).all()
        by_study: dict[str, list[DeliveryRecord]] = {row.study_uid: [] for row in rows}
        if by_study:
            for record in db.execute(
                sa.select(deliveries)
                .where(deliveries.c.study_uid.in_(list(by_study)))
                .order_by(deliveries.c.destination)
            ):
                by_study[record.study_uid].append(delivery_record(record))
        return [
            StudyRecord(
                study_uid=row.study_uid,
                state=StudyState(row.state),
                instances=row.instance_count,
                received_at=row.received_at,
                last_instance_at=row.last_instance_at,
                finished_at=row.finished_at,
                model_name=row.model_name,
                model_version=row.model_version,
                result_json=row.result,
                error_code=row.error_code,
                error_message=row.error_message,
                triage_runs=row.triage_runs,
                deliveries=by_study[row.study_uid],
            )
            for row in rows
        ]
