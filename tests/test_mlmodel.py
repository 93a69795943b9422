"""MLmodel reading, signatures as Arrow schemas, and load errors a user can meet."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import yaml

import engine
from engine import FlavorNotFound, MissingDependency, ModelLoadError
from engine.model.mlmodel import read_mlmodel
from engine.model.signature import Signature
from without import load_error


def test_signature_column_types_to_arrow():
    inputs = [
        {"type": "double", "name": "d", "required": True},
        {"type": "long", "name": "l", "required": False},
        {"type": "string", "name": "s"},
        {"type": "binary", "name": "b"},
        {"type": "datetime", "name": "t"},
        {"type": "array", "items": {"type": "long"}, "name": "arr"},
        {"type": "object", "properties": {"x": {"type": "double", "required": True},
                                          "y": {"type": "string", "required": False}}, "name": "obj"},
        {"type": "map", "values": {"type": "double"}, "name": "mp"},
    ]
    sig = Signature.from_mlmodel({"inputs": json.dumps(inputs), "outputs": '[{"type": "long"}]',
                                  "params": '[{"name": "k", "default": 5, "shape": null, "type": "long"}]'})
    schema = sig.input_schema()
    assert schema.field("d").type == pa.float64() and not schema.field("d").nullable
    assert schema.field("l").nullable
    assert schema.field("t").type == pa.timestamp("ns")
    assert schema.field("arr").type == pa.list_(pa.int64())
    assert schema.field("obj").type == pa.struct([pa.field("x", pa.float64(), False), pa.field("y", pa.string())])
    assert schema.field("mp").type == pa.map_(pa.string(), pa.float64())
    assert sig.output_schema().names == ["prediction"]
    assert sig.params[0].default == 5
    # round trip through the MLmodel encoding
    again = Signature.from_mlmodel(sig.to_mlmodel())
    assert again.input_schema().equals(schema) and again.params == sig.params


def test_tensor_signature_with_variable_dims():
    sig = Signature.from_mlmodel({"inputs": json.dumps([
        {"name": "img", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 3]}},
        {"name": "ids", "type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1, -1]}}])})
    assert sig.is_tensor
    assert sig.input_schema().field("img").type == pa.list_(pa.list_(pa.float32(), 3), 2)
    assert sig.input_schema().field("ids").type == pa.list_(pa.int64())


def _model_dir(tmp_path, mlmodel: dict | str):
    d = tmp_path / "model"
    d.mkdir()
    (d / "MLmodel").write_text(mlmodel if isinstance(mlmodel, str) else yaml.safe_dump(mlmodel))
    return d


def test_unknown_keys_tolerated(tmp_path):
    d = _model_dir(tmp_path, {"flavors": {"python_function": {"loader_module": "x"}}, "brand_new_key": {"a": 1},
                              "resources": None, "env_vars": ["A"]})
    meta = read_mlmodel(d)
    assert meta.raw["brand_new_key"] == {"a": 1} and meta.model_id is None


def test_corrupt_mlmodel(tmp_path):
    d = _model_dir(tmp_path, "flavors: [unclosed\n  : :")
    with pytest.raises(ModelLoadError, match="MLmodel file in .* is not valid YAML"):
        engine.load_model(d)


def test_missing_mlmodel(tmp_path):
    with pytest.raises(ModelLoadError, match="no MLmodel file in .*not an MLflow model directory"):
        engine.load_model(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        engine.load_model(tmp_path / "nope")


def test_bare_model_id_gets_a_hint():
    with pytest.raises(engine.ConfigError, match="write it as 'models:/m-0123"):
        engine.load_model("m-0123456789abcdef0123456789abcdef")


def test_unknown_flavor(tmp_path):
    d = _model_dir(tmp_path, {"flavors": {"h2o": {"data": "model.h2o"}}})
    with pytest.raises(FlavorNotFound, match=r"flavors \['h2o'\] include none arrowscore can load"):
        engine.load_model(d)


def test_forced_flavor_absent(logged_models):
    with pytest.raises(FlavorNotFound, match="the model has no 'onnx' flavor"):
        engine.load_model(logged_models["sklearn_pickle"].uris["path"], flavor="onnx")


def test_forced_python_function_flavor(logged_models):
    case = logged_models["xgboost_booster"]
    model = engine.load_model(case.uris["path"], flavor="python_function")
    assert model.flavor == "python_function"
    np.testing.assert_allclose(model.predict(case.arrow_input).column(0).to_numpy(), case.expected, rtol=1e-6)


def test_missing_file_named_in_mlmodel(tmp_path):
    d = _model_dir(tmp_path, {"flavors": {"onnx": {"data": "model.onnx"}}})
    with pytest.raises(ModelLoadError, match="model.onnx' named in MLmodel is missing"):
        engine.load_model(d)


def test_missing_framework_names_the_extra(logged_models):
    """With xgboost made unimportable in a fresh interpreter, loading says which extra to install."""
    out = load_error(["xgboost"], logged_models["xgboost_booster"].uris["path"])
    assert "MISSING: an XGBoost model needs the Python package 'xgboost'" in out
    assert "pip install 'arrowscore[xgboost]'" in out
    assert issubclass(MissingDependency, ModelLoadError)


def test_python_model_without_mlflow_says_so(logged_models):
    out = load_error(["mlflow"], logged_models["pyfunc_custom"].uris["path"])
    assert "MISSING: a custom PythonModel (its class derives from mlflow.pyfunc.PythonModel) needs" in out
    assert "arrowscore[mlflow]" in out


def test_registry_uri_without_mlflow_names_the_extra():
    out = load_error(["mlflow"], "models:/fraud@champion")
    assert "MISSING: the model URI 'models:/fraud@champion' needs the Python package 'mlflow'" in out


def test_import_engine_stays_light():
    code = ("import sys, engine\n"
            "heavy = [m for m in ('mlflow', 'onnxruntime', 'xgboost', 'lightgbm', 'sklearn', 'pandas', 'ray', "
            "'pyspark', 'torch', 'confluent_kafka') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
