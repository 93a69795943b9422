"""Parquet in and out, on local or remote filesystems (anything pyarrow.fs or fsspec opens).

>>> src = ParquetSource("data/", columns=["f0", "f1"])          # doctest: +SKIP
>>> src.num_rows                                                 # doctest: +SKIP
1000000
>>> sink = ParquetSink("out/", mode="overwrite")                 # doctest: +SKIP
>>> sink.open()
>>> for part in src.parts():
...     for batch in part.batches():
...         sink.write(part.index, batch)
>>> sink.commit()                                                # out/part-00000.parquet ... and out/_SUCCESS

The sink stages part files where readers do not look (a hidden sibling directory on local disks,
``OUTPUT/_temporary/<job>/`` elsewhere) and makes them visible only at ``commit``: on a local disk
with modes ``error`` and ``overwrite`` that is one directory rename, so a crash at any point leaves
either the old output or the complete new one.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import uuid
from dataclasses import dataclass, field, replace
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.errors import ConfigError, ConnectorError

__all__ = ["ParquetSource", "ParquetSink", "DeadLetterFile", "Part", "filesystem_for", "MODES"]

MODES = ("error", "overwrite", "append")
SUCCESS = "_SUCCESS"
_GLOB = set("*?[")


def filesystem_for(path: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or a remote URI (s3://, gs://, hdfs://, ...)."""
    path = os.fspath(path)
    if filesystem is not None:
        return filesystem, path
    if "://" not in path or path.startswith("file://"):
        local = path[len("file://"):] if path.startswith("file://") else path
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    base, query = (path.split("?", 1) + [""])[:2]
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_exc:
        try:
            import fsspec
        except ImportError:
            raise ConfigError(f"cannot open {path!r} ({arrow_exc}); for this scheme, pip install fsspec and its "
                              "filesystem package (e.g. gcsfs, adlfs)") from None
        protocol, _, rest = base.partition("://")
        try:
            handler = pafs.FSSpecHandler(fsspec.filesystem(protocol))
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"cannot open {path!r}: {exc}") from None
        return pafs.PyFileSystem(handler), rest


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


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

    def split(self, max_rows: int) -> list[Part]:
        """This file as runs of whole row groups of at most ``max_rows`` rows each (a run holds at
        least one row group), for runners that read one file on several workers."""
        if self.num_rows <= max_rows or self.row_groups is not None:
            return [self]
        meta = self.fragment.metadata
        runs, current, rows = [], [], 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if current and rows + n > max_rows:
                runs.append((tuple(current), rows))
                current, rows = [], 0
            current.append(i)
            rows += n
        runs.append((tuple(current), rows))
        if len(runs) == 1:
            return [self]
        return [replace(self, num_rows=rows, row_groups=groups) for groups, rows in runs]

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
        if _GLOB & set(path):
            base = path[: min(path.index(c) for c in _GLOB if c in path)].rsplit("/", 1)[0] or "/"
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
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and not _hidden(i.path, path))
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


def _staging_name(name: str, tag) -> str:
    """The hidden sibling a job stages ``name`` in (clean_stale finds killed jobs' by this prefix)."""
    return f".{name}.arrowscore-{tag}"


