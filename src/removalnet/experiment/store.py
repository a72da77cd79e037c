"""The results database of a run: one SQLite file in the run folder, WAL mode, written by the driver only.
Readers (``report``, the audit card, a dry run) open it read-only: a file that is not the project's database is
refused, never changed."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from ..utils import RemovalNetError

__all__ = ["ResultStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    config TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,          -- done | failed | skipped
    error TEXT,
    metrics TEXT,                  -- JSON: accuracy, verifier metrics, histories
    versions TEXT,                 -- JSON: python and package versions
    started REAL,
    finished REAL,
    duration_s REAL
);
CREATE INDEX IF NOT EXISTS jobs_kind ON jobs(kind);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = {"id", "kind", "name", "config", "seed", "status", "error", "metrics", "versions", "duration_s",
            "meta.key", "meta.value"}


class ResultStore:
    """``ResultStore(path)`` creates the database, or opens ours, to write; ``readonly=True`` opens an existing one
    to read (SQLite's ``mode=ro``: nothing is created, converted or added). A file that is not a database with
    our tables is refused either way (``empty_ok``: but an empty one, e.g. left by a kill at its creation, is not)."""

    def __init__(self, path: str | Path, *, readonly: bool = False, empty_ok: bool = False):
        self.path = Path(path)
        if readonly:
            self.conn = self._open_readonly(empty_ok)
            return
        if self.path.is_file():   # an existing database is written only if it is ours (or still empty)
            self._open_readonly(empty_ok=True).close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(_SCHEMA)
        self.conn.commit()

    def _open_readonly(self, empty_ok: bool = False) -> sqlite3.Connection:
        where = repr(str(self.path))
        if not self.path.is_file():
            raise RemovalNetError(f"no results database at {where}")
        # a database no writer holds open (no -wal file) is read as immutable: SQLite then creates no -wal/-shm
        # files beside it either; with a writer at work it reads through the writer's log
        live = Path(f"{self.path}-wal").exists()
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro" + ("" if live else "&immutable=1"), uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            conn.close()
            raise RemovalNetError(f"{where} is not a removalnet results database (SQLite: {e})") from None
        columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")} | {"meta." + r[1] for r in
                                                                            conn.execute("PRAGMA table_info(meta)")}
        if (tables or not empty_ok) and (not {"jobs", "meta"} <= tables or not _COLUMNS <= columns):
            conn.close()
            raise RemovalNetError(f"{where} is not a removalnet results database (it has no jobs and meta tables"
                                  + (f" of ours; it holds {', '.join(sorted(tables))}" if tables else "") + ")")
        if not tables:   # empty: read as a database holding nothing
            conn.close()
            conn = sqlite3.connect(":memory:")
            conn.executescript(_SCHEMA)
        return conn

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_meta(self, key: str, value: Any) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True, default=str)))
        self.conn.commit()

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def record(self, job: dict[str, Any], status: str, *, metrics: dict | None = None, error: str | None = None,
               versions: dict | None = None, started: float | None = None, finished: float | None = None) -> None:
        duration = (finished - started) if started is not None and finished is not None else None
        self.conn.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (job["id"], job["kind"], job["name"], json.dumps(job["config"], sort_keys=True, default=str),
             job.get("seed"), status, error, json.dumps(metrics, sort_keys=True, default=str) if metrics is not None else None,
             json.dumps(versions, sort_keys=True) if versions else None, started, finished, duration))
        self.conn.commit()

    def statuses(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT id, status FROM jobs"))

    def rows(self, kind: str | None = None, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        q = "SELECT id, kind, name, config, seed, status, error, metrics, versions, duration_s FROM jobs"
        args: list[Any] = []
        if kind:
            q += " WHERE kind = ?"
            args.append(kind)
        out = []
        wanted = set(ids) if ids is not None else None
        for r in self.conn.execute(q + " ORDER BY name", args):
            if wanted is not None and r[0] not in wanted:
                continue
            out.append({"id": r[0], "kind": r[1], "name": r[2], "config": json.loads(r[3]), "seed": r[4],
                        "status": r[5], "error": r[6], "metrics": json.loads(r[7]) if r[7] else None,
                        "versions": json.loads(r[8]) if r[8] else None, "duration_s": r[9]})
        return out
