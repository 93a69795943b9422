"""The two ends of a Parquet job, shared by the local and Ray runners: open (source, parts, sink, dead
letters) and commit (empty output, row accounting, dead letters, output)."""

from __future__ import annotations

import logging
import os

import pyarrow as pa

from ..errors import ConfigError
from .scoring import JobScorer

__all__ = ["check_paths", "open_parquet_job", "plan_parquet_job", "commit_parquet_job", "dead_letters", "check_dead_letter_columns"]

log = logging.getLogger("arrowscore.job")


def check_paths(input: str, output: str, options, filesystem=None, model_path=None, state=None) -> None:
    """Refuse, before anything is read or written, an output or dead-letter path that is the input,
    holds it or lies inside it, and a dead-letter path inside the output: a job would read its own
    output back, or replace the data it reads, or bury its rejects in its output. Neither may touch
    the model's own directory, nor may a scheduled job's ``state`` (its ledger)."""
    from connectors.parquet.files import filesystem_for, glob_root, is_local

    dead_letter = options.dead_letter if options.on_error == "dead-letter" else None

    def where(path):
        fs, inside = filesystem_for(path, filesystem)
        inside = (glob_root(inside) or inside).rstrip("/") or "/"
        # on a local disk, the real place: a symlink to the output is the output
        return type(fs).__name__, os.path.realpath(inside) if is_local(fs) else inside

    def overlap(a, b) -> bool:
        (fs_a, a), (fs_b, b) = where(a), where(b)
        return fs_a == fs_b and (a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/"))

    if overlap(output, input):
        raise ConfigError(f"output {output!r} and input {input!r} overlap (the same place, or one inside the "
                          "other); write the predictions somewhere else")
    if dead_letter and overlap(dead_letter, input):
        raise ConfigError(f"dead-letter path {dead_letter!r} and input {input!r} overlap; put the rejected rows "
                          "somewhere else")
    if state and overlap(state, input):
        raise ConfigError(f"state {state!r} and input {input!r} overlap: the ledger would be read as input; keep the "
                          "job's state elsewhere (the default is beside the output)")
    for path, what in ((output, "output"), (dead_letter, "dead-letter path"), (state, "state")):
        if path and model_path and overlap(path, os.fspath(model_path)):
            raise ConfigError(f"{what} {path!r} and the model directory {os.fspath(model_path)!r} overlap; write "
                              "somewhere else")
    if dead_letter and overlap(dead_letter, output):
        raise ConfigError(f"dead-letter path {dead_letter!r} and output {output!r} overlap (the output directory is "
                          "replaced at commit); put the rejected rows beside the output, not in it")


def open_parquet_job(model, input: str, output: str, options, filesystem=None):
    """What every Parquet runner starts with: (source, parts, total rows, opened sink, dead letters).

    Reads only the model's columns plus keep_columns, knows the row count from the footers, and opens
    the dead-letter file and the sink: each takes its path's lock (a second job there is refused),
    refuses a path it would overwrite without mode overwrite, and removes what killed jobs staged.
    """
    source, parts, sink = _open_source(model, input, output, options, filesystem)
    dead = dead_letters(options, filesystem)
    dead.open()
    try:
        sink.open()
    except BaseException:
        dead.abort()
        raise
    return source, parts, sum(p.num_rows for p in parts), sink, dead


def _open_source(model, input: str, output: str, options, filesystem=None):
    """(source, parts, sink not opened yet), the paths checked and every footer read."""
    from connectors.parquet import ParquetSink, ParquetSource

    check_paths(input, output, options, filesystem, model.path)
    needed = model.input_columns
    columns = None if needed is None else list(dict.fromkeys([*needed, *options.keep_columns]))
    source = ParquetSource(input, columns=columns, batch_rows=options.batch_rows, filesystem=filesystem,
                           required=options.keep_columns, files=options.input_files)
    check_dead_letter_columns(columns or source.schema.names, options)
    parts = source.parts()
    sink = ParquetSink(output, mode=options.mode, compression=options.compression,
                       row_group_rows=options.row_group_rows, partition_by=options.partition_by, filesystem=filesystem)
    return source, parts, sink


def plan_parquet_job(model, input: str, output: str, options, filesystem=None) -> dict:
    """What a job would do, refused where the job would be, without scoring or writing anything: the
    input files with their rows (from the footers), the columns read, and the output plan."""
    job = JobScorer.from_options(model, options)  # clashes and renames, as the job checks them
    source, parts, sink = _open_source(model, input, output, options, filesystem)
    sink.check()
    out = job.output_names(model.output_schema) if model.output_schema is not None else None
    return {
        "model": str(model.path), "flavor": model.flavor,
        "files": [{"path": p.path, "rows": p.num_rows} for p in parts],
        "rows": sum(p.num_rows for p in parts),
        "columns_read": source.columns or source.schema.names,
        "output": {"path": output, "mode": options.mode, "part_files": len(parts),
                   "files_there_now": len(sink.visible_files()), "columns": out, "partition_by": options.partition_by, "compression": options.compression,
                   "row_group_rows": options.row_group_rows},
        "dead_letter": options.dead_letter if options.on_error == "dead-letter" else None,
    }


def check_dead_letter_columns(columns, options) -> None:
    """Rejected rows carry their input columns plus DEAD_LETTER_COLUMNS: an input column of one of those
    names would be written twice (and one of them lost to readers)."""
    from .scoring import DEAD_LETTER_COLUMNS

    clash = sorted(set(columns) & set(DEAD_LETTER_COLUMNS))
    if clash and options.on_error == "dead-letter":
        raise ConfigError(f"input columns {clash} have the names of the dead-letter columns {list(DEAD_LETTER_COLUMNS)}; "
                          "rename them in the input, or leave them out of keep_columns")


def dead_letters(options, filesystem=None):
    """The job's dead-letter file (a no-op one unless on_error is dead-letter), not opened yet."""
    from connectors.parquet import DeadLetterFile

    path = options.dead_letter if options.on_error == "dead-letter" else None
    return DeadLetterFile(path, options.mode, filesystem)


def commit_parquet_job(job: JobScorer, input_schema: pa.Schema, sink, dead, scored: int, total: int) -> list[str]:
    """What every Parquet runner ends with, once all its output is in the sink: a zero-row output when
    nothing was scored, the row accounting check, then dead letters and output committed.

    Scored + rejected = input rows is the job's promise; a mismatch is a bug, never a silent loss.
    """
    if scored == 0 and job.model.output_schema is not None:
        sink.write(0, job.empty_output(input_schema))
    elif scored == 0:
        log.warning("no rows were scored and the model has no output signature: the output has no part files")
    if scored + dead.rows != total:
        raise RuntimeError(f"row accounting failed: {total} input rows, {scored} scored, {dead.rows} rejected")
    dead.commit()
    return sink.commit()
