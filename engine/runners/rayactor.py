"""What a Ray actor runs, for both of the Ray runner's paths (Ray Data's ``ScoreActor`` and the warm pools'
``WarmActor``): the model loaded once, rows read with where they came from, scored by ``JobScorer``
(``Model.score_batch``, the hot path every mode shares) and sent back as Arrow IPC."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from ..jobs.options import ScoreOptions

__all__ = ["POSITION", "ROW_BITS", "ScoreActor", "load_in_actor", "positions", "read_with_positions", "score_rows"]

POSITION = "__arrowscore_position"  # (input file index << ROW_BITS) | row in that file, on every read row
ROW_BITS = 40


def positions(part_index: int, first_row: int, rows: int) -> pa.Array:
    """The POSITION column of ``rows`` rows of input file ``part_index`` from ``first_row`` on."""
    start = (part_index << ROW_BITS) + first_row
    return pa.array(np.arange(start, start + rows, dtype=np.int64))


def _ipc(batches: list) -> bytes | None:
    if not batches:
        return None
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue()


def _model_path(location: str, packed) -> Path:
    """The model directory on this node: the driver's path, or (another machine) the driver's copy
    unpacked once per node."""
    path = Path(location)
    if (path / "MLmodel").is_file():
        return path
    if packed is None:
        raise ConfigError(f"model path {location!r} is not on this Ray node, and no copy was shipped")
    data = packed if isinstance(packed, bytes) else __import__("ray").get(packed)
    path = Path(tempfile.gettempdir()) / "arrowscore-models" / hashlib.sha256(data).hexdigest()[:16]
    if not (path / "MLmodel").is_file():
        staging = Path(tempfile.mkdtemp(dir=path.parent if path.parent.exists() else None))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(staging, filter="data")
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another actor on this node may have won the race
            os.rename(staging, path)
    return path


def load_in_actor(location: str, packed, options: ScoreOptions, load_log: str | None):
    from ..jobs.scoring import log_load
    from ..model import load_model

    path = _model_path(location, packed)
    model = load_model(path, shared_cpu=True, **options.load_kwargs())
    log_load(load_log, path)
    return model


class ScoreActor:
    """One Ray Data actor: the model loaded once, then one call per block."""

    def __init__(self, location: str, packed, options: ScoreOptions, files: list[str], load_log: str | None = None):
        from ..jobs.scoring import JobScorer

        self.job = JobScorer.from_options(load_in_actor(location, packed, options, load_log), options)
        self.batch_rows = options.batch_rows
        self.files = files

    def __call__(self, table: pa.Table) -> pa.Table:
        return score_rows(self.job, self.files, self.batch_rows, table)


def score_rows(job, files, batch_rows: int, table: pa.Table) -> pa.Table:
    """A block of read rows -> one result row per scored batch (consecutive rows of one input file,
    at most batch_rows): (part: the file's index, out and dead: Arrow IPC, rows: input rows). ``files``
    maps a file's index to its path. A bad batch under on_error "fail" comes back as ``error`` ("Type:
    message"), which the driver raises: Ray would wrap our error in its own types and keep only its text."""
    from ..errors import EngineError
    from ..jobs.scoring import Where, file_runs

    parts, outs, deads, counts = [], [], [], []
    try:
        for batch in table.to_batches():
            pos = batch.column(POSITION).to_numpy()
            data = batch.drop_columns([POSITION])
            index, rows = pos >> ROW_BITS, pos & ((1 << ROW_BITS) - 1)
            for a, b in file_runs(index, rows, batch_rows):
                out, dead = job.score(data.slice(a, b - a), Where(files[index[a]], int(rows[a])))
                parts.append(int(index[a]))
                outs.append(_ipc(out))
                deads.append(_ipc([dead] if dead is not None else []))
                counts.append(b - a)
    except EngineError as exc:
        return pa.table({"part": pa.array([-1], pa.int32()), "out": pa.nulls(1, pa.binary()),
                         "dead": pa.nulls(1, pa.binary()), "rows": pa.array([0], pa.int64()),
                         "error": pa.array([f"{type(exc).__name__}: {exc}"])})
    return pa.table({"part": pa.array(parts, pa.int32()), "out": pa.array(outs, pa.binary()),
                     "dead": pa.array(deads, pa.binary()), "rows": pa.array(counts, pa.int64()),
                     "error": pa.nulls(len(parts), pa.string())})


def read_with_positions(part) -> Iterator[pa.Table]:
    """A part's rows, row group at a time, each row carrying its POSITION (file index and row)."""
    row = part.first_row
    for batch in part.batches():
        yield pa.Table.from_batches([batch]).append_column(POSITION, positions(part.index, row, batch.num_rows))
        row += batch.num_rows
