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


def _required(path) -> list[bool]:
    """The required flags MLflow itself reads from the saved signature."""
    return [c.required for c in mlflow.models.Model.load(str(path)).signature.inputs.inputs]


def test_schema_columns_are_required_unless_named_optional(tmp_path):
    schema = pa.schema([("x", pa.float64()), ("y", pa.float64())])  # pyarrow fields are nullable by default
    path = engine.save_model(tmp_path / "required", lambda df: df["x"], signature=schema)
    assert _required(path) == [True, True]
    with pytest.raises(engine.SchemaError, match=r"the model needs columns \['y'\] that the input lacks"):
        engine.load_model(path).predict({"x": [1.0]})
    path = engine.save_model(tmp_path / "optional", lambda df: df["x"], signature=schema, optional=["y"])
    assert _required(path) == [True, False]
    assert engine.load_model(path).predict({"x": [1.0]}).column("prediction").to_pylist() == [1.0]


def test_optional_names_input_columns_of_a_schema(tmp_path):
    schema = pa.schema([("x", pa.float64())])
    with pytest.raises(engine.ConfigError, match=r"optional names \['z'\], which the input schema lacks \(it has \['x'\]\)"):
        engine.save_model(tmp_path / "m", lambda df: df["x"], signature=schema, optional=["z"])
    with pytest.raises(engine.ConfigError, match="optional= applies to a pyarrow schema"):
        engine.save_model(tmp_path / "m", lambda df: df["x"], signature=engine.Signature.infer(schema), optional=["x"])
    with pytest.raises(engine.ConfigError, match="optional must be a list of column names"):
        engine.save_model(tmp_path / "m", lambda df: df["x"], signature=schema, optional="x")
    assert not (tmp_path / "m").exists()
