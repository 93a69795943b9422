"""The Spark runner (its spark-submit entry point is ``engine/spark_job.py``).

    spark-submit --master 'local[2]' "$(python -m engine.spark_job --path)" MODEL_URI INPUT OUTPUT [score options]
    arrowscore score MODEL_URI INPUT OUTPUT --runner spark            # the same from the CLI

Takes every ``arrowscore score`` option. Spark reads the Parquet input with each row's file and row
in it (``_metadata.file_path``, ``_metadata.row_index``), a mapInArrow scores it through ``JobScorer``
(the same per-batch rules as the local and Ray runners: errors and dead letters name the input file
and row), and Spark's file committer writes the output (``_temporary/`` until the job commits, then
``_SUCCESS``). Unlike the other runners, Spark writes one part file per task, named by Spark: a task
may hold several small input files or a part of a big one; rows keep their input order within it.
With dead letters, the scored result is persisted (memory and disk) so that the rejected rows,
collected to the driver into one Parquet file, and the output come from one scoring pass.
"""

from __future__ import annotations

import os
import re
import sys
import time
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from connectors.parquet import filesystem_for

from .. import errors
from ..errors import ConfigError, ConnectorError, SchemaError, require
from ..jobs.options import ScoreOptions, ScoreReport, SparkOptions

__all__ = ["run_spark"]

_MODES = {"error": "errorifexists", "overwrite": "overwrite", "append": "append"}
FILE, ROW = "__arrowscore_file", "__arrowscore_row"


