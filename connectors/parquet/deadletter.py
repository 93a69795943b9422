"""Rejected rows of a job in one Parquet file, staged beside it and moved into place at commit."""

from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from .files import filesystem_for, staging_name

__all__ = ["DeadLetterFile"]


class DeadLetterFile:
    """Rejected rows in one Parquet file, staged beside it and moved into place at commit."""

    def __init__(self, path: str | None):
        self.path = path
        self.rows = 0
        self._writer = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self.fs, self._target = filesystem_for(self.path)
            parent, name = posixpath.split(self._target)
            self._staging = f"{parent}/{staging_name(name, os.getpid())}"
            self.fs.create_dir(parent or ".", recursive=True)
            self._writer = pq.ParquetWriter(self._staging, batch.schema, filesystem=self.fs)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def commit(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.fs.move(self._staging, self._target)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                self.fs.delete_file(self._staging)
            except OSError:
                pass
