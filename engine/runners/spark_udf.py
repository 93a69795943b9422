"""Spark: an Arrow UDF for any logged model, and whole-DataFrame scoring through mapInArrow.

    predict = engine.spark.udf(spark, "models:/fraud@champion")
    df.withColumn("score", predict("amount", "age"))
    spark.udf.register("fraud_score", predict)
    engine.spark.score(df, "models:/fraud@champion", keep_columns=["id"])

The driver resolves the model URI once (registry lookups, downloads) and hands executors a local
path (local mode) or ships the directory with ``SparkContext.addFile``. Each Python worker loads the
model once and keeps it for every later task (Spark reuses Python workers); every batch then goes
through ``Model.score_batch``, the same hot path as every other mode. No pandas where Spark allows:
the UDF is an ``arrow_udf`` on pyspark >= 4.1 (an iterator ``pandas_udf`` on 3.5 and 4.0, converting
each batch to Arrow and back), ``score`` a ``mapInArrow`` (pyspark >= 3.3).

Spark Connect has no SparkContext to ship files with: a model is read where the driver has it when the
master is local, or from the path as given with ``ship_model=False`` (a path every executor reads:
a shared file system, /dbfs, a volume); otherwise the call is refused with that advice.
"""

from __future__ import annotations

import threading
from typing import Iterator, Tuple

import pyarrow as pa

from ..errors import ConfigError, SchemaError, require
from ..jobs.scoring import log_load
from ..model.device import device_of, for_driver, with_device

__all__ = ["udf", "score", "spark_schema"]

_MODELS: dict = {}  # per Python worker process: location -> Model
_LOCK = threading.Lock()


def _context(spark):
    """The session's SparkContext, or None under Spark Connect (which has none)."""
    try:
        return spark.sparkContext
    except Exception:  # pyspark's Connect session raises its own not-implemented error here
        return None


def _locate(spark, model_uri, cache_dir=None, ship_model: bool | None = None):
    """(the driver's local copy, where executors find it, whether it was shipped): the URI is resolved
    once, so the driver and the executors load the same model version even if an alias moves.
    ship_model: None ships it unless the master is local; False: executors read the path as given."""
    from ..model import uris

    path = uris.resolve(model_uri, cache_dir).resolve()
    context = _context(spark)
    master = context.master if context is not None else (spark.conf.get("spark.master", None) or "")
    if ship_model is False or (ship_model is None and master.startswith("local")):
        return path, str(path), False
    if context is None:
        raise ConfigError(f"under Spark Connect arrowscore cannot ship the model {model_uri!r} to the executors "
                          "(there is no SparkContext.addFile); put the model where every executor can read it (a "
                          "shared file system, /dbfs, a volume) and pass that path with ship_model=False")
    context.addFile(str(path), recursive=True)
    return path, path.name, True


def _task_gpu(model_config: dict | None) -> dict | None:
    """A GPU device pinned to the GPU Spark gave this task (spark.task.resource.gpu.amount), if it gave one."""
    if device_of(model_config) != "cuda":
        return model_config
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    return with_device(model_config, f"cuda:{gpus.addresses[0]}") if gpus and gpus.addresses else model_config


def _worker_model(location: str, shipped: bool, options: dict):
    """The worker's cached Model (loaded on first use in this process)."""
    options = {**options, "model_config": _task_gpu(options.get("model_config"))}
    key = (location, tuple(sorted((k, repr(v)) for k, v in options.items())))
    model = _MODELS.get(key)
    if model is None:
        with _LOCK:
            model = _MODELS.get(key)
            if model is None:
                from ..model import load_model

                path = location
                if shipped:
                    from pyspark import SparkFiles

                    path = SparkFiles.get(location)
                model = load_model(path, feature_columns=options.get("feature_columns"), flavor=options.get("flavor"),
                                   model_config=options.get("model_config"), shared_cpu=True)
                log_load(options.get("load_log"), path)
                _MODELS[key] = model
    return model


def _spark_type(arrow_type: pa.DataType):
    from pyspark.sql.pandas.types import from_arrow_type

    if pa.types.is_fixed_size_list(arrow_type):
        return _spark_type(pa.list_(arrow_type.value_type))
    if pa.types.is_list(arrow_type):
        from pyspark.sql.types import ArrayType

        return ArrayType(_spark_type(arrow_type.value_type))
    return from_arrow_type(arrow_type)


def spark_schema(schema: pa.Schema):
    from pyspark.sql.types import StructField, StructType

    return StructType([StructField(f.name, _spark_type(f.type), True) for f in schema])


