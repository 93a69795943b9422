"""The Spark runner (its spark-submit entry point is ``engine/spark_job.py``).

    spark-submit --master 'local[2]' "$(python -m engine.spark_job --path)" MODEL_URI INPUT OUTPUT [score options]
    arrowscore score MODEL_URI INPUT OUTPUT --runner spark            # the same from the CLI

Takes every ``arrowscore score`` option; Spark reads the Parquet input, ``engine.spark.score`` scores
it with mapInArrow, and Spark's file committer writes the output (``_temporary/`` until the job
commits, then ``_SUCCESS``).
"""

from __future__ import annotations

import time

from ..errors import ConfigError, require
from ..jobs.options import ScoreOptions, ScoreReport, SparkOptions

__all__ = ["run_spark"]

_MODES = {"error": "errorifexists", "overwrite": "overwrite", "append": "append"}


def run_spark(model_uri, input: str, output: str, options: ScoreOptions,
              spark_opts: SparkOptions = SparkOptions()) -> ScoreReport:
    require("pyspark", "spark", "the spark runner")
    from pyspark.sql import SparkSession

    from . import spark_udf as spark_scoring

    master = spark_opts.master
    if options.on_error != "fail":
        raise ConfigError("the spark runner stops on bad rows (on_error 'fail'); dead letters need the local runner")
    if options.row_group_rows:
        raise ConfigError("the spark runner sizes row groups in bytes: set Spark's parquet.block.size instead of "
                          "row_group_rows")
    builder = SparkSession.builder.appName("arrowscore")
    if master:
        builder = builder.master(master)
    elif SparkSession.getActiveSession() is None and "spark.master" not in _submitted_conf():
        builder = builder.master("local[*]")
    spark = builder.getOrCreate()
    start = time.perf_counter()
    df = spark.read.parquet(input)
    rows = df.count()  # from the Parquet footers
    scored = spark_scoring.score(df, model_uri, keep_columns=options.keep_columns, rename=options.rename,
                                 params=options.params, feature_columns=options.feature_columns,
                                 model_config=options.model_config, load_log=spark_opts.load_log)
    writer = scored.write.mode(_MODES[options.mode]).option("compression", options.compression)
    if options.partition_by:
        writer = writer.partitionBy(options.partition_by)
    writer.parquet(output)
    files = _part_files(spark, output)
    return ScoreReport(rows=rows, rows_scored=rows, dead_lettered=0, seconds=time.perf_counter() - start,
                       output_files=files, input_files=len(df.inputFiles()), runner="spark")


def _submitted_conf() -> dict:
    from pyspark import SparkConf

    return dict(SparkConf().getAll())


def _part_files(spark, output: str) -> list[str]:
    import pyarrow.fs as pafs

    from connectors.parquet import filesystem_for

    fs, path = filesystem_for(output)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

