"""Fixtures: models logged by real MLflow into a sqlite tracking store, and MLflow's own predictions."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from needs import need

ROWS = 40
N_FEATURES = 16


@dataclass
class LoggedModel:
    """One logged model: its URIs in every form, an input, and MLflow's predictions for it."""

    key: str
    uris: dict
    mlflow_input: object          # what we hand mlflow.pyfunc's predict
    arrow_input: pa.Table         # the same rows, as arrow columns
    params: dict | None = None
    expected: object = None       # mlflow.pyfunc.load_model(uri).predict(mlflow_input, params)
    extra_inputs: dict = field(default_factory=dict)


def _features(rng, rows=ROWS, n=N_FEATURES) -> pd.DataFrame:
    return pd.DataFrame({f"f{i}": rng.normal(size=rows) for i in range(n)})


def _log_all(root: Path) -> dict[str, LoggedModel]:
    import lightgbm as lgb
    import mlflow
    import xgboost as xgb
    from mlflow.models import infer_signature
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(7)
    X = _features(rng, 200)
    y = (X["f0"] + X["f1"] > 0).astype(int)
    X_test = _features(rng)
    reqs = ["mlflow"]  # explicit requirements: skips MLflow's slow subprocess inference
    logged: dict[str, tuple] = {}

    with mlflow.start_run() as run:
        for fmt in ("skops", "pickle", "cloudpickle"):
            clf = LogisticRegression(max_iter=200).fit(X.to_numpy(), y)
            info = mlflow.sklearn.log_model(clf, name=f"sk_{fmt}", serialization_format=fmt,
                                            signature=infer_signature(X_test, clf.predict(X_test.to_numpy())),
                                            pip_requirements=reqs)
            logged[f"sklearn_{fmt}"] = (info, X_test, pa.Table.from_pandas(X_test), None)

        # a pipeline on string/int/bool columns that predicts probabilities
        mixed = pd.DataFrame({"color": rng.choice(["red", "green", "blue"], 200),
                              "count": rng.integers(0, 10, 200), "flag": rng.random(200) > 0.5,
                              "x": rng.normal(size=200)})
        mixed_y = ((mixed["color"] == "red") ^ mixed["flag"]).astype(int)
        pipe = Pipeline([("pre", ColumnTransformer([("cat", OneHotEncoder(), ["color"])], remainder="passthrough")),
                         ("clf", LogisticRegression(max_iter=500))]).fit(mixed, mixed_y)
        mixed_test = mixed.iloc[:ROWS].reset_index(drop=True)
        info = mlflow.sklearn.log_model(pipe, name="pipeline", pyfunc_predict_fn="predict_proba",
                                        signature=infer_signature(mixed_test, pipe.predict_proba(mixed_test)),
                                        pip_requirements=reqs)
        logged["sklearn_pipeline"] = (info, mixed_test, pa.Table.from_pandas(mixed_test), None)

        # ONNX MLP with a tensor signature (float32 [-1, 16])
        X32 = X.to_numpy(np.float32)
        mlp = MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, random_state=0).fit(X32, X["f0"] * 2)
        onx = to_onnx(mlp, X32[:1])
        test32 = X_test.to_numpy(np.float32)
        info = mlflow.onnx.log_model(onx, name="onnx_mlp", signature=infer_signature(test32, mlp.predict(test32)),
                                     pip_requirements=reqs)
        scalar_cols = pa.Table.from_pandas(X_test)
        logged["onnx"] = (info, test32, scalar_cols, None)

        booster = xgb.train({"max_depth": 3, "objective": "reg:squarederror"}, xgb.DMatrix(X, label=X["f0"]), 20)
        info = mlflow.xgboost.log_model(booster, name="xgb_booster", model_format="ubj",
                                        signature=infer_signature(X_test, booster.predict(xgb.DMatrix(X_test))),
                                        pip_requirements=reqs)
        logged["xgboost_booster"] = (info, X_test, pa.Table.from_pandas(X_test), None)

        xclf = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(X, y)
        info = mlflow.xgboost.log_model(xclf, name="xgb_classifier", model_format="json",
                                        signature=infer_signature(X_test, xclf.predict(X_test)),
                                        pip_requirements=reqs)
        logged["xgboost_sklearn"] = (info, X_test, pa.Table.from_pandas(X_test), None)

        lbooster = lgb.train({"objective": "regression", "verbose": -1, "num_leaves": 7},
                             lgb.Dataset(X.to_numpy(), label=X["f0"].to_numpy()), 20)
        info = mlflow.lightgbm.log_model(lbooster, name="lgb_booster",
                                         signature=infer_signature(X_test, lbooster.predict(X_test.to_numpy())),
                                         pip_requirements=reqs)
        logged["lightgbm_booster"] = (info, X_test, pa.Table.from_pandas(X_test), None)

        lclf = lgb.LGBMClassifier(n_estimators=15, num_leaves=7, verbose=-1).fit(X, y)
        info = mlflow.lightgbm.log_model(lclf, name="lgb_classifier",
                                         signature=infer_signature(X_test, lclf.predict(X_test)),
                                         pip_requirements=reqs)
        logged["lightgbm_sklearn"] = (info, X_test, pa.Table.from_pandas(X_test), None)

        # custom PythonModel with an artifact and params
        offset_file = root / "offset.txt"
        offset_file.write_text("10.5")

        class OffsetModel(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                self.offset = float(Path(context.artifacts["offset"]).read_text())

            def predict(self, context, model_input, params=None):
                bias = (params or {}).get("bias", 0.0)
                return model_input["a"] * 2 + self.offset + bias

        small = pd.DataFrame({"a": rng.normal(size=ROWS), "b": rng.integers(0, 5, ROWS)})
        sig = infer_signature(small, small["a"] * 2, params={"bias": 0.0})
        info = mlflow.pyfunc.log_model(name="custom", python_model=OffsetModel(),
                                       artifacts={"offset": str(offset_file)}, signature=sig, pip_requirements=reqs)
        logged["pyfunc_custom"] = (info, small, pa.Table.from_pandas(small), {"bias": 1.25})

        # models-from-code with code_paths and model_config
        code_dir = root / "code_src"
        code_dir.mkdir()
        (code_dir / "scaling.py").write_text("def scale(values, k):\n    return values * k\n")
        script = root / "model_code.py"
        script.write_text(textwrap.dedent("""
            import mlflow
            from mlflow.models import set_model
            from scaling import scale

            class CodeModel(mlflow.pyfunc.PythonModel):
                def load_context(self, context):
                    self.k = context.model_config["k"]

                def predict(self, context, model_input, params=None):
                    return scale(model_input["x"], self.k)

            set_model(CodeModel())
        """))
        xs = pd.DataFrame({"x": rng.normal(size=ROWS)})
        sys.path.insert(0, str(code_dir))  # the script imports its helper at logging time too
        try:
            info = mlflow.pyfunc.log_model(name="from_code", python_model=str(script),
                                           code_paths=[str(code_dir / "scaling.py")], model_config={"k": 3},
                                           signature=infer_signature(xs, xs["x"] * 3), pip_requirements=reqs)
        finally:
            sys.path.remove(str(code_dir))
            sys.modules.pop("scaling", None)
        logged["pyfunc_code"] = (info, xs, pa.Table.from_pandas(xs), None)

    client = mlflow.MlflowClient()
    out = {}
    for key, (info, mlflow_input, arrow_input, params) in logged.items():
        version = mlflow.register_model(info.model_uri, f"reg_{key}")
        client.set_registered_model_alias(f"reg_{key}", "champion", version.version)
        uris = {
            "path": info.model_uri,  # replaced below by the local artifact path
            "runs": f"runs:/{run.info.run_id}/{info.name}",
            "model_id": f"models:/{info.model_id}",
            "version": f"models:/reg_{key}/{version.version}",
            "alias": f"models:/reg_{key}@champion",
        }
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{info.model_id}"))
        uris["path"] = str(local)
        uris["file"] = local.as_uri()
        expected = mlflow.pyfunc.load_model(info.model_uri).predict(mlflow_input, params=params)
        out[key] = LoggedModel(key, uris, mlflow_input, arrow_input, params, expected)
    return out


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """A real MLflow tracking store (sqlite) with a file artifact root, set as the tracking URI."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    old = os.getcwd()
    os.chdir(root)  # MLflow writes ./mlruns for artifacts next to the sqlite store
    try:
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_experiment("arrowscore-tests")
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="session")
def logged_models(mlflow_store) -> dict[str, LoggedModel]:
    old = os.getcwd()
    os.chdir(mlflow_store)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _log_all(mlflow_store)
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """A real Apache Kafka broker (KRaft, 127.0.0.1:19192), started once and stopped at the end."""
    need("confluent_kafka", "the Kafka broker fixture")
    sys.path.insert(0, str(ROOT / "scripts" / "kafka"))
    import broker

    info = broker.start(tmp_path_factory.mktemp("kafka"), port=19192)
    try:
        yield info["bootstrap"]
    finally:
        broker.stop(Path(info["dir"]))


BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = 6391, 8265


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """`ray start --head` on loopback (token auth off: loopback only), joined by this process, stopped at the
    end; the Ray runner finds it initialized and uses it."""
    ray = need("ray", "the Ray head fixture")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--port", str(GCS_PORT),
             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(DASHBOARD_PORT),
             "--include-dashboard", "true", "--disable-usage-stats", "--object-store-memory", str(1 << 30)]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=f"127.0.0.1:{GCS_PORT}", logging_level="WARNING")
    try:
        yield {"address": f"127.0.0.1:{GCS_PORT}", "dashboard": f"http://127.0.0.1:{DASHBOARD_PORT}", "env": env}
    finally:
        ray.shutdown()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def spark():
    """Spark in local mode, with the Kafka connector's jars (from Maven Central) on its classpath."""
    need("pyspark", "the Spark fixture")
    from pyspark.sql import SparkSession

    sys.path.insert(0, str(ROOT / "scripts" / "spark_kafka"))
    import jars

    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers must run this interpreter (pyarrow, engine)
    session = (SparkSession.builder.master("local[2]").appName("arrowscore-tests")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.session.timeZone", "UTC").config("spark.ui.showConsoleProgress", "false")
               .config("spark.jars", ",".join(jars.jars())).getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API: moto's server on 127.0.0.1, as (pyarrow S3FileSystem, port). moto keeps its
    buckets per process, so each test creates and uses a bucket of its own name."""
    import pyarrow.fs as pafs

    need("moto", "the S3 tests")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        _, port = server.get_host_and_port()
        yield pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                                allow_bucket_creation=True), port
    finally:
        server.stop()
