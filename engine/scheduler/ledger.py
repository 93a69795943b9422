"""A job's durable state: one SQLite file holding what each input file was scored into, and the runs.

- ``files``: one row per input path, holding the identity it was scored as (size, mtime_ns), the
  model URI and version, the output files it made visible (its part file, its dead letters), rows,
  the run. A row changes only when its file is scored again; nothing is ever rewritten whole.
- ``runs``: one row per run (start, end, model version, files, rows, dead letters, status, the job
  file's hash, the versions of arrowscore and its libraries);
- ``scored``: one row per file a run committed (path, and the identity and rows it was scored as), so
  ``--rerun RUN_ID`` knows that run's files; appended as files are committed, never rewritten.

Object-store jobs keep the same records as small objects instead (``objectledger``, whose
``open_ledger`` picks one from the state location).

A file's outputs are made visible in steps, so that a kill at any moment is recognised: ``begin``
records the new outputs as pending, the run moves them into place (each an atomic rename, the part
file last), and ``finish`` deletes the outputs they replace, then makes them the file's record. The
next run (holding the job's lock) finishes a pending file whose outputs are all visible, and otherwise
removes what was moved of it and ``abandon``s it, so the file is scored again (``catchup.recover``).

>>> import tempfile
>>> ledger = Ledger(tempfile.mkdtemp() + "/ledger.sqlite")
>>> ledger.claim("daily")
>>> ledger.files()
{}
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError

__all__ = ["Ledger", "FileRecord", "RunRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER, mtime_ns INTEGER,          -- the identity it was scored as (NULL: never committed)
    model_uri TEXT, model_version TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',      -- JSON list: the visible files it made (part file last)
    rows INTEGER, rows_scored INTEGER, dead_lettered INTEGER,
    run_id TEXT, scored_at TEXT,
    pending TEXT                             -- JSON FileRecord being moved into place (a run was there)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started TEXT NOT NULL, ended TEXT,
    model_uri TEXT, model_version TEXT,
    files INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL, error TEXT,
    job_hash TEXT, arrowscore_version TEXT, versions TEXT, scheduled_for TEXT, host TEXT, pid INTEGER
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
CREATE TABLE IF NOT EXISTS scored (          -- the files each run committed, for --rerun (appended, never rewritten)
    run_id TEXT NOT NULL, path TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, rows INTEGER,
    PRIMARY KEY (run_id, path)
);
"""


@dataclass(frozen=True)
class FileRecord:
    """What one input file was scored into."""

    path: str
    size: int
    mtime_ns: int
    model_uri: str
    model_version: str
    outputs: tuple = ()
    rows: int = 0
    rows_scored: int = 0
    dead_lettered: int = 0
    run_id: str = ""
    scored_at: str = ""


@dataclass
class RunRecord:
    """One run of the job, as ``arrowscore runs`` prints it."""

    run_id: str
    started: str
    ended: str | None = None
    model_uri: str | None = None
    model_version: str | None = None
    files: int = 0
    rows: int = 0
    dead_lettered: int = 0
    status: str = "running"
    error: str | None = None
    job_hash: str | None = None
    arrowscore_version: str | None = None
    versions: dict = field(default_factory=dict)
    scheduled_for: str | None = None
    host: str | None = None
    pid: int | None = None


