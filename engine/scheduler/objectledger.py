"""A job's durable state on an object store (S3, GCS, ...), where SQLite cannot live: small objects
under one prefix, each written whole by one PUT (atomic on object stores), none ever rewritten as a log.

    <state>/job.json                                      the job's name (``claim``)
    <state>/files/<h>/<size>.<mtime_ns>.<version>.json    input file h's record (h: sha256 of its path)
    <state>/pending/<h>.json                              its outputs being moved into place
    <state>/runs/<started>-<run_id>.json                  one run (rewritten as that run goes)
    <state>/running/<run_id>                              a run not ended yet (``mark_killed``)
    <state>/scored/<run_id>/<h>.json                      a file a run committed (``--rerun``)

The identity a file was scored as (size, mtime) and its model version are in its record's key, so a run
plans from two listings, the input's and ``files/`` (1,000 keys per request on S3), and opens no
record of a file it does not score; ``outputs`` reads one record, for a file scored again. The steps
of a file's commit are those of the SQLite ledger (``ledger``): ``begin`` writes ``pending/<h>``,
the run moves the outputs into place, ``finish`` deletes the outputs replaced, writes the new record,
deletes the old one, then the pending one; a kill anywhere leaves ``pending/<h>``, which the next run
finishes or abandons. Only the job's lock holder writes.

>>> import tempfile
>>> ledger = ObjectLedger(tempfile.mkdtemp() + "/state")
>>> ledger.claim("daily")
>>> ledger.identities().get("in/a.parquet") is None
True
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict

import pyarrow.fs as pafs

from connectors.parquet.files import is_local

from ..errors import ConfigError
from .ledger import FileRecord, Ledger, RunRecord

__all__ = ["ObjectLedger", "FileIndex", "open_ledger"]


def _hash(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:32]


class FileIndex:
    """The committed files' identities by input path, built from key names alone: ``get(path)`` gives
    (size, mtime_ns, model_version) as the file was scored (its outputs are read by ``ObjectLedger.outputs``)."""

    def __init__(self, by_hash: dict[str, tuple]):
        self._by_hash = by_hash

    def get(self, path: str, default=None):
        return self._by_hash.get(_hash(path), default)

    def __contains__(self, path: str) -> bool:
        return _hash(path) in self._by_hash

    def __len__(self) -> int:
        return len(self._by_hash)


class ObjectLedger:
    """The job's state under ``uri`` (a prefix on an object store, or a local directory); see the module doc."""

    def __init__(self, uri: str, readonly: bool = False):
        from connectors.parquet.files import filesystem_for

        self.path = uri
        self.fs, self.root = filesystem_for(uri)
        self.root = self.root.rstrip("/")
        self.readonly = readonly
        self._runs: dict[str, tuple[str, dict]] = {}  # run id -> (its key, its record), for the runs this one writes

    def close(self) -> None:
        pass

    # ---- objects --------------------------------------------------------------------------------
    def _get(self, key: str):
        try:
            with self.fs.open_input_stream(f"{self.root}/{key}") as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None

    def _put(self, key: str, value) -> None:
        if self.readonly:
            raise RuntimeError("a read-only ledger is never written")
        target = f"{self.root}/{key}"
        if is_local(self.fs):  # object stores have no directories to make
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
        with self.fs.open_output_stream(target) as out:  # one PUT: the object is whole or absent
            out.write(json.dumps(value).encode())

    def _delete(self, key: str) -> None:
        try:
            self.fs.delete_file(f"{self.root}/{key}")
        except FileNotFoundError:
            pass

    def _list(self, prefix: str, recursive: bool = False) -> list[str]:
        """Keys under ``prefix`` (relative to it), sorted."""
        base = f"{self.root}/{prefix}"
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)

    # ---- the job --------------------------------------------------------------------------------
    def claim(self, job_name: str) -> None:
        """Tie the state to a job name: another job pointing at this output or state is refused."""
        owner = self._get("job.json")
        if owner is None:
            if self.readonly:  # a dry run or `runs` before the first run: nothing to check, nothing written
                return
            self._put("job.json", {"job": job_name})
        elif owner["job"] != job_name:
            raise ConfigError(f"the ledger {self.path!r} belongs to job {owner['job']!r}, not {job_name!r}: two jobs "
                              "would share one output; give this job its own output (or state), or its old name")

    # ---- files ----------------------------------------------------------------------------------
    def _records(self, h: str) -> list[str]:
        return [f"files/{h}/{name}" for name in self._list(f"files/{h}")]

    def identities(self) -> FileIndex:
        """Each committed file's (size, mtime_ns, model_version), by input path, from one listing."""
        by_hash = {}
        for key in self._list("files", recursive=True):
            h, _, name = key.partition("/")
            size, mtime_ns, version = name.removesuffix(".json").split(".", 2)
            by_hash[h] = (int(size), int(mtime_ns), version)
        return FileIndex(by_hash)

    def pending(self) -> dict[str, FileRecord]:
        out = {}
        for name in self._list("pending"):
            record = self._get(f"pending/{name}")
            if record is not None:
                out[record["path"]] = FileRecord(**{**record, "outputs": tuple(record["outputs"])})
        return out

    def begin(self, record: FileRecord) -> None:
        self._put(f"pending/{_hash(record.path)}.json", asdict(record))

    def outputs(self, path: str) -> tuple:
        """The outputs of the file's committed record (none if it has none)."""
        out: list = []
        for key in self._records(_hash(path)):
            out += (self._get(key) or {}).get("outputs", [])
        return tuple(out)

    def finish(self, path: str, delete) -> None:
        h = _hash(path)
        new = self._get(f"pending/{h}.json")
        key = f"files/{h}/{new['size']}.{new['mtime_ns']}.{new['model_version']}.json"
        old = [k for k in self._records(h) if k != key]
        for k in old:
            for output in (self._get(k) or {}).get("outputs", []):
                if output not in new["outputs"]:
                    delete(output)
        self._put(key, new)
        for k in old:
            self._delete(k)
        self._put(f"scored/{new['run_id']}/{h}.json", {k: new[k] for k in ("path", "size", "mtime_ns", "rows")})
        self._delete(f"pending/{h}.json")

    def abandon(self, path: str) -> None:
        self._delete(f"pending/{_hash(path)}.json")

    def scored(self, run_id: str) -> list[dict]:
        """The files a run committed: path, size, mtime_ns, rows."""
        files = [self._get(f"scored/{run_id}/{name}") for name in self._list(f"scored/{run_id}")]
        return sorted((f for f in files if f), key=lambda f: f["path"])

    # ---- runs -----------------------------------------------------------------------------------
    def start_run(self, run: RunRecord) -> None:
        key = f"runs/{run.started}-{run.run_id}.json"
        self._runs[run.run_id] = (key, asdict(run))
        self._put(key, asdict(run))
        self._put(f"running/{run.run_id}", {"key": key})

    def update_run(self, run_id: str, **values) -> None:
        if run_id not in self._runs:
            marker = self._get(f"running/{run_id}")
            if marker is None:
                raise KeyError(run_id)
            self._runs[run_id] = (marker["key"], self._get(marker["key"]))
        key, record = self._runs[run_id]
        if isinstance(values.get("versions"), str):
            values["versions"] = json.loads(values["versions"])
        record.update(values)
        self._put(key, record)
        if record["status"] != "running":
            self._delete(f"running/{run_id}")

    def mark_killed(self) -> list[str]:
        ids = self._list("running")
        for run_id in ids:
            self.update_run(run_id, status="killed")
        return ids

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        keys = self._list("runs")  # named by start time: in order
        records = [self._get(f"runs/{k}") for k in (keys[-int(limit):] if limit else keys)]
        return [RunRecord(**r) for r in records if r]

    def last_scheduled(self) -> str | None:
        for key in reversed(self._list("runs")):
            record = self._get(f"runs/{key}")
            if record and record.get("scheduled_for"):
                return record["scheduled_for"]
        return None


def open_ledger(location: str, readonly: bool = False):
    """The job's ledger at ``location``: SQLite for a local file, ``ObjectLedger`` for a prefix on an object store."""
    if "://" in location and not location.startswith("file://"):
        return ObjectLedger(location, readonly)
    return Ledger(location.removeprefix("file://"), readonly)