def _for_spark(arr: pa.Array) -> pa.Array:
    """Spark has no fixed-size lists: hand them over as plain lists (recursively)."""
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        return pa.ListArray.from_arrays(pa.array(range(0, (len(arr) + 1) * t.list_size, t.list_size), pa.int32()),
                                        _for_spark(arr.flatten()))
    return arr


def _output_schema(model, sample: pa.Table | None = None, what: str = "the input") -> pa.Schema:
    """The model's output schema: its signature's, or what it returns for the first sample rows it can score."""
    from ..jobs.scoring import JobScorer, Where

    if model.output_schema is not None:
        return model.output_schema
    for batch in (sample.to_batches() if sample is not None else []):
        good, _ = JobScorer(model, isolate_rejects=True).score(batch, Where(f"{what} (a sample of its first)", 0))
        if good:
            return good[0].schema
    raise ConfigError("the model has no output signature and no sample rows could be scored, so the Spark result "
                      "type is unknown; pass result_type (udf) or log the model with a signature")


def _plan(df, model, job, what: str) -> tuple[list[str], list[pa.Field], pa.Schema]:
    """(the columns to read: the model's and the kept ones, their Arrow fields, the result schema: kept
    columns then outputs), checked against the DataFrame before any work."""
    missing = [c for c in job.keep if c not in df.columns]
    if missing:
        raise ConfigError(f"keep_columns {missing} are not in {what} (it has {df.columns})")
    absent = [c for c in (model.input_columns or []) if c not in df.columns]
    if absent:
        raise SchemaError(f"the model needs columns {absent} that {what} lacks (it has {df.columns}); "
                          "add or rename those columns")
    columns = list(dict.fromkeys([*(model.input_columns or df.columns), *job.keep]))
    sample = _to_arrow(df.select(*columns).limit(64)) if model.output_schema is None else None
    out = _output_schema(model, sample, what)
    fields = [pa.field(c, _arrow_of(df, c)) for c in columns]
    names = job.output_names(out)
    keep = [f for f in fields if f.name in job.keep]
    return columns, fields, pa.schema(keep + [pa.field(n, f.type) for n, f in zip(names[len(keep):], out)])


# the spark runner's source columns: each row's input file and row in it
FILE, ROW = "__arrowscore_file", "__arrowscore_row"


def _map_function(location: str, shipped: bool, options, load_log, result: pa.Schema, *, sources: bool = False,
                  isolate: bool = False):
    """The mapInArrow function of every whole-DataFrame path: batches -> ``JobScorer`` -> Spark batches.

    sources: batches carry FILE and ROW, so batches are cut by file and errors and dead letters name the
    input file and row; isolate: the result is ``{out: struct, dead: struct}`` (dead letters apart)
    instead of the output columns.
    """
    from ..jobs.scoring import JobScorer, Where

    load = {**options.load_kwargs(), "load_log": load_log}
    out_type = result.field("out").type if isolate else None
    dead_type = result.field("dead").type if isolate else None

    def struct(batch, type_):
        return pa.StructArray.from_arrays([_for_spark(c) for c in batch.columns], fields=list(type_))

    def pieces(batch):
        if not sources:
            return [(batch, Where("spark partition", 0))]
        return _by_file(batch, options.batch_rows)

    def run(batches):
        job = JobScorer.from_options(_worker_model(location, shipped, load), options)
        for batch in batches:
            for data, where in pieces(batch):
                good, rejected = job.score(data, where)
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


def _by_file(batch: pa.RecordBatch, batch_rows: int):
    """(rows of one input file, where they came from) for each run in a batch carrying FILE and ROW."""
    from ..jobs.scoring import Where, file_runs

    codes = batch.column(FILE).dictionary_encode()
    files, rows = codes.indices.to_numpy(zero_copy_only=False), batch.column(ROW).to_numpy(zero_copy_only=False)
    data = batch.drop_columns([FILE, ROW])
    for a, b in file_runs(files, rows, batch_rows):
        yield data.slice(a, b - a), Where(_local(codes.dictionary[files[a]].as_py()), int(rows[a]))


