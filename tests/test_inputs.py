"""Signature enforcement on Arrow: safe casts, clear errors for every bad input a user can meet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import engine
from engine import ConfigError, SchemaError, ScoringError


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A sklearn regression on long 'a', double 'b' and optional double 'c', saved with engine.save_model."""
    from sklearn.linear_model import LinearRegression

    X = np.random.default_rng(0).normal(size=(20, 3))
    model = LinearRegression(fit_intercept=False).fit(X, X @ [1.0, 2.0, 3.0])  # exact: prediction = a + 2b + 3c
    schema = pa.schema([("a", pa.int64()), ("b", pa.float64()), ("c", pa.float64())])
    path = engine.save_model(tmp_path_factory.mktemp("m") / "linear", model, optional=["c"],
                             signature=(schema, pa.schema([pa.field("prediction", pa.float64(), False)])))
    return engine.load_model(path)


def _batch(**cols):
    return pa.record_batch({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in cols.items()})


def test_extra_columns_ignored_and_order_free(linear):
    out = linear.score_batch(_batch(zzz=["x", "y"], c=[1.0, 2.0], b=[1.0, 1.0], a=[1, 2], id=[7, 8]))
    np.testing.assert_allclose(out.column("prediction").to_numpy(), [1 + 2 + 3, 2 + 2 + 6])


def test_safe_casts_int32_and_float32(linear):
    out = linear.score_batch(_batch(a=pa.array([1, 2], pa.int32()), b=pa.array([1.0, 1.0], pa.float32()),
                                    c=pa.array([1, 2], pa.int16())))
    np.testing.assert_allclose(out.column(0).to_numpy(), [6.0, 10.0])


