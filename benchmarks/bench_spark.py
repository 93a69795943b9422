"""Spark benchmark (local[2]): arrowscore's udf and score against mlflow.pyfunc.spark_udf and a bare mapInArrow.

N rows x 16 floats from Parquet, predictions written back to Parquet. Every job form runs once to warm
its Python workers (start-up reported apart), then the best of two runs counts.
  xgboost: arrowscore score (mapInArrow) / udf, bare mapInArrow calling inplace_predict,
           mlflow spark_udf(env_manager="local") with the input's natural partitions and with 200
  onnx (tensor signature from skl2onnx): arrowscore score / udf against a bare mapInArrow
           (MLflow's spark_udf cannot feed a tensor model from scalar columns)

    python benchmarks/bench_spark.py                 # 1M rows
    python benchmarks/bench_spark.py --rows 50000    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine  # noqa: E402
import engine.spark  # noqa: E402
from bench_parquet import NAMES, build_models, write_input  # noqa: E402


def bare_map_in_arrow(df, model_dir: str, flavor: str):
    """What a user writes by hand: a module-level model cache and the raw library call on numpy."""
    import pyarrow as pa

    def run(batches):
        model = _bare_models.get(model_dir)
        if model is None:
            if flavor == "xgboost":
                import xgboost as xgb

                booster = xgb.Booster()
                booster.load_model(os.path.join(model_dir, "model.ubj"))
                model = _bare_models[model_dir] = booster.inplace_predict
            else:
                import onnxruntime as ort

                session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=["CPUExecutionProvider"])
                name = session.get_inputs()[0].name
                model = _bare_models[model_dir] = lambda x: session.run(None, {name: x.astype(np.float32)})[0]
        for batch in batches:
            X = np.column_stack([c.to_numpy() for c in batch.columns])
            yield pa.RecordBatch.from_arrays([pa.array(np.asarray(model(X)).reshape(-1))], ["prediction"])

    return df.mapInArrow(run, "prediction float")


_bare_models: dict = {}


def timed(spark, make_df, out: str) -> float:
    """Best of two runs after one warm-up run (which starts and loads this job form's Python workers)."""
    make_df().write.mode("overwrite").parquet(out)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        make_df().write.mode("overwrite").parquet(out)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    import mlflow
    from pyspark.sql import SparkSession

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_input(root / "in", args.rows, files=2)
        models = {k: str(v) for k, v in build_models(root / "models").items()}
        start = time.perf_counter()
        spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
                 .config("spark.driver.memory", "4g").config("spark.ui.showConsoleProgress", "false").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        df = spark.read.parquet(str(root / "in"))
        df.selectExpr("sum(f0)").collect()  # start the JVM side and read once
        session_s = time.perf_counter() - start
        parts = df.rdd.getNumPartitions()
        many = df.repartition(200).cache()  # 200 partitions, shuffled and cached before any timing
        many.count()
        out = str(root / "out")
        rows = args.rows
        warm = time.perf_counter()
        engine.spark.score(df.limit(1000), models["xgboost"]).collect()  # start the Python workers
        warm_s = time.perf_counter() - warm

        xgb_udf = engine.spark.udf(spark, models["xgboost"])
        onnx_udf = engine.spark.udf(spark, models["onnx"])
        mlflow_udf = mlflow.pyfunc.spark_udf(spark, models["xgboost"], env_manager="local")
        figures = {
            "xgboost score": timed(spark, lambda: engine.spark.score(df, models["xgboost"]), out),
            "xgboost udf": timed(spark, lambda: df.select(xgb_udf(*NAMES).alias("prediction")), out),
            "xgboost bare mapInArrow": timed(spark, lambda: bare_map_in_arrow(df.select(*NAMES), models["xgboost"],
                                                                                "xgboost"), out),
            "xgboost mlflow spark_udf": timed(spark, lambda: df.select(mlflow_udf(*NAMES).alias("prediction")), out),
            "xgboost mlflow spark_udf 200 partitions": timed(
                spark, lambda: many.select(mlflow_udf(*NAMES).alias("prediction")), out),
            "xgboost score 200 partitions": timed(spark, lambda: engine.spark.score(many, models["xgboost"]), out),
            "onnx score": timed(spark, lambda: engine.spark.score(df, models["onnx"]), out),
            "onnx udf": timed(spark, lambda: df.select(onnx_udf(*NAMES).alias("prediction")), out),
            "onnx bare mapInArrow": timed(spark, lambda: bare_map_in_arrow(df.select(*NAMES), models["onnx"], "onnx"),
                                          out),
        }
        spark.stop()
    rate = {k: rows / v for k, v in figures.items()}
    print(f"Spark local[2], {rows:,} rows x 16 doubles, {parts} input partitions; session start {session_s:.1f} s, "
          f"Python worker warm-up {warm_s:.1f} s (apart from the figures)")
    print("| job | seconds | rows/s |\n|---|---|---|")
    for k, v in figures.items():
        print(f"| {k} | {v:.2f} | {rate[k]:,.0f} |")
    ratios = {
        "xgboost score / mlflow spark_udf": rate["xgboost score"] / rate["xgboost mlflow spark_udf"],
        "xgboost udf / mlflow spark_udf": rate["xgboost udf"] / rate["xgboost mlflow spark_udf"],
        "xgboost score / mlflow spark_udf, 200 partitions":
            rate["xgboost score 200 partitions"] / rate["xgboost mlflow spark_udf 200 partitions"],
        "xgboost score / bare mapInArrow": rate["xgboost score"] / rate["xgboost bare mapInArrow"],
        "xgboost udf / bare mapInArrow": rate["xgboost udf"] / rate["xgboost bare mapInArrow"],
        "onnx score / bare mapInArrow": rate["onnx score"] / rate["onnx bare mapInArrow"],
        "onnx udf / bare mapInArrow": rate["onnx udf"] / rate["onnx bare mapInArrow"],
    }
    print("| ratio | value |\n|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    print("goals: vs mlflow spark_udf >= 1.7 (natural partitions); vs bare mapInArrow >= 0.95 (score, udf, onnx)")
    results = {"seconds": figures, "ratios": ratios, "session_s": session_s, "warm_s": warm_s, "partitions": parts}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
