"""Parquet input: a file, directory (hive partitions included) or glob, read column-projected, one
row group at a time.

>>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
>>> data = tempfile.mkdtemp()
>>> pq.write_table(pa.table({"f0": [1.0, 2.0], "f1": [3.0, 4.0], "id": [7, 8]}), f"{data}/a.parquet")
>>> src = ParquetSource(data, columns=["f0", "f1"])
>>> [(p.index, p.num_rows) for p in src.parts()], next(iter(src)).schema.names
([(0, 2)], ['f0', 'f1'])
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass, field, replace
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.errors import ConfigError, ConnectorError

from .files import filesystem_for, glob_root, hidden

__all__ = ["ParquetSource", "Part"]

@dataclass(frozen=True)
class Part:
    """One input file: its batches come in file order, and its rows go to one output part file.

    Read one row group at a time (``ParquetFile.iter_batches``), so memory is bounded by the row
    group, never by the file; batches are conformed to the dataset's schema (hive partition values
    filled in, columns a file lacks as nulls, safe casts to the first file's types).
    """

    index: int
    path: str
    num_rows: int
    fragment: ds.Fragment = field(repr=False)
    schema: pa.Schema = field(repr=False)
    columns: list | None = field(repr=False)
    batch_rows: int = 32_768
    filesystem: pafs.FileSystem | None = field(default=None, repr=False)
    row_groups: tuple[int, ...] | None = None  # None: the whole file
    first_row: int = 0  # where this part starts in its file (a run of row groups starts later)

    def split(self, max_rows: int) -> list[Part]:
        """This file as runs of whole row groups of at most ``max_rows`` rows each (a run holds at
        least one row group), for runners that read one file on several workers."""
        if self.num_rows <= max_rows or self.row_groups is not None:
            return [self]
        meta = self.fragment.metadata
        runs, current, rows, first = [], [], 0, 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if current and rows + n > max_rows:
                runs.append((tuple(current), rows, first))
                current, first, rows = [], first + rows, 0
            current.append(i)
            rows += n
        runs.append((tuple(current), rows, first))
        if len(runs) == 1:
            return [self]
        return [replace(self, num_rows=rows, row_groups=groups, first_row=first) for groups, rows, first in runs]

    def batches(self) -> Iterator[pa.RecordBatch]:
        wanted = self.columns or self.schema.names
        target = pa.schema([self.schema.field(c) for c in wanted])
        keys = ds.get_partition_keys(self.fragment.partition_expression)
        try:
            handle = self.filesystem.open_input_file(self.path) if self.filesystem else self.path
            parquet = pq.ParquetFile(handle)
            present = [c for c in wanted if c in parquet.schema_arrow.names and c not in keys]
            for table in _rebatch(parquet, present, self.batch_rows, self.row_groups):
                for batch in table.to_batches(max_chunksize=self.batch_rows):
                    yield self._conform(batch, target, keys)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
            raise ConnectorError(f"cannot read {self.path!r}: {exc}; fix or remove that file "
                                 "(every input file must match the schema of the first)") from None

    @staticmethod
    def _conform(batch: pa.RecordBatch, target: pa.Schema, keys: dict) -> pa.RecordBatch:
        if batch.schema.equals(target):
            return batch
        n, arrays = batch.num_rows, []
        for f in target:
            if f.name in keys:
                arrays.append(pa.repeat(pa.scalar(keys[f.name], f.type), n))
            elif f.name in batch.schema.names:
                col = batch.column(f.name)
                arrays.append(col if col.type == f.type else col.cast(f.type, safe=True))
            else:
                arrays.append(pa.nulls(n, f.type))
        return pa.RecordBatch.from_arrays(arrays, schema=target)


def _rebatch(parquet: pq.ParquetFile, columns: list[str], rows: int, groups=None) -> Iterator[pa.Table]:
    """Row groups read one at a time (``iter_batches`` kept whole files decoded: memory grew with the
    file), gathered into tables of about ``rows`` rows so tiny row groups still make full batches."""
    pending, count = [], 0
    for i in range(parquet.metadata.num_row_groups) if groups is None else groups:
        group = parquet.read_row_group(i, columns=columns, use_threads=True)
        if not group.num_rows:
            continue
        if count + group.num_rows < rows:
            pending.append(group)
            count += group.num_rows
            continue
        # only the batch that spans the carried-over rows is copied; the rest are slices of this group
        need = rows - count
        yield pa.concat_tables([*pending, group.slice(0, need)]).combine_chunks()
        rest = group.slice(need)
        whole = (rest.num_rows // rows) * rows
        if whole:
            yield rest.slice(0, whole).combine_chunks()
        pending, count = ([rest.slice(whole)], rest.num_rows - whole) if rest.num_rows > whole else ([], 0)
    if count:
        yield pa.concat_tables(pending).combine_chunks()


class ParquetSource:
    """A Parquet file, directory (hive partitions included), or glob, read column-projected."""

    def __init__(self, path: str, columns: list[str] | None = None, batch_rows: int = 32_768,
                 filesystem: pafs.FileSystem | None = None):
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
        self.uri = os.fspath(path)
        self.fs, self.path = filesystem_for(self.uri, filesystem)
        self.batch_rows = batch_rows
        files, base = self._files()
        try:
            self.dataset = ds.dataset(files, format="parquet", filesystem=self.fs, partitioning="hive",
                                      partition_base_dir=base)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConnectorError(f"cannot read Parquet input {self.uri!r}: {exc}") from None
        self.schema = self.dataset.schema
        absent = [c for c in (columns or []) if c not in self.schema.names]
        if absent:
            raise ConnectorError(f"the input {self.uri!r} has no columns {absent} (it has {self.schema.names})")
        self.columns = list(dict.fromkeys(columns)) if columns else None
        self._parts = None

    def _files(self) -> tuple[list[str], str]:
        path = self.path
        base = glob_root(path)
        if base is not None:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
            if not files:
                raise ConnectorError(f"no files match {self.uri!r}")
            return files, base
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ConnectorError(f"input {self.uri!r} does not exist")
        if info.type == pafs.FileType.File:
            return [path], posixpath.dirname(path)
        infos = self.fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not hidden(i.path, path))
        return files, path

    def parts(self) -> list[Part]:
        """The input files in order, with row counts from their footers (nothing is decoded yet)."""
        if self._parts is None:
            parts = []
            for i, frag in enumerate(self.dataset.get_fragments()):
                try:
                    rows = frag.count_rows()
                except (pa.ArrowInvalid, OSError) as exc:
                    raise ConnectorError(f"cannot read {frag.path!r}: {exc}; fix or remove that file") from None
                parts.append(Part(i, frag.path, rows, frag, self.schema, self.columns, self.batch_rows, self.fs))
            self._parts = parts
        return self._parts

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.parts())

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for part in self.parts():
            yield from part.batches()
