"""Per-batch work every batch runner shares: score, keep pass-through columns, isolate bad rows.

``JobScorer.score`` wraps ``Model.score_batch`` (the one hot path) with the job-level rules:
pass-through columns, output renames, and ``on_error``: "fail" raises naming the file, rows and
column; "dead-letter" bisects a failing batch down to the rows that fail the signature, scores the
rest, and returns the rejected rows with their reason. Scored + rejected rows = input rows, always.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, SchemaError, SchemaMismatch, ScoringError

__all__ = ["JobScorer", "DEAD_LETTER_COLUMNS", "Where", "file_runs", "log_load"]

DEAD_LETTER_COLUMNS = ("_error", "_source_file", "_source_row")


@dataclass(frozen=True)
class Where:
    """Where a batch came from, for error messages and dead letters."""

    file: str
    first_row: int


def file_runs(files: np.ndarray, rows: np.ndarray, batch_rows: int) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of consecutive rows of one input file in a batch whose rows carry their
    file (any id per file) and row in it, cut at ``batch_rows``: for runners that move rows of several
    files together (Ray blocks, Spark tasks) but score and name them as the local runner does."""
    n = len(rows)
    starts = (np.flatnonzero((np.diff(files) != 0) | (np.diff(rows) != 1)) + 1).tolist() if n else []
    for a, b in zip([0, *starts], [*starts, n]):
        for start in range(a, b, batch_rows):
            yield start, min(start + batch_rows, b)


class JobScorer:
    def __init__(self, model, keep_columns=(), rename: dict | None = None, params: dict | None = None,
                 isolate_rejects: bool = False):
        self.model = model
        self.keep = list(keep_columns)
        self.rename = dict(rename or {})
        self.dead_letter = isolate_rejects
        self.params = params
        self._names = None
        # a model whose inputs are not named (a tensor fed from scalar columns) sees every column it is
        # given, so pass-through columns stay out of its input; feature_columns names them instead
        self._drop = [c for c in self.keep] if model.input_columns is None else []
        if model.output_schema is not None:  # clashes and bad renames fail before any work
            self._names = self.output_names(model.output_schema)

    @classmethod
    def from_options(cls, model, options) -> "JobScorer":
        """The per-batch rules of a batch job (ScoreOptions)."""
        return cls(model, options.keep_columns, options.rename, options.params, options.on_error == "dead-letter")

    def output_names(self, out_schema: pa.Schema) -> list[str]:
        names = [self.rename.get(n, n) for n in out_schema.names]
        clash = sorted(set(names) & set(self.keep))
        if clash:
            raise ConfigError(f"keep_columns {clash} clash with the model's output columns; rename the output "
                              "with rename={'old': 'new'} (--rename old=new) or keep other columns")
        unknown = sorted(set(self.rename) - set(out_schema.names))
        if unknown:
            raise ConfigError(f"rename names {unknown}, which the model does not output (it outputs {out_schema.names})")
        return self.keep + names

    def empty_output(self, input_schema: pa.Schema) -> pa.RecordBatch:
        """A zero-row output batch, so an empty input still yields a readable output."""
        out = pa.RecordBatch.from_pylist([], self.model.output_schema)
        keep = [pa.array([], input_schema.field(c).type) for c in self.keep]
        return pa.RecordBatch.from_arrays(keep + list(out.columns), self.output_names(out.schema))

    def score(self, batch: pa.RecordBatch, where: Where) -> tuple[list[pa.RecordBatch], pa.RecordBatch | None]:
        """(output batches in input order, rejected rows or None)."""
        if not self.dead_letter:
            return [self._one(batch, where)], None
        good, bad = [], []
        self._isolate(batch, 0, where, good, bad)
        rejected = None
        if bad:
            rejected = pa.Table.from_batches([self._reject(b, where.file, where.first_row + off, reason)
                                              for off, b, reason in bad]).combine_chunks().to_batches()[0]
        return good, rejected

    def _one(self, batch: pa.RecordBatch, where: Where) -> pa.RecordBatch:
        try:
            features = batch.drop_columns(self._drop) if self._drop else batch
            out = self.model.score_batch(features, self.params)
        except (SchemaError, ScoringError) as exc:
            last = where.first_row + batch.num_rows - 1
            raise type(exc)(f"{where.file} rows {where.first_row}-{last}: {exc}") from exc
        if self._names is None:
            self._names = self.output_names(out.schema)
        arrays = [batch.column(c) for c in self.keep] + list(out.columns)
        return pa.RecordBatch.from_arrays(arrays, self._names)

    def _isolate(self, batch, offset, where, good, bad) -> None:
        try:
            good.append(self._one(batch, where))
        except SchemaError as exc:
            if batch.num_rows == 1 or isinstance(exc, SchemaMismatch):  # a mismatch fails every row alike
                bad.append((offset, batch, str(exc.__cause__ or exc)))
                return
            mid = batch.num_rows // 2
            self._isolate(batch.slice(0, mid), offset, Where(where.file, where.first_row), good, bad)
            self._isolate(batch.slice(mid), offset + mid, Where(where.file, where.first_row + mid), good, bad)

    @staticmethod
    def _reject(batch: pa.RecordBatch, file: str, row: int, reason: str) -> pa.RecordBatch:
        n = batch.num_rows
        extra = [pa.array([reason] * n, pa.string()), pa.array([file] * n, pa.string()),
                 pa.array(range(row, row + n), pa.int64())]
        return pa.RecordBatch.from_arrays(list(batch.columns) + extra, batch.schema.names + list(DEAD_LETTER_COLUMNS))


def log_load(path: str | None, model_path) -> None:
    """One line per model load in a worker (pid, model path), so tests and operators can count loads."""
    if path:
        with open(path, "a") as fh:
            fh.write(f"{os.getpid()} {model_path}\n")
