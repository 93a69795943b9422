"""LightGBM models as a server loads them: small batches through an ONNX forest with LightGBM's own
double thresholds (``flavors.lightgbm._to_onnx``), checked against MLflow's predictions on rows that
sit exactly on every threshold, one double either side of it, within 1e-35 of zero, and NaN."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

import engine
from flavors import compiled

lgb = pytest.importorskip("lightgbm")


def _data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, 5))
    X[::9, 2] = np.nan
    y = X[:, 0] * 2 + np.sin(X[:, 1])
    X[::4, 0] = X[1::4, 1] = 0.0  # exact zeros: LightGBM splits at +-1e-35 around them
    return X, y


def _thresholds(booster) -> list[tuple[int, float]]:
    found, stack = [], [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            found.append((node["split_feature"], node["threshold"]))
            stack += [node["left_child"], node["right_child"]]
    return found


def _hard_rows(booster, width: int) -> np.ndarray:
    """Rows on each threshold and one double either side; values within 1e-35 of zero; NaN; random."""
    found = _thresholds(booster)
    rows = np.zeros((3 * len(found) + 4, width))
    for i, (feature, value) in enumerate(found):
        rows[3 * i:3 * i + 3, feature] = [value, np.nextafter(value, np.inf), np.nextafter(value, -np.inf)]
    rows[-4:] = [[5e-36] * width, [-5e-36] * width, [np.nan] * width, [1e-30] * width]
    random = np.random.default_rng(2).normal(size=(300, width)) * 3
    random[::5, 1] = np.nan
    return np.vstack([rows, random])


def _multiclass(X, y):
    return lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1},
                     lgb.Dataset(X, label=(y > 0).astype(int) + (y > 1.5)), 30)


CASES = {
    "regression": lambda X, y: lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(X, label=y), 40),
    "binary": lambda X, y: lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, label=y > 0), 40),
    "multiclass": _multiclass,
    "no_missing_values": lambda X, y: lgb.train({"objective": "regression", "use_missing": False, "verbose": -1},
                                                lgb.Dataset(X, label=y), 40),
    "sklearn_api": lambda X, y: lgb.LGBMRegressor(n_estimators=40, verbose=-1).fit(X, y),
}


@pytest.mark.parametrize("case", list(CASES))
def test_small_batches_take_the_compiled_path_and_answer_as_mlflow(case, tmp_path):
    X, y = _data()
    model = CASES[case](X, y)
    booster = model if isinstance(model, lgb.Booster) else model.booster_
    mlflow.lightgbm.save_model(model, str(tmp_path / case), pip_requirements=["lightgbm"])
    rows = _hard_rows(booster, X.shape[1])
    expected = np.asarray(mlflow.pyfunc.load_model(str(tmp_path / case)).predict(pd.DataFrame(rows)))
    served = engine.load_model(tmp_path / case, small_batches=True)
    assert compiled.wait(120)
    path = served.predictor.predict.small_batches
    assert path.crossover >= 1, "the compiled path was not taken"
    size = min(path.crossover, 64)
    got = np.vstack([np.asarray(path(rows[i:i + size])).reshape(min(size, len(rows) - i), -1)
                     for i in range(0, len(rows), size)])
    np.testing.assert_allclose(got, expected.reshape(len(rows), -1), rtol=compiled.RTOL, atol=compiled.ATOL)
    one = served.predict(rows[:1]).column(0).to_pylist()  # through the scorer, one row
    np.testing.assert_allclose(np.asarray(one, dtype=np.float64).reshape(1, -1), expected[:1].reshape(1, -1),
                               rtol=compiled.RTOL, atol=compiled.ATOL)


@pytest.mark.parametrize("params", [{"zero_as_missing": True}, {"linear_tree": True}],
                         ids=["zero_as_missing", "linear"])
def test_models_it_cannot_reproduce_are_left_to_lightgbm(params, tmp_path):
    X, y = _data()
    X = np.nan_to_num(X)  # linear trees take no NaN in training
    booster = lgb.train({"objective": "regression", "verbose": -1, **params}, lgb.Dataset(X, label=y), 10)
    mlflow.lightgbm.save_model(booster, str(tmp_path / "m"), pip_requirements=["lightgbm"])
    served = engine.load_model(tmp_path / "m", small_batches=True)
    assert compiled.wait(120)
    assert served.predictor.predict.small_batches.crossover == 0
    np.testing.assert_array_equal(served.predict(X[:3]).column(0).to_numpy(), booster.predict(X[:3]))


def test_categorical_splits_are_left_to_lightgbm(tmp_path):
    X, y = _data()
    X[:, 3] = np.random.default_rng(3).integers(0, 5, len(X))
    y = y + X[:, 3]
    booster = lgb.train({"objective": "regression", "verbose": -1},
                        lgb.Dataset(X, label=y, categorical_feature=[3]), 10)
    mlflow.lightgbm.save_model(booster, str(tmp_path / "m"), pip_requirements=["lightgbm"])
    served = engine.load_model(tmp_path / "m", small_batches=True)
    assert compiled.wait(120)
    assert served.predictor.predict.small_batches.crossover == 0
    np.testing.assert_array_equal(served.predict(X[:3]).column(0).to_numpy(), booster.predict(X[:3]))
