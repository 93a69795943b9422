"""Spark in local mode: the Arrow UDF, mapInArrow scoring, spark-submit, streaming; against MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from needs import need  # noqa: E402

pyspark = need("pyspark", "the Spark suite")
ROOT = Path(__file__).resolve().parents[1]

import contract  # noqa: E402
import engine  # noqa: E402
import engine.spark  # noqa: E402
from compare import assert_same_predictions  # noqa: E402

MODELS = ["sklearn_skops", "sklearn_pickle", "sklearn_cloudpickle", "sklearn_pipeline", "onnx", "xgboost_booster",
          "xgboost_sklearn", "lightgbm_booster", "lightgbm_sklearn", "pyfunc_custom", "pyfunc_code"]


def _frame(spark, case):
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows)))
    return spark.createDataFrame(table.to_pandas()).repartition(3)


def _arrow(df) -> pa.Table:
    from engine.runners.spark_udf import _to_arrow  # toArrow is pyspark >= 4.0; the tests run on 3.5 too

    return _to_arrow(df)


def _sorted(df) -> pa.Table:
    return _arrow(df).sort_by("id")


@pytest.mark.parametrize("key", MODELS)
def test_score_equals_mlflow(spark, logged_models, key):
    case = logged_models[key]
    out = _sorted(engine.spark.score(_frame(spark, case), case.uris["alias"], keep_columns=["id"], params=case.params))
    assert out.num_rows == case.arrow_input.num_rows
    assert_same_predictions(out.drop_columns(["id"]), case.expected)


@pytest.mark.parametrize("key", MODELS)
def test_udf_equals_mlflow(spark, logged_models, key):
    from pyspark.sql import functions as F

    case = logged_models[key]
    predict = engine.spark.udf(spark, case.uris["path"], params=case.params)
    df = _frame(spark, case)
    features = case.arrow_input.column_names
    out = _sorted(df.select("id", predict(*features).alias("prediction")))
    assert_same_predictions(out.drop_columns(["id"]), case.expected)
    if key != "onnx":  # a struct names the columns, in any order
        by_struct = _sorted(df.select("id", predict(F.struct(*reversed(features))).alias("prediction")))
        assert_same_predictions(by_struct.drop_columns(["id"]), case.expected)


def test_onnx_tensor_model_from_an_array_column(spark, logged_models):
    """MLflow's spark_udf cannot feed a tensor-signature model; one array column works here too."""
    from pyspark.sql import functions as F

    case = logged_models["onnx"]
    predict = engine.spark.udf(spark, case.uris["path"])
    df = _frame(spark, case)
    packed = df.select("id", F.array(*case.arrow_input.column_names).alias("x"))
    out = _sorted(packed.select("id", predict("x").alias("prediction")))
    assert_same_predictions(out.drop_columns(["id"]), case.expected)


def test_udf_in_spark_sql(spark, logged_models):
    case = logged_models["xgboost_booster"]
    spark.udf.register("xgb_score", engine.spark.udf(spark, case.uris["path"]))
    _frame(spark, case).createOrReplaceTempView("features")
    cols = ", ".join(case.arrow_input.column_names)
    out = _sorted(spark.sql(f"SELECT id, xgb_score({cols}) AS prediction FROM features"))
    assert_same_predictions(out.drop_columns(["id"]), case.expected)


def test_model_loaded_once_per_python_worker(spark, logged_models, tmp_path):
    case = logged_models["lightgbm_booster"]
    log = tmp_path / "loads.txt"
    df = _frame(spark, case).repartition(8)
    scored = engine.spark.score(df, case.uris["path"], keep_columns=["id"], load_log=str(log))
    for _ in range(2):  # 2 actions x 8 tasks
        assert scored.count() == case.arrow_input.num_rows
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert pids, "no worker loaded the model"
    assert len(pids) == len(set(pids)), f"a Python worker loaded the model twice: {pids}"
    assert len(pids) < 16  # 16 tasks ran; MLflow's spark_udf loads once per task in local mode