class Ledger:
    """The job's SQLite file; see the module doc. ``readonly``: for dry runs and ``runs`` (a missing
    file reads as empty)."""

    def __init__(self, path: str, readonly: bool = False):
        self.path, self.readonly = path, readonly
        if readonly:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) if os.path.exists(path) else None
            # a ledger being created may not hold its tables yet: it reads as empty
            if self._db is None or not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
                if self._db is not None:
                    self._db.close()
                self._db = sqlite3.connect(":memory:")
                self._db.executescript(_SCHEMA)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # `arrowscore runs` reads while a run writes
            self._db.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    # ---- the job --------------------------------------------------------------------------------
    def claim(self, job_name: str) -> None:
        """Tie the ledger to a job name: another job pointing at this output or state is refused."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'job'").fetchone()
        if row is None:
            if self.readonly:  # a dry run or `runs` before the first run: nothing to check, nothing written
                return
            with self._db:
                self._db.execute("INSERT INTO meta VALUES ('job', ?)", (job_name,))
        elif row["value"] != job_name:
            raise ConfigError(f"the ledger {self.path!r} belongs to job {row['value']!r}, not {job_name!r}: two jobs "
                              "would share one output; give this job its own output (or state), or its old name")

    # ---- files ----------------------------------------------------------------------------------
    def files(self) -> dict[str, FileRecord]:
        """Every committed file record, by input path."""
        rows = self._db.execute("SELECT * FROM files WHERE size IS NOT NULL")
        return {r["path"]: _file(r) for r in rows}

    def identities(self) -> dict[str, tuple]:
        """Each committed file's (size, mtime_ns, model_version), by input path: what a run plans from."""
        cursor = self._db.cursor()
        cursor.row_factory = None  # plain tuples: a 10,000-file ledger in 10 ms, not 50
        rows = cursor.execute("SELECT path, size, mtime_ns, model_version FROM files WHERE size IS NOT NULL")
        return {path: (size, mtime_ns, version) for path, size, mtime_ns, version in rows}

    def pending(self) -> dict[str, FileRecord]:
        rows = self._db.execute("SELECT path, pending FROM files WHERE pending IS NOT NULL")
        return {r["path"]: FileRecord(**{**json.loads(r["pending"]), "outputs": tuple(json.loads(r["pending"])["outputs"])})
                for r in rows}

    def begin(self, record: FileRecord) -> None:
        """Record ``record``'s outputs as being moved into place (before the first is moved)."""
        with self._db:
            self._db.execute("INSERT INTO files (path, pending) VALUES (?, ?) ON CONFLICT(path) DO UPDATE SET "
                             "pending = excluded.pending", (record.path, json.dumps(asdict(record))))

    def finish(self, path: str, delete) -> None:
        """The pending record becomes the file's, once ``delete`` has removed each output it replaces
        (first: a kill in between leaves the record pending, and ``recover`` deletes them again)."""
        row = self._db.execute("SELECT outputs, pending FROM files WHERE path = ?", (path,)).fetchone()
        new = json.loads(row["pending"])
        for old in json.loads(row["outputs"]):
            if old not in new["outputs"]:
                delete(old)
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO scored VALUES (?, ?, ?, ?, ?)",
                             (new["run_id"], path, new["size"], new["mtime_ns"], new["rows"]))
            self._db.execute(
                "UPDATE files SET size = ?, mtime_ns = ?, model_uri = ?, model_version = ?, outputs = ?, rows = ?, "
                "rows_scored = ?, dead_lettered = ?, run_id = ?, scored_at = ?, pending = NULL WHERE path = ?",
                (new["size"], new["mtime_ns"], new["model_uri"], new["model_version"], json.dumps(new["outputs"]),
                 new["rows"], new["rows_scored"], new["dead_lettered"], new["run_id"], new["scored_at"], path))

    def outputs(self, path: str) -> tuple:
        """The outputs of the file's committed record (none if it has none)."""
        row = self._db.execute("SELECT outputs FROM files WHERE path = ?", (path,)).fetchone()
        return tuple(json.loads(row["outputs"])) if row else ()

    def scored(self, run_id: str) -> list[dict]:
        """The files a run committed: path, size, mtime_ns, rows."""
        rows = self._db.execute("SELECT path, size, mtime_ns, rows FROM scored WHERE run_id = ? ORDER BY path",
                                (run_id,))
        return [dict(r) for r in rows]

    def abandon(self, path: str) -> None:
        """Forget a pending record (its outputs were removed): the file keeps its old record, if any."""
        with self._db:
            self._db.execute("UPDATE files SET pending = NULL WHERE path = ?", (path,))
            self._db.execute("DELETE FROM files WHERE path = ? AND size IS NULL", (path,))

    # ---- runs -----------------------------------------------------------------------------------
    def start_run(self, run: RunRecord) -> None:
        row = asdict(run)
        row["versions"] = json.dumps(run.versions)
        with self._db:
            self._db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                             tuple(row.values()))

    def update_run(self, run_id: str, **values) -> None:
        with self._db:
            self._db.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE run_id = ?",
                             (*values.values(), run_id))

    def mark_killed(self) -> list[str]:
        """Runs still marked running: their process died (the caller holds the job's lock)."""
        ids = [r["run_id"] for r in self._db.execute("SELECT run_id FROM runs WHERE status = 'running'")]
        with self._db:
            self._db.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        return ids

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """The runs, oldest first (the last ``limit`` of them)."""
        query = "SELECT * FROM runs ORDER BY started DESC, rowid DESC" + (f" LIMIT {int(limit)}" if limit else "")
        out = []
        for r in self._db.execute(query):
            row = dict(r)
            row["versions"] = json.loads(row["versions"] or "{}")
            out.append(RunRecord(**row))
        return out[::-1]

    def last_scheduled(self) -> str | None:
        """The latest schedule time a run was started for (ISO), for runs missed while down."""
        row = self._db.execute("SELECT max(scheduled_for) AS t FROM runs").fetchone()
        return row["t"] if row else None


def _file(r) -> FileRecord:
    return FileRecord(path=r["path"], size=r["size"], mtime_ns=r["mtime_ns"], model_uri=r["model_uri"],
                      model_version=r["model_version"], outputs=tuple(json.loads(r["outputs"])), rows=r["rows"],
                      rows_scored=r["rows_scored"], dead_lettered=r["dead_lettered"], run_id=r["run_id"],
                      scored_at=r["scored_at"])
