"""The Spark runner (its spark-submit entry point is ``engine/spark_job.py``).

    spark-submit --master 'local[2]' "$(python -m engine.spark_job --path)" MODEL_URI INPUT OUTPUT [score options]
    arrowscore score MODEL_URI INPUT OUTPUT --runner spark            # the same from the CLI

Takes every ``arrowscore score`` option. Spark reads the Parquet input with each row's file and row
in it (``_metadata.file_path``, ``_metadata.row_index``), a mapInArrow scores it through ``JobScorer``
(the same per-batch rules as the local and Ray runners: errors and dead letters name the input file
and row), and Spark's file committer writes the output (``_temporary/`` until the job commits); the
runner writes ``_SUCCESS`` last, after the row accounting and the dead letters, as the other runners do. Unlike the other runners, Spark writes one part file per task, named by Spark: a task
may hold several small input files or a part of a big one; rows keep their input order within it.
With dead letters, the scored result is persisted (memory and disk) so that the rejected rows,
collected to the driver into one Parquet file, and the output come from one scoring pass.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from connectors.parquet import filesystem_for

from .. import errors
from ..errors import ConfigError, ConnectorError, require
from ..jobs.options import ScoreOptions, ScoreReport, SparkOptions
from ..model.device import is_gpu
from .reach import check_reachable, host_ports
from .spark_udf import FILE, ROW

__all__ = ["run_spark"]

_MODES = {"error": "errorifexists", "overwrite": "overwrite", "append": "append"}


def run_spark(model_uri, input: str, output: str, options: ScoreOptions,
              spark_opts: SparkOptions = SparkOptions()) -> ScoreReport:
    require("pyspark", "spark", "the spark runner")
    from connectors.parquet import ParquetSink
    from connectors.parquet.lock import PathLock

    from ..jobs.parquet import check_paths, dead_letters

    if options.row_group_rows:
        raise ConfigError("the spark runner sizes row groups in bytes: set Spark's parquet.block.size instead of "
                          "row_group_rows")
    check_paths(input, output, options)
    fs, inside = filesystem_for(input)
    if fs.get_file_info(inside).type == pafs.FileType.NotFound:
        raise ConnectorError(f"input {input!r} does not exist")
    ParquetSink(output, mode=options.mode).check()  # before Spark reads or scores anything, as the other runners
    # one job at a time on the output, as the other runners (on local disks: Spark's own committer owns
    # OUTPUT/_temporary on object stores)
    lock = PathLock(output, job=uuid.uuid4().hex[:12])
    dead = dead_letters(options)
    dead.open()
    try:
        if lock.local:
            lock.acquire()
        return _run(model_uri, input, output, options, spark_opts, dead)
    except BaseException:
        dead.abort()
        raise
    finally:
        lock.release()


def _run(model_uri, input, output, options: ScoreOptions, spark_opts: SparkOptions, dead) -> ScoreReport:
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from connectors.parquet import SUCCESS

    from ..jobs.parquet import check_paths
    from ..jobs.scoring import DEAD_LETTER_COLUMNS, JobScorer
    from ..model import Model, load_model
    from . import spark_udf

    builder = SparkSession.builder.appName("arrowscore")
    master = spark_opts.master
    if not master and SparkSession.getActiveSession() is None and "spark.master" not in _submitted_conf():
        master = "local[*]"
    if master:
        builder = builder.master(master)
    if master and master.startswith("spark://") and SparkSession.getActiveSession() is None:
        # Spark's standalone client retries an absent master for a minute, then fails the job obscurely
        check_reachable("the Spark master", host_ports(master, 7077), "check --spark-master and that the master "
                        "is up; a retry may work once it is")
    if master and master.startswith("local") and SparkSession.getActiveSession() is None \
            and "spark.pyspark.python" not in _submitted_conf() and not os.environ.get("PYSPARK_PYTHON"):
        # local workers run this interpreter, which has arrowscore (Spark's default is `python3` on the
        # PATH); PySpark reads the variable, not the conf, when the driver is a plain Python process
        os.environ["PYSPARK_PYTHON"] = sys.executable
    if spark_opts.conf and SparkSession.getActiveSession() is not None:
        raise ConfigError(f"a Spark session is already running in this process, so the settings {sorted(spark_opts.conf)} "
                          "cannot be applied; set them where that session is built, or drop conf")
    gpu = gpu_conf(master, spark_opts.conf, options.device) if SparkSession.getActiveSession() is None else {}
    for key, value in {**gpu, **spark_opts.conf}.items():
        builder = builder.config(key, value)
    if options.progress is False and SparkSession.getActiveSession() is None:
        builder = builder.config("spark.ui.showConsoleProgress", "false")  # --no-progress: no stage bars either
    spark = builder.getOrCreate()
    loading = time.perf_counter()
    path, location, shipped = spark_udf._locate(spark, model_uri.path if isinstance(model_uri, Model) else model_uri,
                                                options.cache_dir)
    model = load_model(path, **options.load_kwargs(driver=True))
    start = time.perf_counter()
    job = JobScorer.from_options(model, options)  # clashes and renames fail before Spark reads anything
    check_paths(input, output, options, model_path=model.path)
    base = _check_files(input, model, options)
    if options.input_files is None:
        df = spark.read.parquet(input)
    else:  # a scheduled job's files: hive partition values still come from their place under the input
        df = spark.read.option("basePath", _spark_uri(input, base)).parquet(
            *(_spark_uri(input, f) for f in options.input_files))
    rows = df.count()  # from the Parquet footers
    columns, in_fields, out = spark_udf._plan(df, model, job, "the input")
    if options.partition_by and options.partition_by not in out.names:
        raise ConfigError(f"partition_by column {options.partition_by!r} is not in the output (it has {out.names}); "
                          "keep it with keep_columns (--keep-columns)")
    source = df.select(*columns, F.col("_metadata.file_path").alias(FILE), F.col("_metadata.row_index").alias(ROW))
    isolate = options.on_error == "dead-letter"
    result_schema = out
    if isolate:  # good rows in `out`, rejected ones (their input columns and why) in `dead`
        dead_fields = in_fields + [pa.field(n, t) for n, t in zip(DEAD_LETTER_COLUMNS, (pa.string(), pa.string(), pa.int64()))]
        result_schema = pa.schema([pa.field("out", _struct(out)), pa.field("dead", _struct(dead_fields))])
    run = spark_udf._map_function(location, shipped, options, spark_opts.load_log, result_schema, sources=True,
                                  isolate=isolate)
    result = source.mapInArrow(run, spark_udf.spark_schema(result_schema))
    before = set(_part_files(output)[1]) if options.mode == "append" else set()
    cached = result.persist(StorageLevel.MEMORY_AND_DISK) if isolate else None
    try:
        if isolate:
            rejected = spark_udf._to_arrow(cached.where(F.col("dead").isNotNull()).select("dead.*"))
            # in input order, as the other runners write them (Spark's tasks finish in any order)
            order = [(DEAD_LETTER_COLUMNS[1], "ascending"), (DEAD_LETTER_COLUMNS[2], "ascending")]
            for batch in rejected.sort_by(order).to_batches():
                dead.write(batch)  # staged: visible only once the output is committed
            result = cached.where(F.col("out").isNotNull()).select("out.*")
        if options.input_files is not None and len(options.input_files) == 1:
            # one input file in, one part file out: a scheduled run makes a file's output visible with one
            # rename (a file under 128 MB is one task anyway; a bigger one is scored by one task here)
            result = result.coalesce(1)
        # _SUCCESS comes last, after the row accounting and the dead letters, as in the other runners
        writer = (result.write.mode(_MODES[options.mode]).option("compression", options.compression)
                  .option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false"))
        if options.partition_by:
            writer = writer.partitionBy(options.partition_by)
        writer.parquet(output)
        fs, written = _part_files(output)
        files = sorted(set(written) - before)
        scored = _count_rows(fs, files)
        if scored + dead.rows != rows:
            raise RuntimeError(f"row accounting failed: {rows} input rows, {scored} scored, {dead.rows} rejected")
        dead.commit()
        out_fs, out_path = filesystem_for(output)
        with out_fs.open_output_stream(f"{out_path.rstrip('/')}/{SUCCESS}") as marker:
            marker.write(b"")
    except Exception as exc:
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


def _spark_uri(input: str, path: str) -> str:
    """A path inside the input's filesystem (as list_files names it) as Spark reads it: local paths as
    they are, remote ones with the input's scheme."""
    scheme = input.partition("://")[0] if "://" in input and not input.startswith("file://") else None
    return f"{scheme}://{path}" if scheme else path


