"""Parquet output: part files staged where readers do not look (a hidden sibling directory on local
disks, ``OUTPUT/_temporary/<job>/`` elsewhere), made visible only at ``commit``.

On a local disk with modes ``error`` and ``overwrite`` the commit is one directory rename, so a crash
at any point leaves either the old output or the complete new one. A job holds the output's
``PathLock`` from ``open`` to ``commit``/``abort``: a second job on the same output is refused before
it touches anything, and only the holder removes staging that killed jobs left.

>>> import os, tempfile, pyarrow as pa
>>> out = tempfile.mkdtemp() + "/out"
>>> sink = ParquetSink(out, mode="overwrite")
>>> sink.open(); sink.write(0, pa.record_batch({"prediction": [0.5]}))
>>> [os.path.basename(f) for f in sink.commit()], sorted(os.listdir(out))
(['part-00000.parquet'], ['_SUCCESS', 'part-00000.parquet'])
"""

from __future__ import annotations

import os
import posixpath
import uuid
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.errors import ConfigError, ConnectorError

from .files import filesystem_for, hidden, is_local, staging_name
from .lock import PathLock

__all__ = ["ParquetSink", "MODES", "SUCCESS"]

MODES = ("error", "overwrite", "append")
SUCCESS = "_SUCCESS"
ROW_GROUP_ROWS = 1 << 17  # rows per row group unless row_group_rows says otherwise


class _PartFile:
    """One output file: batches gathered into whole row groups of ``rows`` rows, whatever their size
    (dead-letter isolation and small batch_rows hand over small batches; one row group each made
    files of thousands of tiny row groups)."""

    def __init__(self, writer: pq.ParquetWriter, rows: int):
        self.writer, self.rows = writer, rows
        self.pending: list = []
        self.count = 0

    def add(self, data) -> None:
        self.pending.append(pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data)
        self.count += data.num_rows
        if self.count >= self.rows:
            table = pa.concat_tables(self.pending)
            whole = (self.count // self.rows) * self.rows
            self.writer.write_table(table.slice(0, whole), row_group_size=self.rows)
            rest = table.slice(whole)
            self.pending, self.count = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=self.rows)
            self.pending, self.count = [], 0
        self.writer.close()