@pytest.fixture(scope="module")
def nan_aware(tmp_path_factory):
    """A model that takes NaN natively (HistGradientBoosting), with optional column 'c'."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    X[::7, 1] = np.nan
    model = HistGradientBoostingRegressor(max_iter=20).fit(X, X[:, 0])
    schema = pa.schema([("b", pa.float64()), ("c", pa.float64())])
    path = engine.save_model(tmp_path_factory.mktemp("m") / "hgb", model, signature=schema, optional=["c"])
    return engine.load_model(path), model


def test_optional_column_may_be_missing(nan_aware):
    loaded, raw = nan_aware
    out = loaded.score_batch(_batch(b=[0.5, -1.0]))  # 'c' absent: fed as missing values
    np.testing.assert_allclose(out.column(0).to_numpy(), raw.predict(np.array([[0.5, np.nan], [-1.0, np.nan]])))


def test_null_in_optional_column_is_missing(nan_aware):
    loaded, raw = nan_aware
    out = loaded.score_batch(_batch(b=[0.5, -1.0], c=[None, 2.0]))
    np.testing.assert_allclose(out.column(0).to_numpy(), raw.predict(np.array([[0.5, np.nan], [-1.0, 2.0]])))


def test_missing_required_column(linear):
    with pytest.raises(SchemaError, match=r"needs columns \['b'\] that the input lacks"):
        linear.score_batch(_batch(a=[1], c=[1.0]))


def test_wrong_type(linear):
    with pytest.raises(SchemaError, match=r"column 'b' is string, the model's signature wants double"):
        linear.score_batch(_batch(a=[1], b=["1.0"]))


def test_null_in_required_column(linear):
    with pytest.raises(SchemaError, match=r"\['b'\] hold nulls"):
        linear.score_batch(_batch(a=[1, 2], b=[1.0, None], c=[1.0, 1.0]))


def test_nan_in_integer_column_gets_hint(linear):
    with pytest.raises(SchemaError, match=r"column 'a' is double.*wants int64.*fill the NaNs"):
        linear.score_batch(_batch(a=[1.0, float("nan")], b=[1.0, 1.0]))


def test_nan_in_float_column_is_a_value(nan_aware, linear):
    loaded, raw = nan_aware
    out = loaded.score_batch(_batch(b=[float("nan")], c=[1.0]))
    np.testing.assert_allclose(out.column(0).to_numpy(), raw.predict(np.array([[np.nan, 1.0]])))
    # a model that cannot take NaN says so through ScoringError, naming the model's own complaint
    with pytest.raises(ScoringError, match="sklearn model raised ValueError: Input X contains NaN"):
        linear.score_batch(_batch(a=[1], b=[float("nan")], c=[0.0]))


def test_narrowing_float_is_refused(tmp_path):
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.eye(2), [1.0, 2.0])
    schema = pa.schema([pa.field("x", pa.float32(), False), pa.field("y", pa.float32(), False)])
    loaded = engine.load_model(engine.save_model(tmp_path / "m", model, signature=schema))
    with pytest.raises(SchemaError, match="narrowing floats loses precision"):
        loaded.score_batch(_batch(x=[1.0], y=[2.0]))


def test_int64_to_double_only_when_exact(linear):
    ok = linear.score_batch(_batch(a=[2 ** 53], b=pa.array([1], pa.int64()), c=[0.0]))
    assert ok.num_rows == 1
    with pytest.raises(SchemaError, match=r"column 'b' cannot become double without changing its values"):
        linear.score_batch(_batch(a=[1], b=pa.array([2 ** 53 + 1], pa.int64()), c=[0.0]))


def test_empty_batch_keeps_output_schema(linear):
    out = linear.score_batch(pa.record_batch({"a": pa.array([], pa.int64()), "b": pa.array([], pa.float64())}))
    assert out.num_rows == 0 and out.schema.names == ["prediction"]


def test_empty_batch_without_signature(tmp_path):
    model = engine.load_model(engine.save_model(tmp_path / "fn", lambda df: df["x"] + 1))
    with pytest.raises(SchemaError, match="cannot score an empty batch: the model has no output signature"):
        model.score_batch(pa.record_batch({"x": pa.array([], pa.float64())}))
    model.score_batch(_batch(x=[1.0]))  # once it has scored, the output schema is known
    assert model.score_batch(pa.record_batch({"x": pa.array([], pa.float64())})).num_rows == 0


def test_model_error_is_scoring_error_with_cause(tmp_path):
    def broken(df):
        raise RuntimeError("boom in user code")

    model = engine.load_model(engine.save_model(tmp_path / "fn", broken))
    with pytest.raises(ScoringError, match="python_function model raised RuntimeError: boom in user code") as info:
        model.predict({"x": [1.0]})
    assert isinstance(info.value.__cause__, RuntimeError)


def test_wrong_row_count_is_scoring_error(tmp_path):
    model = engine.load_model(engine.save_model(tmp_path / "fn", lambda df: df["x"].iloc[:1]))
    with pytest.raises(ScoringError, match="returned 1 rows for 3 input rows"):
        model.predict({"x": [1.0, 2.0, 3.0]})


def test_unsigned_matrix_rejects_strings(tmp_path):
    from sklearn.linear_model import LinearRegression

    model = engine.load_model(engine.save_model(tmp_path / "m", LinearRegression().fit(np.eye(2), [1.0, 2.0])))
    with pytest.raises(SchemaError, match=r"columns \['s \(string\)'\] are not numeric"):
        model.predict({"x": [1.0], "s": ["a"]})


def test_tensor_model_with_wrong_column_count(logged_models):
    model = engine.load_model(logged_models["onnx"].uris["path"])
    table = logged_models["onnx"].arrow_input
    with pytest.raises(SchemaError, match=r"float32 tensor of 16 values per row; the input has 17 columns"):
        model.predict(table.append_column("id", pa.array(range(table.num_rows))))
    # feature_columns picks the tensor's columns out of a wider batch
    picked = engine.load_model(logged_models["onnx"].uris["path"], feature_columns=table.column_names)
    wide = table.append_column("id", pa.array(range(table.num_rows)))
    np.testing.assert_allclose(picked.predict(wide).column(0).to_numpy(), model.predict(table).column(0).to_numpy())


def test_tensor_float_to_int_refused(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    X = np.eye(3, dtype=np.int64)
    onx = to_onnx(LinearRegression().fit(X, [1.0, 2.0, 3.0]), X[:1])
    model = engine.load_model(engine.save_model(tmp_path / "m", onx))
    with pytest.raises(SchemaError, match="float -> integer is not a safe cast"):
        model.predict(np.eye(3))


def test_params(logged_models):
    case = logged_models["pyfunc_custom"]
    model = engine.load_model(case.uris["path"])
    base = model.predict(case.arrow_input).column(0).to_numpy()
    shifted = model.predict(case.arrow_input, params={"bias": 2}).column(0).to_numpy()  # int -> double param
    np.testing.assert_allclose(shifted - base, 2.0)
    with pytest.raises(ConfigError, match=r"unknown params \['bais'\]; the model takes \['bias'\]"):
        model.predict(case.arrow_input, params={"bais": 1.0})
    with pytest.raises(ConfigError, match=r"param 'bias' must be a number \(double\), got 'x'"):
        model.predict(case.arrow_input, params={"bias": "x"})


def test_params_on_model_without_params_schema(linear):
    with pytest.raises(ConfigError, match="the model takes no params"):
        linear.predict({"a": [1], "b": [1.0]}, params={"k": 1})


def test_unsupported_input_type(linear):
    with pytest.raises(ConfigError, match="cannot score input of type set"):
        linear.predict({1, 2})
