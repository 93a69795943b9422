"""Models written by engine.save_model load and predict the same in MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import engine
from compare import assert_same_predictions


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    return pd.DataFrame({f"x{i}": rng.normal(size=30) for i in range(4)})


def test_sklearn_round_trip(tmp_path, data):
    from sklearn.ensemble import RandomForestClassifier

    y = (data["x0"] > 0).astype(int)
    clf = RandomForestClassifier(n_estimators=5, random_state=0).fit(data.to_numpy(), y)
    schema = pa.Schema.from_pandas(data, preserve_index=False)
    path = engine.save_model(tmp_path / "rf", clf, signature=schema, predict_fn="predict_proba")
    ours = engine.load_model(path).predict(data)
    theirs = mlflow.pyfunc.load_model(str(path)).predict(data)
    assert ours.schema.field("prediction").type == pa.list_(pa.float64(), 2)
    assert_same_predictions(ours, theirs)


def test_onnx_round_trip(tmp_path, data):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    X = data.to_numpy(np.float32)
    onx = to_onnx(LinearRegression().fit(X, data["x1"]), X[:1])
    path = engine.save_model(tmp_path / "lr", onx)
    ours = engine.load_model(path).predict(data)  # float64 columns feed the float32 tensor
    theirs = mlflow.pyfunc.load_model(str(path)).predict(X)
    assert_same_predictions(ours, theirs)


def test_callable_round_trip(tmp_path, data):
    def score(df):
        return df["x0"] * 10 - df["x3"]

    path = engine.save_model(tmp_path / "fn", score, signature=pa.Schema.from_pandas(data, preserve_index=False))
    ours = engine.load_model(path).predict(data)
    theirs = mlflow.pyfunc.load_model(str(path)).predict(data)
    assert_same_predictions(ours, theirs)


def test_save_refuses_existing_path_and_unknown_objects(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(engine.ConfigError, match="already exists; choose another path or pass overwrite=True"):
        engine.save_model(tmp_path / "taken", lambda df: df)
    with pytest.raises(engine.ConfigError, match="cannot save a int"):
        engine.save_model(tmp_path / "bad", 42)
    assert not (tmp_path / "bad").exists()
