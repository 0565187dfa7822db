"""JobStore: jobs, units and events in SQLite (WAL), with a schema version and migrations.

Every change of a job, unit or event is one transaction, so a crash leaves either the state before
it or the state after it. Unit results are files (written atomically by the engine); the rows only
point at them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assetbox.engine.jobs import (
    Delivery,
    Job,
    JobError,
    JobEvent,
    JobOutput,
    JobProgress,
    JobStatus,
    Unit,
    UnitStatus,
    WebhookOutcome,
)
from assetbox.errors import Conflict, NotFound

# Each entry moves the schema one version up; never edit one that has shipped, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        request TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        idempotency_key TEXT UNIQUE,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        progress TEXT NOT NULL,
        outputs TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        reused_from TEXT
    );
    CREATE INDEX jobs_status ON jobs (status, created_at);
    CREATE INDEX jobs_hash ON jobs (kind, request_hash, status);
    CREATE TABLE units (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        idx INTEGER NOT NULL,
        status TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        result_path TEXT,
        PRIMARY KEY (job_id, idx)
    );
    CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    """,
    # 2: delivery options (webhook, upload URLs) and the webhook's outcome.
    """
    ALTER TABLE jobs ADD COLUMN delivery TEXT;
    ALTER TABLE jobs ADD COLUMN webhook TEXT
    """,
    # 3: what a kind reports on the job itself (captions), beside its output files.
    "ALTER TABLE jobs ADD COLUMN result TEXT",
    # 4: scheduling: the job's priority (0 low, 1 normal, 2 high) and the API key that sent it.
    """
    ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN api_key TEXT
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class JobStore:
    """Jobs, units and events of one data directory (``<data_dir>/jobs.sqlite3``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this assetbox knows up to "
                    f"{SCHEMA_VERSION} (a newer assetbox wrote it)"
                )
            for number in range(version, SCHEMA_VERSION):
                # Statement by statement: executescript() would commit mid-transaction.
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(
        self,
        kind: str,
        request: dict[str, Any],
        request_hash: str,
        idempotency_key: str | None = None,
        delivery: Delivery | None = None,
        *,
        priority: int = 1,
        api_key: str | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; returns it and whether it is new.

        With an `idempotency_key` already used for the same request, the earlier job comes back
        (not new).

        Raises:
            Conflict: the key was used for a different request.
        """
        with self._tx() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    if row["request_hash"] != request_hash or row["kind"] != kind:
                        raise Conflict(
                            f"idempotency key {idempotency_key!r} was used for a different "
                            f"request (job {row['id']})"
                        )
                    return self._job(row), False
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, kind, status, request, request_hash, idempotency_key, "
                "created_at, progress, delivery, priority, api_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    kind,
                    JobStatus.QUEUED.value,
                    json.dumps(request),
                    request_hash,
                    idempotency_key,
                    _now(),
                    JobProgress().model_dump_json(),
                    delivery.model_dump_json() if delivery else None,
                    priority,
                    api_key,
                ),
            )
            self._event(db, job_id, "status", {"status": JobStatus.QUEUED.value})
            return self._job(
                db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            ), True

    def get(self, job_id: str) -> Job:
        """Raises NotFound."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return self._job(row)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally filtered."""
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(status.value)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [self._job(row) for row in rows]

    def count(self, status: JobStatus) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,)
                ).fetchone()[0]
            )

    def counts_by_kind_status(self) -> list[tuple[str, str, int]]:
        """(kind, status, count) for every pair that has jobs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status"
            ).fetchall()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def oldest_queued(self) -> Job | None:
        """The oldest queued job, left queued."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY created_at, id LIMIT 1",
                (JobStatus.QUEUED.value,),
            ).fetchone()
        return self._job(row) if row else None

    def queued_heads(self) -> list[Job]:
        """Each API key's first queued job (highest priority, then oldest; jobs without a key
        count as one key), left queued: what the scheduler chooses from."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY api_key "
                "ORDER BY priority DESC, created_at, id) AS rank FROM jobs WHERE status = ?) "
                "WHERE rank = 1 ORDER BY priority DESC, created_at, id",
                (JobStatus.QUEUED.value,),
            ).fetchall()
        return [self._job(row) for row in rows]

    def next_queued(self, job_id: str | None = None) -> Job | None:
        """The oldest queued job (or `job_id` if it is still queued), marked running (one
        transaction, so no two takers)."""
        with self._tx() as db:
            if job_id is None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE status = ? ORDER BY created_at, id LIMIT 1",
                    (JobStatus.QUEUED.value,),
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT * FROM jobs WHERE status = ? AND id = ?",
                    (JobStatus.QUEUED.value, job_id),
                ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = ?, started_at = COALESCE(started_at, ?) WHERE id = ?",
                (JobStatus.RUNNING.value, _now(), row["id"]),
            )
            self._event(db, row["id"], "status", {"status": JobStatus.RUNNING.value})
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        outputs: list[JobOutput] | None = None,
        error: JobError | None = None,
        reused_from: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> Job:
        """Move a job to a terminal status (a job already terminal is left as it is)."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id!r}")
            if not JobStatus(row["status"]).is_terminal():
                self._finish(db, job_id, status, outputs, error, reused_from, result)
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def _finish(
        self,
        db: sqlite3.Connection,
        job_id: str,
        status: JobStatus,
        outputs: list[JobOutput] | None = None,
        error: JobError | None = None,
        reused_from: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, outputs = ?, error = ?, "
            "reused_from = ?, result = ? WHERE id = ?",
            (
                status.value,
                _now(),
                json.dumps([o.model_dump() for o in outputs or []]),
                error.model_dump_json() if error else None,
                reused_from,
                json.dumps(result) if result is not None else None,
                job_id,
            ),
        )
        if status != JobStatus.SUCCEEDED:
            db.execute(
                "UPDATE units SET status = ? WHERE job_id = ? AND status IN (?, ?)",
                (
                    UnitStatus.CANCELLED.value,
                    job_id,
                    UnitStatus.PENDING.value,
                    UnitStatus.RUNNING.value,
                ),
            )
        data: dict[str, Any] = {"status": status.value}
        if error:
            data["error"] = error.model_dump()
        self._event(db, job_id, "status", data)

    def find_reusable(self, kind: str, request_hash: str) -> Job | None:
        """The newest succeeded job of an identical request."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND request_hash = ? AND status = ? "
                "ORDER BY finished_at DESC LIMIT 1",
                (kind, request_hash, JobStatus.SUCCEEDED.value),
            ).fetchone()
        return self._job(row) if row else None

    def request_cancel(self, job_id: str) -> Job:
        """Record a cancel at once (one transaction): a queued job becomes ``cancelled``, a
        running one ``cancelling`` (the engine stops its units, then finishes it). A job already
        terminal or cancelling is returned as it is.

        Raises:
            NotFound: no such job.
        """
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id!r}")
            status = JobStatus(row["status"])
            # In this one transaction: a scheduler taking the job meanwhile sees it ended.
            if status == JobStatus.QUEUED:
                self._finish(db, job_id, JobStatus.CANCELLED)
            elif status == JobStatus.RUNNING:
                db.execute(
                    "UPDATE jobs SET status = ? WHERE id = ?",
                    (JobStatus.CANCELLING.value, job_id),
                )
                self._event(db, job_id, "status", {"status": JobStatus.CANCELLING.value})
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def requeue(self, job_id: str, reason: str) -> bool:
        """Put a running job back in the queue (its running units back to pending), e.g. at
        shutdown, so that the next start resumes it; a job that is no longer running (cancelling,
        terminal) is left alone. Returns whether it was requeued."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != JobStatus.RUNNING.value:
                return False
            self._requeue(db, job_id, reason)
            return True

    def _requeue(self, db: sqlite3.Connection, job_id: str, reason: str) -> None:
        db.execute("UPDATE jobs SET status = ? WHERE id = ?", (JobStatus.QUEUED.value, job_id))
        db.execute(
            "UPDATE units SET status = ? WHERE job_id = ? AND status = ?",
            (UnitStatus.PENDING.value, job_id, UnitStatus.RUNNING.value),
        )
        self._event(db, job_id, "status", {"status": JobStatus.QUEUED.value, "reason": reason})

    def requeue_interrupted(self) -> list[str]:
        """At start-up: jobs left running go back to the queue, their running units to pending;
        jobs left cancelling (a cancel accepted before a crash) end cancelled, so they never run
        again. Returns the requeued ids."""
        with self._tx() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status = ?", (JobStatus.RUNNING.value,)
                ).fetchall()
            ]
            for job_id in ids:
                self._requeue(db, job_id, "restart")
            cancelling = [
                r["id"]
                for r in db.execute(
                    "SELECT id FROM jobs WHERE status = ?", (JobStatus.CANCELLING.value,)
                ).fetchall()
            ]
        for job_id in cancelling:
            self.finish(job_id, JobStatus.CANCELLED)
        return ids

    def requests(self) -> list[str]:
        """Every job's request as stored (JSON text), e.g. to find the blobs they refer to."""
        with self._tx() as db:
            return [row["request"] for row in db.execute("SELECT request FROM jobs").fetchall()]

    def undelivered_webhooks(self) -> list[str]:
        """Finished jobs whose webhook never went out, or whose event follower stopped before
        the terminal event (a crash between finishing and delivering)."""
        terminal = [s.value for s in JobStatus if s.is_terminal()]
        marks = ", ".join("?" for _ in terminal)
        with self._tx() as db:
            rows = db.execute(
                f"""
                SELECT id FROM jobs
                WHERE status IN ({marks})
                  AND json_extract(delivery, '$.webhook_url') IS NOT NULL
                  AND (webhook IS NULL OR (
                      json_extract(webhook, '$.last_seq') IS NOT NULL
                      AND json_extract(webhook, '$.last_seq')
                          < (SELECT MAX(seq) FROM events WHERE events.job_id = jobs.id)))
                ORDER BY created_at
                """,
                terminal,
            ).fetchall()
        return [row["id"] for row in rows]

    def set_webhook(self, job_id: str, outcome: WebhookOutcome) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET webhook = ? WHERE id = ?", (outcome.model_dump_json(), job_id)
            )

    def set_progress(self, job_id: str, progress: JobProgress, *, event: bool = True) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ?", (progress.model_dump_json(), job_id)
            )
            if event:
                self._event(db, job_id, "progress", progress.model_dump())

    # -- units --------------------------------------------------------------------------------

    def add_units(self, job_id: str, payloads: list[dict[str, Any]]) -> list[Unit]:
        """Record a job's units once; later calls return the units already recorded."""
        with self._tx() as db:
            existing = db.execute(
                "SELECT COUNT(*) FROM units WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            if not existing:
                db.executemany(
                    "INSERT INTO units (job_id, idx, status, payload) VALUES (?, ?, ?, ?)",
                    [
                        (job_id, i, UnitStatus.PENDING.value, json.dumps(p))
                        for i, p in enumerate(payloads)
                    ],
                )
        return self.units(job_id)

    def units(self, job_id: str) -> list[Unit]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM units WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
        return [self._unit(row) for row in rows]

    def start_unit(self, job_id: str, index: int) -> int:
        """Mark a unit running and count the attempt; returns the attempt number."""
        with self._tx() as db:
            db.execute(
                "UPDATE units SET status = ?, attempts = attempts + 1 WHERE job_id = ? AND idx = ?",
                (UnitStatus.RUNNING.value, job_id, index),
            )
            return int(
                db.execute(
                    "SELECT attempts FROM units WHERE job_id = ? AND idx = ?", (job_id, index)
                ).fetchone()[0]
            )

    def finish_unit(self, job_id: str, index: int, result_path: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE units SET status = ?, result_path = ?, error = NULL "
                "WHERE job_id = ? AND idx = ?",
                (UnitStatus.DONE.value, result_path, job_id, index),
            )
            self._event(db, job_id, "unit", {"index": index, "status": UnitStatus.DONE.value})

    def fail_unit(self, job_id: str, index: int, error: JobError, *, retry: bool) -> None:
        status = UnitStatus.PENDING if retry else UnitStatus.FAILED
        with self._tx() as db:
            db.execute(
                "UPDATE units SET status = ?, error = ? WHERE job_id = ? AND idx = ?",
                (status.value, error.model_dump_json(), job_id, index),
            )
            self._event(
                db,
                job_id,
                "unit",
                {"index": index, "status": status.value, "error": error.model_dump()},
            )

    # -- events -------------------------------------------------------------------------------

    def events(self, job_id: str, since: int = 0) -> list[JobEvent]:
        """Events with ``seq > since``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, since)
            ).fetchall()
        return [
            JobEvent(
                job_id=r["job_id"],
                seq=r["seq"],
                type=r["type"],
                data=json.loads(r["data"]),
                at=datetime.fromisoformat(r["at"]),
            )
            for r in rows
        ]

    def _event(self, db: sqlite3.Connection, job_id: str, kind: str, data: dict) -> None:
        seq = db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
        db.execute(
            "INSERT INTO events (job_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)",
            (job_id, seq, kind, json.dumps(data), _now()),
        )

    # -- rows ---------------------------------------------------------------------------------

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            kind=row["kind"],
            status=JobStatus(row["status"]),
            request=json.loads(row["request"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            started_at=_dt(row["started_at"]),
            finished_at=_dt(row["finished_at"]),
            progress=JobProgress.model_validate_json(row["progress"]),
            outputs=[JobOutput.model_validate(o) for o in json.loads(row["outputs"])],
            error=JobError.model_validate_json(row["error"]) if row["error"] else None,
            idempotency_key=row["idempotency_key"],
            reused_from=row["reused_from"],
            delivery=Delivery.model_validate_json(row["delivery"]) if row["delivery"] else None,
            webhook=WebhookOutcome.model_validate_json(row["webhook"]) if row["webhook"] else None,
            result=json.loads(row["result"]) if row["result"] else None,
            priority=row["priority"],
            api_key=row["api_key"],
        )

    @staticmethod
    def _unit(row: sqlite3.Row) -> Unit:
        return Unit(
            job_id=row["job_id"],
            index=row["idx"],
            status=UnitStatus(row["status"]),
            payload=json.loads(row["payload"]),
            attempts=row["attempts"],
            error=JobError.model_validate_json(row["error"]) if row["error"] else None,
            result_path=row["result_path"],
        )