def _check_files(input: str, model, options: ScoreOptions) -> str:
    """Spark reads every file with one schema (one file's): a column another file lacks reads as nulls,
    another type is cast or fails. So a file that lacks a column the model requires, or holds a column
    the job uses with another type than the first file, is refused before Spark reads anything; the
    local and ray runners score each file on its own."""
    from connectors.parquet import ParquetSource

    from ..errors import SchemaError
    from ..jobs.parquet import check_dead_letter_columns

    needed = model.input_columns
    keep = list(options.keep_columns)
    source = ParquetSource(input, columns=None if needed is None else [*needed, *keep], required=keep,
                           files=options.input_files)
    schema = model.input_schema
    required = [c for c in needed or [] if schema is None or c not in schema.names or not schema.field(c).nullable]
    used = list(dict.fromkeys([*(needed or source.schema.names), *keep]))
    check_dead_letter_columns(used, options)
    first = None
    for part in source.parts():
        physical = part.fragment.physical_schema
        lacking = [c for c in required if c not in physical.names and c not in part.keys]
        if lacking:
            raise SchemaError(f"{part.path!r} lacks the column(s) {lacking} that the model needs; add them to that "
                              "file or leave the file out of the input")
        types = {c: physical.field(c).type for c in used if c in physical.names}
        if first is None:
            first = (part.path, types)
        differ = [c for c in types if c in first[1] and types[c] != first[1][c]]
        if differ:
            c = differ[0]
            raise SchemaError(f"{part.path!r} holds column {c!r} as {types[c]}, {first[0]!r} as {first[1][c]}; the "
                              "spark runner reads every file with one schema: make the types agree, or score with "
                              "the local or ray runner, which take each file on its own")
    return source.base


