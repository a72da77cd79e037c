"""The results database of a run: one SQLite file in the run folder, WAL mode, written by the driver only."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

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


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(_SCHEMA)
        self.conn.commit()

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