class ParquetSink:
    """Part files staged out of sight, made visible together at ``commit``, then ``_SUCCESS``."""

    def __init__(self, path: str, mode: str = "error", compression: str = "snappy",
                 row_group_rows: int | None = None, partition_by: str | None = None,
                 filesystem: pafs.FileSystem | None = None):
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not one of {MODES}")
        self.uri = os.fspath(path)
        self.fs, self.path = filesystem_for(self.uri, filesystem)
        self.path = self.path.rstrip("/")
        if is_local(self.fs):  # a symlink to the output is the output: its lock, its swap
            self.path = os.path.realpath(self.path)
        self.mode, self.compression, self.partition_by = mode, compression, partition_by
        self.row_group_rows = row_group_rows
        self.job = uuid.uuid4().hex[:12]
        self.lock = PathLock(self.uri, filesystem, self.job)
        self._writers: dict[str, _PartFile] = {}
        self._files: list[str] = []
        self._staging = None
        self._existing: pa.Schema | None = None  # append: the schema of the parts already there

    # ---- lifecycle ---------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse, before any work, an output that is a file, or is not empty in mode error."""
        visible = self.visible_files()
        if visible and self.mode == "error":
            raise ConnectorError(f"output {self.uri!r} is not empty ({len(visible)} files); choose an empty "
                                 "location, or pass mode 'overwrite' or 'append' (--mode)")
        if self.mode == "error" and is_local(self.fs) and os.path.isdir(self.path) and os.listdir(self.path):
            # the commit renames the staged output into place, which needs an empty (or no) directory
            entries = sorted(os.listdir(self.path))
            raise ConnectorError(f"output {self.uri!r} holds only hidden entries {entries[:5]}; remove them, or "
                                 "pass mode 'overwrite' (--mode) to replace them")

    def open(self) -> None:
        """Take the output's lock, check it, remove what killed jobs staged there, start staging."""
        self.check()  # a refused job writes nothing, not even a lock
        if is_local(self.fs):
            parent, name = os.path.split(self.path)
            self._staging = os.path.join(parent, staging_name(name, self.job))
        else:
            self._staging = f"{self.path}/_temporary/{self.job}"
        self.lock.acquire()
        try:
            if is_local(self.fs):
                self.lock.clean_stale()  # first: an output a killed job had moved aside comes back
            self.check()  # again under the lock: the job that held it may have committed meanwhile
            if self.mode == "append":
                parts = sorted(p for p in self.visible_files() if p.endswith(".parquet"))
                self._existing = pq.read_schema(parts[0], filesystem=self.fs) if parts else None
            self.fs.create_dir(self._staging, recursive=True)
        except BaseException:
            self.abort()
            raise

    def write(self, part: int, batch: pa.RecordBatch) -> None:
        if self.partition_by is None:
            self._writer("", part, batch.schema).add(batch)
            return
        if self.partition_by not in batch.schema.names:
            raise ConfigError(f"partition_by column {self.partition_by!r} is not in the output "
                              f"(it has {batch.schema.names}); keep it with keep_columns (--keep-columns)")
        table = pa.Table.from_batches([batch])
        keys = table.column(self.partition_by)
        rest = table.drop_columns([self.partition_by])
        for value in pc.unique(keys).to_pylist():
            mask = pc.is_null(keys) if value is None else pc.equal(keys, pa.scalar(value, keys.type))
            chunk = rest.filter(mask)
            # escaped as hive readers decode it: a value never names another directory ('/', '..')
            subdir = f"{self.partition_by}={'__HIVE_DEFAULT_PARTITION__' if value is None else quote(str(value), safe='')}"
            self._writer(subdir, part, chunk.schema).add(chunk)

    def close_part(self, part: int) -> None:
        """Finish the output files of one input part (frees their buffers)."""
        suffix = f"part-{part:05d}"
        for key in [k for k in self._writers if k.endswith(suffix)]:
            self._writers.pop(key).close()

    def commit(self) -> list[str]:
        """Make every staged file visible, write _SUCCESS; returns the visible output files."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if is_local(self.fs) and self.mode != "append":
            final = self._swap_in_local()
        else:
            final = self._move_files(self._files)
        with self.fs.open_output_stream(f"{self.path}/{SUCCESS}") as out:
            out.write(b"")
        self.lock.release()
        self._remove(self._staging)
        self._remove_empty(f"{self.path}/_temporary")
        return final

    def abort(self) -> None:
        for writer in self._writers.values():
            try:
                writer.writer.close()  # what it still holds is not written
            except Exception:  # already failing; the staging directory goes anyway
                pass
        self._writers.clear()
        self.lock.release()
        if self._staging:
            self._remove(self._staging)
            self._remove_empty(f"{self.path}/_temporary")

    # ---- internals -------------------------------------------------------------------------
    def _writer(self, subdir: str, part: int, schema: pa.Schema) -> "_PartFile":
        key = f"{subdir}/part-{part:05d}"
        writer = self._writers.get(key)
        if writer is None:
            if self._existing is not None and not schema.equals(self._existing, check_metadata=False):
                raise ConnectorError(f"output {self.uri!r} holds parts of another schema ({self._existing}); append "
                                     f"would add parts of {schema}: write elsewhere, or pass mode 'overwrite'")
            name = f"part-{part:05d}-{self.job}.parquet" if self.mode == "append" else f"part-{part:05d}.parquet"
            rel = f"{subdir}/{name}" if subdir else name
            target = f"{self._staging}/{rel}"
            if subdir:
                self.fs.create_dir(f"{self._staging}/{subdir}", recursive=True)
            writer = _PartFile(pq.ParquetWriter(target, schema, filesystem=self.fs, compression=self.compression,
                                                write_page_checksum=True), self.row_group_rows or ROW_GROUP_ROWS)
            self._writers[key] = writer
            self._files.append(rel)
        return writer

    def visible_files(self) -> list[str]:
        """The output's files a reader sees now (its parts and _SUCCESS)."""
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type == pafs.FileType.File:
            raise ConnectorError(f"output {self.uri!r} is a file; the output must be a directory")
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return [i.path for i in infos if i.type == pafs.FileType.File
                and (not hidden(i.path, self.path) or posixpath.basename(i.path) == SUCCESS)]

    def _swap_in_local(self) -> list[str]:
        """One rename makes the whole output visible; overwrite moves the old output aside first."""
        old = None
        if os.path.exists(self.path):
            if self.mode == "overwrite" or not os.listdir(self.path):
                old = os.path.join(os.path.dirname(self.path), staging_name(os.path.basename(self.path), f"old-{self.job}"))
                os.rename(self.path, old)
            else:
                raise ConnectorError(f"output {self.uri!r} became non-empty while the job ran; nothing was written")
        try:
            os.rename(self._staging, self.path)
        except BaseException:
            if old:  # the old output goes back where it was
                os.rename(old, self.path)
            raise
        if old:
            self._remove(old)
        self._staging = None
        return [f"{self.path}/{rel}" for rel in self._files]

    def _move_files(self, staged: list[str]) -> list[str]:
        if self.mode == "overwrite":
            for path in self.visible_files():
                self.fs.delete_file(path)
        final = []
        for rel in staged:
            target = f"{self.path}/{rel}"
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            self.fs.move(f"{self._staging}/{rel}", target)
            final.append(target)
        return final

    def _remove_empty(self, path: str) -> None:
        """Object stores keep a marker for an emptied directory; drop it when no other job uses it."""
        if is_local(self.fs):
            return
        left = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        if not left and self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self._remove(path)

    def _remove(self, path: str | None) -> None:
        if not path:
            return
        try:
            self.fs.delete_dir(path)
        except (FileNotFoundError, OSError):
            pass
