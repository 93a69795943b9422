"""Rejected rows of a job in one Parquet file, staged beside it and moved into place at commit.

``open`` (before any work) refuses a path that is a directory, or an existing file unless the mode is
``overwrite``, and on a local disk takes the path's ``PathLock`` and removes staging killed jobs left.
"""

from __future__ import annotations

import posixpath
import uuid

import pyarrow as pa
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
        self._writer = None
        self.job = uuid.uuid4().hex[:12]
        if path:
            self.fs, self._target = filesystem_for(path, filesystem)
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
        if self._writer is None:
            parent, name = posixpath.split(self._target)
            self._staging = f"{parent}/{staging_name(name, self.job)}"
            self.fs.create_dir(parent or ".", recursive=True)
            self._writer = pq.ParquetWriter(self._staging, batch.schema, filesystem=self.fs,
                                            write_page_checksum=True)
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def commit(self) -> None:
        """Move the rejected rows into place; in mode overwrite, an earlier job's go even when this
        job rejected nothing (they described the output this job replaced)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.fs.move(self._staging, self._target)
        elif self.path and self.mode == "overwrite" and self.fs.get_file_info(self._target).type == pafs.FileType.File:
            self.fs.delete_file(self._target)
        if self.path:
            self.lock.release()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                self.fs.delete_file(self._staging)
            except OSError:
                pass
        if self.path:
            self.lock.release()
