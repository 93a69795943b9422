"""Rejected rows of a job in one Parquet file, staged beside it and moved into place at commit.

``open`` (before any work) refuses a path that is a directory, or an existing file unless the mode is
``overwrite``, and on a local disk takes the path's ``PathLock`` and removes staging killed jobs left.
Rejected rows of input files whose schemas differ go to one file too (see ``_merge``).
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.errors import ConnectorError

from .files import filesystem_for, is_local, staging_name
from .lock import PathLock

__all__ = ["DeadLetterFile"]


class DeadLetterFile:
    """Rejected rows in one Parquet file, staged beside it and moved into place at commit."""

    def __init__(self, path: str | None, mode: str = "error", filesystem: pafs.FileSystem | None = None):
        self.path, self.mode = path, mode
        self.rows = 0
        self._writers: dict[pa.Schema, pq.ParquetWriter] = {}
        self._staged: list[str] = []
        self._order: list[tuple[int, int]] = []  # (staged file, rows) per write, to merge in input order
        self.job = uuid.uuid4().hex[:12]
        if path:
            self.fs, self._target = filesystem_for(path, filesystem)
            if is_local(self.fs):  # a symlink to a dead-letter file is that file: its lock, its replacement
                self._target = os.path.realpath(self._target)
            self.lock = PathLock(path, filesystem, self.job, what="dead-letter file")

    def open(self) -> None:
        """Check the path and take it, before the job reads anything."""
        if not self.path:
            return
        self._check()
        if not is_local(self.fs):
            return  # object stores: a single file has no lock (see PathLock); its staging is per job
        self.lock.acquire()
        try:
            self._check()
            self.lock.clean_stale()
        except BaseException:
            self.lock.release()
            raise

    def _check(self) -> None:
        kind = self.fs.get_file_info(self._target).type
        if kind == pafs.FileType.Directory:
            raise ConnectorError(f"dead-letter path {self.path!r} is a directory; name a file in it, e.g. "
                                 f"{posixpath.join(self.path, 'rejected.parquet')!r}")
        if kind == pafs.FileType.File and self.mode != "overwrite":
            raise ConnectorError(f"dead-letter file {self.path!r} exists and holds an earlier job's rejected rows; "
                                 "move it away, name another file (--dead-letter), or pass mode 'overwrite' "
                                 "(--mode) to replace it")

    def write(self, batch: pa.RecordBatch) -> None:
        """Stage rejected rows; rows of another schema (input files differ) are staged apart and merged
        at commit."""
        writer = self._writers.get(batch.schema)
        if writer is None:
            parent, name = posixpath.split(self._target)
            staging = f"{parent}/{staging_name(name, self.job)}" + (f".{len(self._writers)}" if self._writers else "")
            if not self._writers:
                self.fs.create_dir(parent or ".", recursive=True)
            writer = pq.ParquetWriter(staging, batch.schema, filesystem=self.fs, write_page_checksum=True)
            self._writers[batch.schema] = writer
            self._staged.append(staging)
        writer.write_batch(batch)
        self._order.append((list(self._writers).index(batch.schema), batch.num_rows))
        self.rows += batch.num_rows

    def commit(self) -> None:
        """Move the rejected rows into place; in mode overwrite, an earlier job's go even when this
        job rejected nothing (they described the output this job replaced)."""
        if self._writers:
            self._close()
            staged = self._staged[0] if len(self._staged) == 1 else self._merge()
            self.fs.move(staged, self._target)
            self._remove(self._staged)
            self._staged = []
        elif self.path and self.mode == "overwrite" and self.fs.get_file_info(self._target).type == pafs.FileType.File:
            self.fs.delete_file(self._target)
        if self.path:
            self.lock.release()

    def abort(self) -> None:
        self._close()
        self._remove(self._staged)
        self._staged = []
        if self.path:
            self.lock.release()

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _remove(self, paths) -> None:
        for path in paths:
            try:
                self.fs.delete_file(path)
            except OSError:
                pass

    def _merge(self) -> str:
        """Rows of differing schemas in one file: every column of any of them, nulls where a file
        lacked it, and a column whose type differs between them as text (each value written out,
        so nothing is lost)."""
        schemas = [pq.read_schema(path, filesystem=self.fs) for path in self._staged]
        types: dict[str, list] = {}
        for schema in schemas:
            for f in schema:
                types.setdefault(f.name, []).append(f.type)
        target = pa.schema([(n, t[0] if all(x == t[0] for x in t) else pa.string()) for n, t in types.items()])
        merged = f"{self._staged[0]}.merged"
        readers = [_rows(pq.ParquetFile(path, filesystem=self.fs)) for path in self._staged]
        with pq.ParquetWriter(merged, target, filesystem=self.fs, write_page_checksum=True) as out:
            for index, rows in self._order:  # in the order the rows were rejected: input order
                out.write_batch(_conform(readers[index](rows), target))
        self._staged.append(merged)
        return merged


def _rows(parquet: pq.ParquetFile):
    """A function returning the file's next ``n`` rows as one batch, reading it in order."""
    batches = parquet.iter_batches(batch_size=1 << 16)
    pending: list = []

    def take(n: int) -> pa.RecordBatch:
        nonlocal pending
        have = sum(b.num_rows for b in pending)
        while have < n:
            batch = next(batches)
            pending.append(batch)
            have += batch.num_rows
        table = pa.Table.from_batches(pending).combine_chunks()
        rest = table.slice(n)
        pending = rest.to_batches() if rest.num_rows else []
        return table.slice(0, n).to_batches()[0]

    return take


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for f in target:
        if f.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, f.type))
            continue
        col = batch.column(f.name)
        if col.type != f.type:
            try:
                col = pc.cast(col, f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # nested values: their JSON text
                col = pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()],
                               f.type)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=target)