def run_spark(model_uri, input: str, output: str, options: ScoreOptions,
              spark_opts: SparkOptions = SparkOptions()) -> ScoreReport:
    require("pyspark", "spark", "the spark runner")
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from connectors.parquet import DeadLetterFile

    from ..jobs.parquet import check_paths
    from ..jobs.scoring import DEAD_LETTER_COLUMNS, JobScorer
    from ..model import Model, load_model
    from . import spark_udf

    if options.row_group_rows:
        raise ConfigError("the spark runner sizes row groups in bytes: set Spark's parquet.block.size instead of "
                          "row_group_rows")
    check_paths(input, output, options.dead_letter if options.on_error == "dead-letter" else None)
    fs, inside = filesystem_for(input)
    if fs.get_file_info(inside).type == pafs.FileType.NotFound:
        raise ConnectorError(f"input {input!r} does not exist")
    existing = _part_files(output)[1]
    if existing and options.mode == "error":  # before Spark reads or scores anything, as the other runners
        raise ConnectorError(f"output {output!r} is not empty ({len(existing)} files); choose an empty location, "
                             "or pass mode 'overwrite' or 'append' (--mode)")
    builder = SparkSession.builder.appName("arrowscore")
    master = spark_opts.master
    if not master and SparkSession.getActiveSession() is None and "spark.master" not in _submitted_conf():
        master = "local[*]"
    if master:
        builder = builder.master(master)
    if master and master.startswith("local") and SparkSession.getActiveSession() is None \
            and "spark.pyspark.python" not in _submitted_conf() and not os.environ.get("PYSPARK_PYTHON"):
        # local workers run this interpreter, which has arrowscore (Spark's default is `python3` on the
        # PATH); PySpark reads the variable, not the conf, when the driver is a plain Python process
        os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = builder.getOrCreate()
    loading = time.perf_counter()
    path, location, shipped = spark_udf._locate(spark, model_uri.path if isinstance(model_uri, Model) else model_uri,
                                                options.cache_dir)
    model = load_model(path, **options.load_kwargs())
    start = time.perf_counter()
    job = JobScorer.from_options(model, options)  # clashes and renames fail before Spark reads anything
    df = spark.read.parquet(input)
    rows = df.count()  # from the Parquet footers
    missing = [c for c in options.keep_columns if c not in df.columns]
    if missing:
        raise ConfigError(f"keep_columns {missing} are not in the input (it has {df.columns})")
    absent = [c for c in (model.input_columns or []) if c not in df.columns]
    if absent:
        raise SchemaError(f"the model needs columns {absent} that the input lacks (it has {df.columns}); "
                          "add or rename those columns")
    columns = list(dict.fromkeys([*(model.input_columns or df.columns), *options.keep_columns]))
    source = df.select(*columns, F.col("_metadata.file_path").alias(FILE), F.col("_metadata.row_index").alias(ROW))
    out_schema = model.output_schema or _sample_output(model, df.select(*columns).limit(64).toArrow(), input)
    in_fields = [pa.field(c, spark_udf._arrow_of(df, c)) for c in columns]
    names = job.output_names(out_schema)
    if options.partition_by and options.partition_by not in names:
        raise ConfigError(f"partition_by column {options.partition_by!r} is not in the output (it has {names}); "
                          "keep it with keep_columns (--keep-columns)")
    keep = [f for f in in_fields if f.name in options.keep_columns]
    out = pa.schema(keep + [pa.field(n, f.type) for n, f in zip(names[len(keep):], out_schema)])
    isolate = options.on_error == "dead-letter"
    dead_schema = pa.schema(in_fields + [pa.field(DEAD_LETTER_COLUMNS[0], pa.string()),
                                         pa.field(DEAD_LETTER_COLUMNS[1], pa.string()),
                                         pa.field(DEAD_LETTER_COLUMNS[2], pa.int64())])
    # Spark has no fixed-size lists: the structs declare plain lists, as _for_spark hands them over
    result_schema = pa.schema([pa.field("out", pa.struct([pa.field(f.name, _plain(f.type)) for f in out])),
                               pa.field("dead", pa.struct([pa.field(f.name, _plain(f.type)) for f in dead_schema]))]) \
        if isolate else out
    run = _scoring(location, shipped, options, spark_opts.load_log, isolate, result_schema)
    result = source.mapInArrow(run, spark_udf.spark_schema(result_schema))
    dead = DeadLetterFile(options.dead_letter)
    before = set(existing) if options.mode == "append" else set()
    cached = result.persist(StorageLevel.MEMORY_AND_DISK) if isolate else None
    try:
        if isolate:
            rejected = cached.where(F.col("dead").isNotNull()).select("dead.*").toArrow()
            # in input order, as the other runners write them (Spark's tasks finish in any order)
            order = [(DEAD_LETTER_COLUMNS[1], "ascending"), (DEAD_LETTER_COLUMNS[2], "ascending")]
            for batch in rejected.sort_by(order).to_batches():
                dead.write(batch)  # staged: visible only once the output is committed
            result = cached.where(F.col("out").isNotNull()).select("out.*")
        writer = result.write.mode(_MODES[options.mode]).option("compression", options.compression)
        if options.partition_by:
            writer = writer.partitionBy(options.partition_by)
        writer.parquet(output)
        fs, written = _part_files(output)
        files = sorted(set(written) - before)
        scored = _count_rows(fs, files)
        if scored + dead.rows != rows:
            raise RuntimeError(f"row accounting failed: {rows} input rows, {scored} scored, {dead.rows} rejected")
        dead.commit()
    except Exception as exc:
        dead.abort()
        ours = _our_error(exc)
        if ours is exc:
            raise
        raise ours from exc
    finally:
        if cached is not None:
            cached.unpersist()
    return ScoreReport(rows=rows, rows_scored=scored, dead_lettered=dead.rows, seconds=time.perf_counter() - start,
                       output_files=files, input_files=len(df.inputFiles()),
                       dead_letter_path=options.dead_letter if dead.rows else None, runner="spark",
                       load_seconds=start - loading)


