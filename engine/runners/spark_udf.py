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


def _output_schema(model, sample_batch=None) -> pa.Schema:
    if model.output_schema is not None:
        return model.output_schema
    if sample_batch is not None and sample_batch.num_rows:
        return model.score_batch(sample_batch).schema
    raise ConfigError("the model has no output signature, so the Spark result type is unknown; "
                      "pass result_type (udf) or log the model with a signature")


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
    from ..jobs.scoring import JobScorer, Where
    from ..model import load_model

    spark = df.sparkSession
    path, location, shipped = _locate(spark, model_uri, cache_dir)
    model = load_model(path, feature_columns=feature_columns, model_config=model_config)
    opts = ScoreOptions(keep_columns=tuple(keep_columns), rename=rename or {}, params=params)
    missing = [c for c in opts.keep_columns if c not in df.columns]
    if missing:
        raise ConfigError(f"keep_columns {missing} are not in the DataFrame (it has {df.columns})")
    needed = model.input_columns
    absent = [c for c in (needed or []) if c not in df.columns]
    if absent:
        raise SchemaError(f"the model needs columns {absent} that the DataFrame lacks (it has {df.columns}); "
                          "add or rename those columns")
    columns = list(dict.fromkeys([*(needed or [c for c in df.columns]), *opts.keep_columns]))
    source = df.select(*columns)
    sample = None
    if model.output_schema is None:
        sample = source.limit(16).toArrow().to_batches()
        sample = sample[0] if sample else None
    out_schema = _output_schema(model, sample)
    job = JobScorer.from_options(model, opts)
    names = job.output_names(out_schema)
    keep_fields = [pa.field(c, _arrow_of(source, c)) for c in opts.keep_columns]
    result = pa.schema(keep_fields + [pa.field(n, f.type) for n, f in zip(names[len(keep_fields):], out_schema)])
    result_type = spark_schema(result)
    options = {"feature_columns": feature_columns, "model_config": model_config, "load_log": load_log}

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        worker = JobScorer.from_options(_worker_model(location, shipped, options), opts)
        for batch in batches:
            for out in worker.score(batch, Where("spark partition", 0))[0]:
                yield pa.RecordBatch.from_arrays([_for_spark(c) for c in out.columns], out.schema.names)

    return source.mapInArrow(run, result_type)


def _arrow_of(df, column: str) -> pa.DataType:
    from pyspark.sql.pandas.types import to_arrow_type

    return to_arrow_type(df.schema[column].dataType)