def _hidden(path: str, base: str) -> bool:
    rel = posixpath.relpath(path, base)
    return any(seg.startswith((".", "_")) for seg in rel.split("/"))


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
        self.mode, self.compression, self.partition_by = mode, compression, partition_by
        self.row_group_rows = row_group_rows
        self.job = uuid.uuid4().hex[:12]
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._files: list[str] = []
        self._staging = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        visible = self._visible_files()
        if visible and self.mode == "error":
            raise ConnectorError(f"output {self.uri!r} is not empty ({len(visible)} files); choose an empty "
                                 "location, or pass mode 'overwrite' or 'append' (--mode)")
        if _is_local(self.fs):
            parent, name = os.path.split(self.path)
            os.makedirs(parent, exist_ok=True)
            self._staging = os.path.join(parent, _staging_name(name, self.job))
        else:
            self._staging = f"{self.path}/_temporary/{self.job}"
        self.fs.create_dir(self._staging, recursive=True)

    def write(self, part: int, batch: pa.RecordBatch) -> None:
        if self.partition_by is None:
            self._writer("", part, batch.schema).write_batch(batch, row_group_size=self.row_group_rows)
            return
        if self.partition_by not in batch.schema.names:
            raise ConfigError(f"partition_by column {self.partition_by!r} is not in the output "
                              f"(it has {batch.schema.names}); keep it with keep_columns")
        table = pa.Table.from_batches([batch])
        keys = table.column(self.partition_by)
        rest = table.drop_columns([self.partition_by])
        for value in pc.unique(keys).to_pylist():
            mask = pc.is_null(keys) if value is None else pc.equal(keys, pa.scalar(value, keys.type))
            chunk = rest.filter(mask)
            subdir = f"{self.partition_by}={'__HIVE_DEFAULT_PARTITION__' if value is None else value}"
            self._writer(subdir, part, chunk.schema).write_table(chunk, row_group_size=self.row_group_rows)

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
        if _is_local(self.fs) and self.mode != "append":
            final = self._swap_in_local()
        else:
            final = self._move_files(self._files)
        with self.fs.open_output_stream(f"{self.path}/{SUCCESS}") as out:
            out.write(b"")
        self._remove(self._staging)
        self._remove_empty(f"{self.path}/_temporary")
        return final

    def abort(self) -> None:
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:  # already failing; the staging directory goes anyway
                pass
        self._writers.clear()
        if self._staging:
            self._remove(self._staging)

    # ---- internals -------------------------------------------------------------------------
    def _writer(self, subdir: str, part: int, schema: pa.Schema) -> pq.ParquetWriter:
        key = f"{subdir}/part-{part:05d}"
        writer = self._writers.get(key)
        if writer is None:
            name = f"part-{part:05d}-{self.job}.parquet" if self.mode == "append" else f"part-{part:05d}.parquet"
            rel = f"{subdir}/{name}" if subdir else name
            target = f"{self._staging}/{rel}"
            if subdir:
                self.fs.create_dir(f"{self._staging}/{subdir}", recursive=True)
            writer = pq.ParquetWriter(target, schema, filesystem=self.fs, compression=self.compression)
            self._writers[key] = writer
            self._files.append(rel)
        return writer

    def _visible_files(self) -> list[str]:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type == pafs.FileType.File:
            raise ConnectorError(f"output {self.uri!r} is a file; the output must be a directory")
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return [i.path for i in infos if i.type == pafs.FileType.File
                and (not _hidden(i.path, self.path) or posixpath.basename(i.path) == SUCCESS)]

    def _swap_in_local(self) -> list[str]:
        """One rename makes the whole output visible; overwrite moves the old output aside first."""
        old = None
        if os.path.exists(self.path):
            if self.mode == "overwrite" or not os.listdir(self.path):
                old = os.path.join(os.path.dirname(self.path), _staging_name(os.path.basename(self.path), f"old-{self.job}"))
                os.rename(self.path, old)
            else:
                raise ConnectorError(f"output {self.uri!r} became non-empty while the job ran; nothing was written")
        os.rename(self._staging, self.path)
        if old:
            self._remove(old)
        self._staging = None
        return [f"{self.path}/{rel}" for rel in self._files]

    def _move_files(self, staged: list[str]) -> list[str]:
        if self.mode == "overwrite":
            for path in self._visible_files():
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
        if _is_local(self.fs):
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

    @staticmethod
    def clean_stale(path: str, filesystem: pafs.FileSystem | None = None) -> int:
        """Remove staging left by killed jobs next to a local output; returns how many were removed."""
        fs, local = filesystem_for(path, filesystem)
        if not _is_local(fs):
            return 0
        parent, name = os.path.split(local.rstrip("/"))
        if not os.path.isdir(parent):
            return 0
        stale = [e for e in os.listdir(parent) if e.startswith(_staging_name(name, ""))]
        for entry in stale:
            fs.delete_dir(os.path.join(parent, entry))
        return len(stale)


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
            self._staging = f"{parent}/{_staging_name(name, os.getpid())}"
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