def test_bad_input_shows_our_message(spark, logged_models):
    case = logged_models["xgboost_booster"]
    df = _frame(spark, case).drop("f3")
    with pytest.raises(engine.SchemaError, match=r"needs columns \['f3'\]"):
        engine.spark.score(df, case.uris["path"])
    wrong = _frame(spark, case).withColumn("f2", pyspark.sql.functions.lit("text"))
    with pytest.raises(Exception, match=r"Schema(Error|Mismatch): .*column 'f2' is string, the model's signature wants double"):
        engine.spark.score(wrong, case.uris["path"]).collect()


def test_structured_streaming_file_source(spark, logged_models, tmp_path):
    case = logged_models["onnx"]
    src = tmp_path / "stream_in"
    src.mkdir()
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows)))
    pq.write_table(table.slice(0, 20), src / "a.parquet")
    pq.write_table(table.slice(20), src / "b.parquet")
    schema = spark.read.parquet(str(src)).schema
    stream = spark.readStream.schema(schema).parquet(str(src))
    predict = engine.spark.udf(spark, case.uris["path"])
    scored = stream.select("id", predict(*case.arrow_input.column_names).alias("prediction"))
    query = (scored.writeStream.format("parquet").option("path", str(tmp_path / "stream_out"))
             .option("checkpointLocation", str(tmp_path / "ckpt")).trigger(availableNow=True).start())
    query.awaitTermination(timeout=180)
    out = pq.read_table(tmp_path / "stream_out").sort_by("id")
    assert_same_predictions(out.drop_columns(["id"]), case.expected)


def test_score_runner_and_spark_submit(spark, logged_models, tmp_path):
    case = logged_models["xgboost_sklearn"]
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows)))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "part.parquet")
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="spark", keep_columns=["id"])
    assert report.rows == report.rows_scored == table.num_rows and report.runner == "spark"
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert_same_predictions(out.drop_columns(["id"]), case.expected)
    assert (tmp_path / "out" / "_SUCCESS").exists()

    entry = subprocess.run([sys.executable, "-m", "engine.spark_job", "--path"], capture_output=True, text=True,
                           check=True).stdout.strip()
    submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    run = subprocess.run([submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false", entry,
                          case.uris["path"], str(tmp_path / "in"), str(tmp_path / "submitted"), "--keep-columns", "id"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"scored {table.num_rows:,} of {table.num_rows:,} rows" in run.stdout and "runner spark" in run.stdout
    out = pq.read_table(tmp_path / "submitted").sort_by("id")
    assert_same_predictions(out.drop_columns(["id"]), case.expected)


def test_output_contract(spark, logged_models, tmp_path):
    """The local runner's contract (tests/contract.py), but part files as Spark's tasks write them (docs/spark.md);
    rows_scored is counted from the written files, not assumed."""
    case = logged_models["xgboost_booster"]
    contract.three_files(case, tmp_path / "in")
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="spark", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(tmp_path / "dead.parquet"), batch_rows=8)
    contract.check(report, tmp_path / "out", tmp_path / "dead.parquet", files_by_spark=True)
    with pytest.raises(engine.ConnectorError, match="is not empty"):  # refused before anything is scored
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="spark")
    with pytest.raises(engine.ConfigError, match="output .* and input .* overlap"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "in", runner="spark", mode="overwrite")
    with pytest.raises(engine.ConnectorError, match="input '.*nowhere' does not exist"):
        engine.score(case.uris["path"], tmp_path / "nowhere", tmp_path / "o2", runner="spark")
    with pytest.raises(engine.ConfigError, match=r"partition_by column 'f1' is not in the output .*--keep-columns"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "o3", runner="spark", partition_by="f1")
    with pytest.raises(engine.SchemaError, match=contract.FAIL_MESSAGE):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "failed", runner="spark", batch_rows=8)


