"""XGBoost's sklearn-API models are scored through the booster itself (no per-call config context), with
exactly the outputs MLflow's pyfunc gives; models where that would differ keep the wrapper's predict."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

import engine

xgb = pytest.importorskip("xgboost")

from flavors.xgboost import _direct  # noqa: E402


def _data(classes: int | None):
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(400, 6)), columns=[f"f{i}" for i in range(6)])
    X.iloc[::11, 2] = np.nan
    if classes is None:
        return X, X["f0"] * 2 + np.sin(X["f1"])
    return X, (np.digitize(X["f0"], np.linspace(-1, 1, classes - 1)) if classes > 2 else (X["f0"] > 0)).astype(int)


def _early_stopped():
    X, y = _data(None)
    model = xgb.XGBRegressor(n_estimators=200, max_depth=3, learning_rate=0.3, early_stopping_rounds=3)
    return model.fit(X[:300], y[:300], eval_set=[(X[300:], y[300:])], verbose=False), X


CASES = {
    "regressor": lambda: (xgb.XGBRegressor(n_estimators=20, max_depth=4).fit(*_data(None)), _data(None)[0]),
    "binary": lambda: (xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(*_data(2)), _data(2)[0]),
    "multiclass": lambda: (xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(*_data(4)), _data(4)[0]),
    "softmax": lambda: (xgb.XGBClassifier(n_estimators=10, objective="multi:softmax").fit(*_data(3)), _data(3)[0]),
    "early_stopped": _early_stopped,
}


@pytest.mark.parametrize("case", list(CASES))
def test_sklearn_api_models_go_through_the_booster_and_answer_as_mlflow(case, tmp_path):
    model, X = CASES[case]()
    path = tmp_path / case
    mlflow.xgboost.save_model(model, str(path), signature=mlflow.models.infer_signature(X, model.predict(X)))
    loaded = xgb.XGBClassifier() if isinstance(model, xgb.XGBClassifier) else xgb.XGBRegressor()
    loaded.load_model(str(path / yaml.safe_load((path / "MLmodel").read_text())["flavors"]["xgboost"]["data"]))
    assert _direct(loaded, xgb) is not None, "the booster path was not taken"
    expected = np.asarray(mlflow.pyfunc.load_model(str(path)).predict(X)).ravel()
    got = engine.load_model(path).predict(X).column(0).to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(got, expected)
    for i in (0, 11, 399):  # one row at a time, as a server's lone requests
        one = engine.load_model(path).predict(X.iloc[i:i + 1]).column(0).to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(one, expected[i:i + 1])


def test_models_the_booster_would_answer_differently_keep_the_wrapper():
    X, y = _data(None)
    linear = xgb.XGBRegressor(booster="gblinear", n_estimators=5).fit(X.fillna(0), y)
    assert _direct(linear, xgb) is None
    forest = xgb.XGBRFRegressor(n_estimators=5).fit(X, y)  # a subclass: not assumed to predict as its parent
    assert _direct(forest, xgb) is None


# ---- the compiled small-batch path (servers) --------------------------------------------------------
def _booster_case():
    X, y = _data(None)
    return xgb.train({"max_depth": 5}, xgb.DMatrix(X, label=y), 40), X


@pytest.mark.parametrize("case", ["booster", "regressor", "binary", "multiclass", "softmax", "early_stopped"])
def test_small_batches_take_the_compiled_path_and_answer_as_mlflow(case, tmp_path):
    """Loaded as a server loads it, a forest answers small batches through ONNX Runtime (built in the
    background, checked against the library, used below the measured crossover): MLflow's predictions,
    within flavors.compiled's stated tolerance (float32 sums in another order), labels exactly."""
    from flavors import compiled

    model, X = _booster_case() if case == "booster" else CASES[case]()
    path = tmp_path / case
    out = model.predict(xgb.DMatrix(X)) if case == "booster" else model.predict(X)
    mlflow.xgboost.save_model(model, str(path), signature=mlflow.models.infer_signature(X, out))
    expected = np.asarray(mlflow.pyfunc.load_model(str(path)).predict(X)).ravel()
    served = engine.load_model(path, small_batches=True)
    assert compiled.wait(60)
    path_ = served.predictor.predict.small_batches
    assert path_ is not None and path_.crossover >= 1, "the compiled path was not taken"
    for i in (0, 11, 14, 399):  # NaNs on rows 0, 11 ... (every 11th row, column 2)
        one = served.predict(X.iloc[i:i + 1]).column(0).to_numpy(zero_copy_only=False)
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(one, expected[i:i + 1])
        else:
            np.testing.assert_allclose(one, expected[i:i + 1], rtol=compiled.RTOL, atol=compiled.ATOL)
    # batches above the crossover go to the library: the same values as a batch job's
    whole = served.predict(X).column(0).to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(whole, expected, rtol=compiled.RTOL, atol=compiled.ATOL)


def test_the_compiled_path_can_be_turned_off_and_is_not_built_for_batch_jobs(tmp_path):
    from flavors import compiled

    model, X = _booster_case()
    mlflow.xgboost.save_model(model, str(tmp_path / "m"))
    assert engine.load_model(tmp_path / "m").predictor.predict.small_batches is None
    off = engine.load_model(tmp_path / "m", small_batches=True, model_config={"compiled": False})
    assert off.predictor.predict.small_batches is None
    assert compiled.wait(60)


def test_a_path_that_answers_otherwise_is_not_used():
    """The check that guards the compiled path: an ONNX model that answers differently is refused."""
    from flavors import compiled

    X = compiled.sample_rows(4)
    good = np.nan_to_num(X).sum(axis=1).astype(np.float32)
    assert compiled._adapter([good.reshape(-1, 1)], good) is not None
    assert compiled._adapter([good.reshape(-1, 1) + 1e-3], good) is None
    assert compiled._adapter([np.stack([1 - good, good], axis=1)], good) is not None  # P(class 1) column
    labels = (good > 0).astype(np.int64)
    assert compiled._adapter([labels[::-1].copy()], labels) is None


def test_a_gpu_device_for_a_flavor_that_ignores_it_is_said(tmp_path, caplog):
    import logging

    model, X = _booster_case()
    mlflow.xgboost.save_model(model, str(tmp_path / "m"))
    with caplog.at_level(logging.WARNING, logger="arrowscore.model"):
        loaded = engine.load_model(tmp_path / "m", model_config={"device": "cuda"})
    assert any("device cuda asked for, but xgboost models run where their library puts them" in r.getMessage()
               for r in caplog.records)
    assert loaded.predict(X.iloc[1:4]).num_rows == 3
