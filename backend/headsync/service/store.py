"""The job store: queue and history of the local service in SQLite (WAL mode) inside the workspace.

One row per job. The service process (HTTP handlers, scheduler thread) and the worker processes all
open their own connection; every state change is a single conditional ``UPDATE ... WHERE state=?`` so
two writers (a worker finishing, the scheduler noticing the worker died) can never both win.

Layout of the workspace (see docs/service.md)::

    WORKSPACE/jobs.db          this store (plus jobs.db-wal, jobs.db-shm)
    WORKSPACE/logs/ID.log      one log file per job (the worker's stdout and stderr)
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import UserError

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT UNIQUE NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    params      TEXT NOT NULL,            -- JSON: the validated task parameters (absolute paths)
    state       TEXT NOT NULL,
    progress    TEXT NOT NULL,            -- JSON: fraction, stage, message, eta_s, done, total
    error       TEXT,                     -- JSON: message, hint (null unless failed/cancelled)
    artifacts   TEXT NOT NULL DEFAULT '{}',
    created     TEXT NOT NULL,
    started     TEXT,
    finished    TEXT,
    resumable   INTEGER NOT NULL DEFAULT 0,
    resumed_from TEXT,
    pid         INTEGER,                  -- worker process id while running
    stop_reason TEXT,                     -- null | 'cancel' | 'shutdown'
    owned       TEXT NOT NULL DEFAULT '[]' -- JSON: paths the job creates, removed unless it succeeds
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""

_EMPTY_PROGRESS = {"fraction": 0.0, "stage": None, "message": None, "eta_s": None, "done": 0, "total": 0}


def jsonsafe(obj: Any) -> Any:
    """``obj`` with NaN/Infinity replaced by None and unknown objects by their str (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonsafe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonsafe(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    try:  # numpy scalars and the like
        return jsonsafe(obj.item())
    except Exception:  # noqa: BLE001
        return str(obj)


def now_iso() -> str:
    """The current time, ISO 8601 in UTC with millisecond precision (``2026-11-21T09:53:18.123Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def connect(path: Path) -> sqlite3.Connection:
    """A connection in WAL mode with a generous busy timeout (writers are short)."""
    conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


DB_NAME = "jobs.db"
_SIDE_FILES = ("-wal", "-shm")
RESET_HINT = ("restore jobs.db from a backup, or start with an empty job history: headsync serve --reset-jobs "
              "(it moves the old file aside, it deletes nothing)")


def check_integrity(path: Path) -> None:
    """Raise :class:`UserError` unless the job store at ``path`` (when it exists) is a sound SQLite file
    holding the job table: ``PRAGMA quick_check`` says ``ok``. An empty file is refused too (a truncated
    store would otherwise start with no history, silently)."""
    path = Path(path)
    if not path.exists():
        return
    wal = path.with_name(path.name + "-wal")
    if path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0):
        raise UserError(f"the job store {path} is empty (truncated?): the history of jobs it held is gone "
                        "from it", RESET_HINT)
    conn = None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10.0)
        rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as e:
        raise UserError(f"the job store {path} cannot be read ({e})", RESET_HINT) from None
    finally:
        if conn is not None:
            conn.close()
    if rows != ["ok"]:
        raise UserError(f"the job store {path} is damaged: {'; '.join(map(str, rows[:3]))}", RESET_HINT)
    if "jobs" not in tables:
        raise UserError(f"the job store {path} holds no job table (not HeadSync's?)", RESET_HINT)


def set_aside(workspace: Path) -> list[Path]:
    """Move ``WORKSPACE/jobs.db`` (and its -wal, -shm) to ``jobs-set-aside-TIME.db`` so that the next start
    begins with an empty history; returns the new names. Nothing is deleted."""
    ws = Path(workspace)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for side in ("", *_SIDE_FILES):
        src = ws / (DB_NAME + side)
        if src.exists():
            dst = ws / f"jobs-set-aside-{stamp}.db{side}"
            os.replace(src, dst)
            moved.append(dst)
    return moved


class Store:
    """Access to ``WORKSPACE/jobs.db``; one connection per thread (sqlite3 objects are not shared).

    ``check`` (the service, at start): :func:`check_integrity` first, and a store that vanished while job
    logs remain is refused too (never a new, empty history unless asked for: :func:`set_aside`)."""

    def __init__(self, workspace: Path, check: bool = False):
        self.workspace = Path(workspace)
        self.path = self.workspace / DB_NAME
        self.logs = self.workspace / "logs"
        if check:
            check_integrity(self.path)
            logs = list(self.logs.glob("*.log")) if not self.path.exists() and self.logs.is_dir() else []
            if logs:  # the history was deleted: a new one only on request
                raise UserError(f"the job store {self.path} is missing, but {self.logs} holds {len(logs)} job "
                                "log(s): the history of those jobs is gone", RESET_HINT)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = connect(self.path)
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def log_path(self, job_id: str) -> Path:
        return self.logs / f"{job_id}.log"

    # ---- reads ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list(self, state: str | None = None, kind: str | None = None, subject: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        q, args = "SELECT * FROM jobs", []
        where = []
        for col, val in (("state", state), ("kind", kind), ("subject", subject)):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY seq DESC LIMIT ?"
        args.append(int(limit))
        return [_row(r) for r in self._conn().execute(q, args)]

    def queued(self) -> list[dict[str, Any]]:
        """Queued jobs, oldest first (the dispatch order)."""
        return [_row(r) for r in self._conn().execute("SELECT * FROM jobs WHERE state='queued' ORDER BY seq")]

    def running(self) -> list[dict[str, Any]]:
        return [_row(r) for r in self._conn().execute("SELECT * FROM jobs WHERE state='running' ORDER BY seq")]

    def active_subjects(self, kinds: Iterable[str] | None = None) -> set[str]:
        q = "SELECT DISTINCT subject FROM jobs WHERE state IN ('queued','running')"
        args: list[Any] = []
        if kinds:
            kinds = list(kinds)
            q += f" AND kind IN ({','.join('?' * len(kinds))})"
            args += kinds
        return {r[0] for r in self._conn().execute(q, args)}

    # ---- writes --------------------------------------------------------------------------------
    def create(self, kind: str, subject: str, params: dict[str, Any], owned: list[str] | None = None,
               resumed_from: str | None = None, job_id: str | None = None) -> dict[str, Any]:
        job_id = job_id or new_id()
        self._conn().execute(
            "INSERT INTO jobs (id, kind, subject, params, state, progress, created, resumed_from, owned)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            (job_id, kind, subject, json.dumps(params), "queued", json.dumps(_EMPTY_PROGRESS), now_iso(),
             resumed_from, json.dumps(owned or [])),
        )
        job = self.get(job_id)
        assert job is not None
        return job

    def transition(self, job_id: str, from_states: Iterable[str], to: str, **fields: Any) -> bool:
        """Move ``job_id`` from one of ``from_states`` to ``to``, setting ``fields``; False if it was not in them."""
        from_states = list(from_states)
        sets, args = ["state=?"], [to]
        if to in FINAL_STATES and "finished" not in fields:
            fields["finished"] = now_iso()
        for k, v in fields.items():
            sets.append(f"{k}=?")
            args.append(json.dumps(v) if k in ("progress", "error", "artifacts", "owned") and v is not None else v)
        cur = self._conn().execute(
            f"UPDATE jobs SET {', '.join(sets)} WHERE id=? AND state IN ({','.join('?' * len(from_states))})",
            [*args, job_id, *from_states],
        )
        return cur.rowcount == 1

    def set_fields(self, job_id: str, **fields: Any) -> None:
        sets, args = [], []
        for k, v in fields.items():
            sets.append(f"{k}=?")
            args.append(json.dumps(v) if k in ("progress", "error", "artifacts", "owned") and v is not None else v)
        self._conn().execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", [*args, job_id])

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        self._conn().execute("UPDATE jobs SET progress=? WHERE id=? AND state='running'",
                             (json.dumps(progress), job_id))


def _row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for k in ("params", "progress", "artifacts", "owned"):
        d[k] = json.loads(d[k]) if d.get(k) else ({} if k != "owned" else [])
    d["error"] = json.loads(d["error"]) if d.get("error") else None
    d["resumable"] = bool(d["resumable"])
    return d


def public(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the API shows it (DESIGN.md "Local service")."""
    return {
        "id": job["id"],
        "kind": job["kind"],
        "subject": job["subject"],
        "params": job["params"],
        "state": job["state"],
        "progress": job["progress"],
        "error": job["error"],
        "artifacts": job["artifacts"],
        "created": job["created"],
        "started": job["started"],
        "finished": job["finished"],
        "resumable": job["resumable"],
        "resumed_from": job["resumed_from"],
    }