def _local(path: str) -> str:
    """Spark names local files file:/path (URL-quoted); the other runners name them /path."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(path).path) if path.startswith("file:") else path


def udf(spark, model_uri, result_type=None, *, params: dict | None = None, feature_columns=None,
        model_config: dict | None = None, load_log: str | None = None, cache_dir=None, ship_model: bool | None = None):
    """A Spark column function scoring the model: ``predict(col, ...)``, ``predict(struct(...))`` or
    ``predict(array_col)``. One output -> that column's type; several -> a struct."""
    require("pyspark", "spark", "engine.spark.udf")
    from pyspark.sql.types import StructType

    from ..model import load_model

    path, location, shipped = _locate(spark, model_uri, cache_dir, ship_model)
    driver_model = load_model(path, feature_columns=feature_columns, model_config=for_driver(model_config))
    if result_type is None:
        result_type = spark_schema(_output_schema(driver_model))
        if len(result_type.fields) == 1:
            result_type = result_type.fields[0].dataType
    if params:
        params = driver_model.check_params(params)  # a bad param fails here, on the driver, with our message
    names = driver_model.input_columns
    struct_out = isinstance(result_type, StructType) or (isinstance(result_type, str) and result_type.strip().startswith("struct"))
    options = {"feature_columns": feature_columns, "model_config": model_config, "load_log": load_log}

    def score_arrays(arrays: tuple) -> pa.Array:  # the one per-batch path of both UDF kinds
        out = _worker_model(location, shipped, options).score_batch(_arguments(arrays, names), params)
        if struct_out:
            return pa.StructArray.from_arrays([_for_spark(c) for c in out.columns], out.schema.names)
        return _for_spark(out.column(0))

    try:
        from pyspark.sql.functions import arrow_udf
    except ImportError:  # pyspark < 4.1
        return _pandas_udf(score_arrays, result_type, struct_out)

    def predict(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        for arrays in batches:
            yield score_arrays((arrays,) if isinstance(arrays, pa.Array) else arrays)

    return arrow_udf(predict, result_type)


def _pandas_udf(score_arrays, result_type, struct_out: bool):
    """The UDF on pyspark 3.5 and 4.0 (no arrow_udf): an iterator pandas_udf whose batches go to Arrow
    and back around the same ``score_arrays``."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    def to_arrow(value) -> pa.Array:
        if isinstance(value, pd.DataFrame):  # a struct(...) argument
            batch = pa.RecordBatch.from_pandas(value, preserve_index=False)
            return pa.StructArray.from_arrays(batch.columns, batch.schema.names)
        return pa.Array.from_pandas(value)

    def predict(batches: Iterator[Tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
        for values in batches:
            values = values if isinstance(values, tuple) else (values,)
            out = score_arrays(tuple(to_arrow(v) for v in values))
            if struct_out:
                yield pa.RecordBatch.from_struct_array(out).to_pandas()
            else:
                yield out.to_pandas()

    # pyspark reads the UDF kind from the hints; pd is not a module global, so they are objects, not strings
    predict.__annotations__ = {"batches": Iterator[Tuple[pd.Series, ...]], "return": Iterator[pd.Series]}
    return pandas_udf(predict, result_type)


def _arguments(arrays: tuple, names: list[str] | None) -> pa.RecordBatch:
    """UDF arguments as the model's input batch: one struct, or columns named by the signature."""
    if len(arrays) == 1 and pa.types.is_struct(arrays[0].type):
        return pa.RecordBatch.from_struct_array(arrays[0])
    if names and len(names) == len(arrays):
        return pa.RecordBatch.from_arrays(list(arrays), names)
    if names and len(arrays) < len(names):
        raise ConfigError(f"the model takes {len(names)} columns {names}; the UDF got {len(arrays)}: pass them all "
                          "in that order, or one struct(...) of named columns")
    return pa.RecordBatch.from_arrays(list(arrays), [f"_{i}" for i in range(len(arrays))])


def score(df, model_uri, keep_columns=(), *, rename: dict | None = None, params: dict | None = None,
          feature_columns=None, model_config: dict | None = None, load_log: str | None = None, cache_dir=None,
          ship_model: bool | None = None):
    """Score a whole DataFrame through mapInArrow: keep_columns + the model's output columns."""
    require("pyspark", "spark", "engine.spark.score")
    from ..jobs.options import ScoreOptions
    from ..jobs.scoring import JobScorer
    from ..model import load_model

    opts = ScoreOptions(keep_columns=keep_columns, rename=rename or {}, params=params, feature_columns=feature_columns,
                        model_config=model_config)
    path, location, shipped = _locate(df.sparkSession, model_uri, cache_dir, ship_model)
    model = load_model(path, **opts.load_kwargs(driver=True))
    columns, _, result = _plan(df, model, JobScorer.from_options(model, opts), "the DataFrame")
    return df.select(*columns).mapInArrow(_map_function(location, shipped, opts, load_log, result), spark_schema(result))


def _to_arrow(df) -> pa.Table:
    """``DataFrame.toArrow`` (pyspark >= 4.0), or the Arrow collect it is built on (3.5)."""
    if hasattr(df, "toArrow"):
        return df.toArrow()
    return pa.Table.from_batches(df._collect_as_arrow())


def _arrow_of(df, column: str) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(df.schema[column].dataType)