def _sample_output(model, sample: pa.Table, input: str) -> pa.Schema:
    """The output schema of a model without an output signature, from the first rows it can score."""
    from ..jobs.scoring import JobScorer, Where

    for batch in sample.to_batches():
        good, _ = JobScorer(model, isolate_rejects=True).score(batch, Where(f"{input} (a sample of its first)", 0))
        if good:
            return good[0].schema
    raise ConfigError("the model has no output signature and none of the first rows could be scored, so the "
                      "Spark result type is unknown; log the model with an output signature")


def _scoring(location: str, shipped: bool, options: ScoreOptions, load_log, isolate: bool, result: pa.Schema):
    """The mapInArrow function: batches with FILE and ROW -> outputs (and, isolating, dead letters)."""
    from ..jobs.scoring import JobScorer, Where
    from .spark_udf import _for_spark, _worker_model

    load = {**options.load_kwargs(), "load_log": load_log}
    out_type = result.field("out").type if isolate else None
    dead_type = result.field("dead").type if isolate else None

    def struct(batch, type_):
        return pa.StructArray.from_arrays([_for_spark(c) for c in batch.columns], fields=list(type_))

    def run(batches):
        job = JobScorer.from_options(_worker_model(location, shipped, load), options)
        for batch in batches:
            data = batch.drop_columns([FILE, ROW])
            for a, b, file, row in _runs(batch.column(FILE), batch.column(ROW), options.batch_rows):
                good, rejected = job.score(data.slice(a, b - a), Where(file, row))
                if not isolate:
                    for o in good:
                        yield pa.RecordBatch.from_arrays([_for_spark(c) for c in o.columns], o.schema.names)
                    continue
                for o in good:
                    yield pa.RecordBatch.from_arrays([struct(o, out_type), pa.nulls(o.num_rows, dead_type)], ["out", "dead"])
                if rejected is not None:
                    yield pa.RecordBatch.from_arrays([pa.nulls(rejected.num_rows, out_type), struct(rejected, dead_type)],
                                                     ["out", "dead"])

    return run


def _plain(t: pa.DataType) -> pa.DataType:
    return pa.list_(_plain(t.value_type)) if pa.types.is_fixed_size_list(t) else t


def _runs(files: pa.Array, rows: pa.Array, batch_rows: int):
    """(start, end, file, first row) of each run of consecutive rows of one input file in a batch,
    cut at ``batch_rows`` rows as the other runners cut their batches."""
    n = len(rows)
    if not n:
        return
    codes = files.dictionary_encode()
    index, row = codes.indices.to_numpy(zero_copy_only=False), rows.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero((np.diff(index) != 0) | (np.diff(row) != 1)) + 1
    for a, b in zip([0, *starts.tolist()], [*starts.tolist(), n]):
        file = _local(codes.dictionary[index[a]].as_py())
        for start in range(a, b, batch_rows):
            yield start, min(start + batch_rows, b), file, int(row[start])


def _local(path: str) -> str:
    """Spark names local files file:/path (URL-quoted); the other runners name them /path."""
    return unquote(urlparse(path).path) if path.startswith("file:") else path


def _our_error(exc: Exception) -> Exception:
    """An error raised by our code in a Python worker reaches the driver as Spark's text: raise it as ours."""
    if isinstance(exc, errors.EngineError):
        return exc
    if type(exc).__name__ == "AnalysisException":  # Spark refused the query (paths, columns): its first line says why
        return errors.ConnectorError(f"Spark: {str(exc).strip().splitlines()[0]}")
    found = re.findall(r"engine\.errors\.(\w+): ([^\n]*)", str(exc))
    if found:
        kind, message = found[-1]
        error = getattr(errors, kind, None)
        if isinstance(error, type) and issubclass(error, errors.EngineError):
            return error(message)
    return exc


def _count_rows(fs, files: list[str]) -> int:
    """Rows written, from the footers: the report counts, it does not assume."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        with fs.open_input_file(f) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _submitted_conf() -> dict:
    from pyspark import SparkConf

    return dict(SparkConf().getAll())


def _part_files(output: str):
    """(filesystem, the Parquet files under output)."""
    fs, path = filesystem_for(output)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

