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

__all__ = ["ParquetSource", "Part", "list_files"]

@dataclass(frozen=True)
class Part:
    """One input file: its batches come in file order, and its rows go to one output part file.

    Read one row group at a time (``ParquetFile.read_row_group``), so memory is bounded by the row
    group, never by the file, with page checksums verified. Each file's columns keep the file's own
    types (hive partition values are filled in): every file meets the model's signature on its own,
    with the rules of a single file, so no file is conformed to another's schema. A column a file
    lacks stays absent: the model refuses it (naming the file) unless its signature marks it optional.
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

    @property
    def keys(self) -> dict:
        """This file's hive partition values (from its path)."""
        return ds.get_partition_keys(self.fragment.partition_expression)

    def batches(self) -> Iterator[pa.RecordBatch]:
        keys = self.keys
        try:
            handle = self.filesystem.open_input_file(self.path) if self.filesystem else self.path
            parquet = pq.ParquetFile(handle, page_checksum_verification=True)
            names = parquet.schema_arrow.names
            wanted = self.columns or [*names, *(k for k in self.schema.names if k in keys)]
            present = [c for c in wanted if c in names]
            for table in _rebatch(parquet, present, self.batch_rows, self.row_groups):
                for batch in table.to_batches(max_chunksize=self.batch_rows):
                    yield self._with_keys(batch, wanted, keys)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError) as exc:
            raise ConnectorError(f"cannot read {self.path!r}: {exc}; fix or remove that file") from None

    def _with_keys(self, batch: pa.RecordBatch, wanted: list, keys: dict) -> pa.RecordBatch:
        """The batch's columns in ``wanted`` order, hive partition values added as columns."""
        if not keys and batch.schema.names == wanted:
            return batch
        names, arrays = [], []
        for name in wanted:
            if name in keys:
                arrays.append(pa.repeat(pa.scalar(keys[name], self.schema.field(name).type), batch.num_rows))
            elif name in batch.schema.names:
                arrays.append(batch.column(name))
            else:
                continue
            names.append(name)
        return pa.RecordBatch.from_arrays(arrays, names)


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


def _hive_keys(files: list[str], base: str) -> list[str]:
    """The hive partition keys (``key=value`` directories) under ``base``, in path order."""
    keys: dict[str, None] = {}
    for path in files:
        for segment in posixpath.relpath(posixpath.dirname(path), base).split("/"):
            key, sep, _ = segment.partition("=")
            if sep and key:
                keys.setdefault(key)
    return list(keys)


def list_files(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[list[pafs.FileInfo], str]:
    """The input files ``uri`` names (a file, a directory without its hidden entries, or a glob), sorted
    by path, each with its size and mtime from the listing (nothing is opened), and the directory hive
    partitions are read under."""
    fs, path = filesystem_for(os.fspath(uri), filesystem)
    base = glob_root(path)
    if base is not None:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        files = sorted((i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)),
                       key=lambda i: i.path)
        if not files:
            raise ConnectorError(f"no files match {uri!r}")
        return files, base
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise ConnectorError(f"input {uri!r} does not exist")
    if info.type == pafs.FileType.File:
        return [info], posixpath.dirname(path)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted((i for i in infos if i.type == pafs.FileType.File and not hidden(i.path, path)),
                   key=lambda i: i.path)
    if not files:
        raise ConnectorError(f"input {uri!r} holds no files (hidden ones, starting with '.' or '_', "
                             "are not read)")
    return files, path


class ParquetSource:
    """A Parquet file, directory (hive partitions included), or glob, read column-projected.

    ``files``: read only these of the files ``path`` names (as ``list_files`` names them), with the
    hive partition values of their place under ``path``; scheduled jobs read their new files so."""

    def __init__(self, path: str, columns: list[str] | None = None, batch_rows: int = 32_768,
                 filesystem: pafs.FileSystem | None = None, required=(), files=None):
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
        self.uri = os.fspath(path)
        self.fs, self.path = filesystem_for(self.uri, filesystem)
        self.batch_rows = batch_rows
        self.required = list(required)  # columns every file must hold (pass-through columns)
        if files is None:
            infos, base = list_files(self.uri, filesystem)
            files = [i.path for i in infos]
        else:  # the caller listed them: no second listing of a large input
            files, base = list(files), self._base()
            outside = [f for f in files if f != self.path and not f.startswith(base.rstrip("/") + "/")]
            if outside or not files:
                raise ConfigError(f"files {outside[:3]} are not in the input {self.uri!r}; pass files that "
                                  "list_files names for it" if outside else "files is empty; pass at least one")
        self.base = base  # the directory hive partitions are read under
        keys = _hive_keys(files, base)
        # partition values stay strings, as written ('02134' is no number; one directory's name must not
        # change another file's column type)
        partitioning = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive")
        try:
            self.dataset = ds.dataset(files, format="parquet", filesystem=self.fs, partitioning=partitioning,
                                      partition_base_dir=base)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            clash = [k for k in keys if f"Field {k} has incompatible types" in str(exc)]
            if clash:
                raise ConnectorError(f"the input {self.uri!r} holds column(s) {clash} that its directory names also "
                                     "give as hive partition values; rename the column in the files or the partition "
                                     "directories") from None
            raise ConnectorError(f"cannot read Parquet input {self.uri!r}: {exc}") from None
        self.schema = self.dataset.schema
        absent = [c for c in self.required if c not in self.schema.names]
        if absent:
            raise ConfigError(f"keep_columns {absent} are not in the input (it has {self.schema.names})")
        # a column of ``columns`` some file lacks is left to the model, which names that file
        self.columns = list(dict.fromkeys(columns)) if columns else None
        self._parts = None

    def _base(self) -> str:
        """The directory hive partitions are read under (as ``list_files`` returns it)."""
        base = glob_root(self.path)
        if base is not None:
            return base
        info = self.fs.get_file_info(self.path)
        return self.path if info.type == pafs.FileType.Directory else posixpath.dirname(self.path)

    def parts(self) -> list[Part]:
        """The input files in order, with row counts from their footers (nothing is decoded yet).

        Each footer is checked here, before any work: a file that lacks a required column, or holds
        a column its hive path also names, is refused with its name."""
        if self._parts is None:
            parts = []
            for i, frag in enumerate(self.dataset.get_fragments()):
                try:
                    rows = frag.count_rows()
                    names = frag.physical_schema.names
                except (pa.ArrowInvalid, OSError) as exc:
                    raise ConnectorError(f"cannot read {frag.path!r}: {exc}; fix or remove that file") from None
                part = Part(i, frag.path, rows, frag, self.schema, self.columns, self.batch_rows, self.fs)
                keys = part.keys
                both = [k for k in keys if k in names]
                if both:
                    raise ConnectorError(f"{frag.path!r} holds column(s) {both} that its directory names also give "
                                         "as hive partition values; rename the column in the files or the "
                                         "partition directories")
                lacking = [c for c in self.required if c not in names and c not in keys]
                if lacking:
                    raise ConnectorError(f"{frag.path!r} lacks the column(s) {lacking} (keep_columns) that the other "
                                         "input files have; add them to that file, or leave them out of keep_columns")
                parts.append(part)
            self._parts = parts
        return self._parts

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.parts())

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for part in self.parts():
            yield from part.batches()
