"""Spark: an Arrow UDF for any logged model, and whole-DataFrame scoring through mapInArrow.

    predict = engine.spark.udf(spark, "models:/fraud@champion")
    df.withColumn("score", predict("amount", "age"))
    spark.udf.register("fraud_score", predict)
    engine.spark.score(df, "models:/fraud@champion", keep_columns=["id"])

The driver resolves the model URI once (registry lookups, downloads) and hands executors a local
path (local mode) or ships the directory with ``SparkContext.addFile``. Each Python worker loads the
model once and keeps it for every later task (Spark reuses Python workers); every batch then goes
through ``Model.score_batch``, the same hot path as every other mode. No pandas anywhere: the UDF is
an ``arrow_udf`` (pyspark >= 4.1) and ``score`` a ``mapInArrow``.
"""

from __future__ import annotations

import threading
from typing import Iterator, Tuple

import pyarrow as pa

from ..errors import ConfigError, SchemaError, require
from ..jobs.scoring import log_load

__all__ = ["udf", "score", "spark_schema"]

_MODELS: dict = {}  # per Python worker process: location -> Model
_LOCK = threading.Lock()


def _locate(spark, model_uri, cache_dir=None):
    """(the driver's local copy, where executors find it, whether it was shipped): the URI is resolved
    once, so the driver and the executors load the same model version even if an alias moves."""
    from ..model import uris

    path = uris.resolve(model_uri, cache_dir).resolve()
    if spark.sparkContext.master.startswith("local"):
        return path, str(path), False
    spark.sparkContext.addFile(str(path), recursive=True)
    return path, path.name, True


def _worker_model(location: str, shipped: bool, options: dict):
    """The worker's cached Model (loaded on first use in this process)."""
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
    sample = df.select(*columns).limit(64).toArrow() if model.output_schema is None else None
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
        model_config: dict | None = None, load_log: str | None = None, cache_dir=None):
    """A Spark column function scoring the model: ``predict(col, ...)``, ``predict(struct(...))`` or
    ``predict(array_col)``. One output -> that column's type; several -> a struct."""
    require("pyspark", "spark", "engine.spark.udf")
    from pyspark.sql.functions import arrow_udf
    from pyspark.sql.types import StructType

    from ..model import load_model

    path, location, shipped = _locate(spark, model_uri, cache_dir)
    driver_model = load_model(path, feature_columns=feature_columns, model_config=model_config)
    if result_type is None:
        result_type = spark_schema(_output_schema(driver_model))
        if len(result_type.fields) == 1:
            result_type = result_type.fields[0].dataType
    if params:
        params = driver_model.check_params(params)  # a bad param fails here, on the driver, with our message
    names = driver_model.input_columns
    struct_out = isinstance(result_type, StructType) or (isinstance(result_type, str) and result_type.strip().startswith("struct"))
    options = {"feature_columns": feature_columns, "model_config": model_config, "load_log": load_log}

    def predict(batches: Iterator[Tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        model = _worker_model(location, shipped, options)
        for arrays in batches:
            if isinstance(arrays, pa.Array):
                arrays = (arrays,)
            out = model.score_batch(_arguments(arrays, names), params)
            if struct_out:
                yield pa.StructArray.from_arrays([_for_spark(c) for c in out.columns], out.schema.names)
            else:
                yield _for_spark(out.column(0))

    return arrow_udf(predict, result_type)


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
          feature_columns=None, model_config: dict | None = None, load_log: str | None = None, cache_dir=None):
    """Score a whole DataFrame through mapInArrow: keep_columns + the model's output columns."""
    require("pyspark", "spark", "engine.spark.score")
    from ..jobs.options import ScoreOptions
    from ..jobs.scoring import JobScorer
    from ..model import load_model

    opts = ScoreOptions(keep_columns=keep_columns, rename=rename or {}, params=params, feature_columns=feature_columns,
                        model_config=model_config)
    path, location, shipped = _locate(df.sparkSession, model_uri, cache_dir)
    model = load_model(path, **opts.load_kwargs())
    columns, _, result = _plan(df, model, JobScorer.from_options(model, opts), "the DataFrame")
    return df.select(*columns).mapInArrow(_map_function(location, shipped, opts, load_log, result), spark_schema(result))


def _arrow_of(df, column: str) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(df.schema[column].dataType)