def _struct(fields) -> pa.DataType:
    """A struct of these fields as Spark takes it: no fixed-size lists, plain lists (as _for_spark hands them over)."""
    def plain(t):
        return pa.list_(plain(t.value_type)) if pa.types.is_fixed_size_list(t) else t

    return pa.struct([pa.field(f.name, plain(f.type)) for f in fields])


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


GPU_CONF = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"}


def gpu_conf(master: str | None, conf: dict, device: str | None, submitted: dict | None = None) -> dict:
    """The Spark settings a GPU device asks of a cluster: one GPU per executor, one per task (so each task's
    model has the GPU Spark gave it), unless given. Local masters schedule no resources: none.

    >>> gpu_conf("spark://h:7077", {}, "cuda", submitted={})
    {'spark.executor.resource.gpu.amount': '1', 'spark.task.resource.gpu.amount': '1'}
    >>> gpu_conf("local[2]", {}, "cuda", submitted={}), gpu_conf("yarn", {}, "cpu", submitted={})
    ({}, {})
    >>> gpu_conf("yarn", {"spark.task.resource.gpu.amount": "0.25"}, "cuda:0", submitted={})
    {'spark.executor.resource.gpu.amount': '1'}
    """
    if not is_gpu(device):
        return {}  # no Spark settings to read for a CPU job
    given = {**(_submitted_conf() if submitted is None else submitted), **conf}
    if (master or given.get("spark.master", "")).startswith("local"):
        return {}
    return {k: v for k, v in GPU_CONF.items() if k not in given}


def _submitted_conf() -> dict:
    from pyspark import SparkConf

    return dict(SparkConf().getAll())


def _part_files(output: str):
    """(filesystem, the Parquet files under output)."""
    fs, path = filesystem_for(output)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