def test_dead_letters_with_a_list_output(spark, logged_models, tmp_path):
    """predict_proba (a list per row) through the dead-letter path, whose structs Spark must accept."""
    case = logged_models["sklearn_pipeline"]
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows)))
    x = [None if i == 3 else v for i, v in enumerate(table.column("x").to_pylist())]
    table = table.set_column(table.schema.get_field_index("x"), "x", pa.array(x, pa.float64()))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    args = {"keep_columns": ["id"], "on_error": "dead-letter"}
    ours = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="spark",
                        dead_letter=str(tmp_path / "d1.parquet"), **args)
    local = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "local", dead_letter=str(tmp_path / "d2.parquet"),
                         **args)
    assert ours.rows_scored == local.rows_scored == table.num_rows - 1 and ours.dead_lettered == 1
    got, want = pq.read_table(tmp_path / "out"), pq.read_table(tmp_path / "local")
    assert got.column("id").to_pylist() == want.column("id").to_pylist()  # one task: input order
    np.testing.assert_allclose(got.column("prediction").to_pylist(), want.column("prediction").to_pylist())
    assert pq.read_table(tmp_path / "d1.parquet").column("id").to_pylist() == [3]


def test_cli_spark_runner_without_pyspark_python(logged_models, tmp_path):
    """The README's `arrowscore score ... --runner spark` as typed: no PYSPARK_PYTHON, so the local workers
    must get this interpreter (Spark's default `python3` on the PATH need not have arrowscore)."""
    case = logged_models["xgboost_booster"]
    (tmp_path / "in").mkdir()
    pq.write_table(case.arrow_input, tmp_path / "in" / "a.parquet")
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    run = subprocess.run([sys.executable, "-m", "engine", "score", case.uris["path"], str(tmp_path / "in"),
                          str(tmp_path / "out"), "--runner", "spark", "--spark-master", "local[1]", "--no-progress"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_predictions(pq.read_table(tmp_path / "out").select(["prediction"]), case.expected)


def test_cli_spark_master_and_conf(logged_models, tmp_path):
    """--spark-master and --spark-conf reach the session arrowscore starts: its event log says so."""
    case = logged_models["xgboost_booster"]
    (tmp_path / "in").mkdir()
    pq.write_table(case.arrow_input, tmp_path / "in" / "a.parquet")
    (tmp_path / "events").mkdir()
    cli = [sys.executable, "-m", "engine", "score", case.uris["path"], str(tmp_path / "in"), str(tmp_path / "out"),
           "--runner", "spark", "--spark-master", "local[1]", "--spark-conf", "spark.eventLog.enabled=true",
           "--spark-conf", "spark.eventLog.compress=false",
           "--spark-conf", f"spark.eventLog.dir={(tmp_path / 'events').as_uri()}", "--spark-conf",
           "spark.app.name=cli-conf-test", "--no-progress", "--json"]
    run = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["runner"] == "spark"
    assert_same_predictions(pq.read_table(tmp_path / "out").select(["prediction"]), case.expected)
    (app,) = list((tmp_path / "events").iterdir())  # one application: a file, or a folder of them (event log v2)
    text = "".join(f.read_text() for f in [app, *app.rglob("*")] if f.is_file())
    assert '"spark.master":"local[1]"' in text and '"spark.app.name":"cli-conf-test"' in text
    bad = subprocess.run([sys.executable, "-m", "engine", "score", case.uris["path"], str(tmp_path / "in"),
                          str(tmp_path / "out2"), "--runner", "spark", "--spark-conf", "spark.executor.memory"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "--spark-conf takes KEY=VALUE, got 'spark.executor.memory'" in bad.stderr
    alone = subprocess.run([sys.executable, "-m", "engine", "score", case.uris["path"], str(tmp_path / "in"),
                            str(tmp_path / "out2"), "--spark-conf", "a=b"], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 2 and "add --runner spark" in alone.stderr


def test_conf_cannot_change_a_running_session(spark, logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    (tmp_path / "in").mkdir()
    pq.write_table(case.arrow_input, tmp_path / "in" / "a.parquet")
    with pytest.raises(engine.ConfigError, match=r"a Spark session is already running in this process, so the "
                                                 r"settings \['spark.executor.memory'\] cannot be applied"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="spark",
                     runner_options={"conf": {"spark.executor.memory": "2g"}})
    assert not (tmp_path / "out").exists()


def test_success_marker_comes_last(spark, logged_models, tmp_path, monkeypatch):
    """A kill after Spark wrote the output but before the dead letters were committed left `_SUCCESS` over an
    output whose rejected rows were gone. As in the other runners, `_SUCCESS` is now the last thing written:
    a crash at the dead-letter commit (injected here) leaves no `_SUCCESS`."""
    from connectors.parquet import DeadLetterFile

    case = logged_models["xgboost_booster"]
    contract.three_files(case, tmp_path / "in")

    def crash(self):
        raise OSError("killed here")

    monkeypatch.setattr(DeadLetterFile, "commit", crash)
    with pytest.raises(OSError, match="killed here"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="spark", keep_columns=["id"],
                     on_error="dead-letter", dead_letter=str(tmp_path / "dead.parquet"))
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    monkeypatch.undo()
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "again", runner="spark", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(tmp_path / "dead.parquet"))
    assert (tmp_path / "again" / "_SUCCESS").exists() and report.dead_lettered == 3


def _plus(df):
    return df["x"] * 2.0 + df["y"]


def test_files_spark_would_read_as_one_schema_are_refused_by_name(spark, tmp_path):
    """Spark reads every file with one file's schema: a missing column became nulls, other types were
    cast. The runner refuses such inputs by file name before Spark reads them (issue 11, item 4)."""
    signature = pa.schema([pa.field("x", pa.float64(), False), pa.field("y", pa.float64(), False)])
    model = engine.save_model(tmp_path / "model", _plus, signature=signature)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"x": [1.0], "y": [1.0]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"x": [2.0]}), tmp_path / "in" / "b.parquet")
    with pytest.raises(engine.SchemaError, match=r"b.parquet' lacks the column\(s\) \['y'\] that the model needs"):
        engine.score(model, tmp_path / "in", tmp_path / "out", runner="spark")
    pq.write_table(pa.table({"x": pa.array([2.0], pa.float32()), "y": [1.0]}), tmp_path / "in" / "b.parquet")
    with pytest.raises(engine.SchemaError, match=r"b.parquet' holds column 'x' as float, '.*a.parquet' as double"):
        engine.score(model, tmp_path / "in", tmp_path / "out", runner="spark")
    assert not (tmp_path / "out").exists()


CONNECT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.sql import SparkSession
import engine.spark
from engine.runners.spark_udf import _to_arrow

spark = SparkSession.builder.remote("local[2]").getOrCreate()
assert type(spark).__module__.startswith("pyspark.sql.connect"), type(spark)
model, rows = sys.argv[2], json.loads(sys.argv[3])
names = list(rows[0])
df = spark.createDataFrame([[r[n] for n in names] for r in rows], ", ".join(f"{n} double" for n in names))
scored = _to_arrow(engine.spark.score(df, model)).column(0).to_pylist()
shared = _to_arrow(engine.spark.score(df, model, ship_model=False)).column(0).to_pylist()
predict = engine.spark.udf(spark, model)
by_udf = _to_arrow(df.select(predict(*names).alias("p"))).column(0).to_pylist()
print(json.dumps({"score": scored, "shared": shared, "udf": by_udf}))
spark.stop()
"""


def test_spark_connect_session_scores_without_a_spark_context(logged_models):
    """Spark Connect (here its local server, `remote("local")`): no SparkContext on the client; score and
    the UDF read the model where the driver has it, or a shared path with ship_model=False."""
    case = logged_models["xgboost_booster"]
    rows = case.arrow_input.to_pylist()
    done = subprocess.run([sys.executable, "-c", CONNECT, str(ROOT), case.uris["path"], json.dumps(rows)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-4000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for how in ("score", "shared", "udf"):
        np.testing.assert_allclose(got[how], np.asarray(case.expected).ravel(), rtol=1e-5, err_msg=how)
