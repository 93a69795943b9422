"""scikit-learn tree models as a server loads them: small batches through the compiled path.

Models are logged by real MLflow (skops, as MLflow writes them by default); predictions compared with
``mlflow.pyfunc``'s."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import engine
from engine.errors import ScoringError
from flavors import compiled

sklearn = pytest.importorskip("sklearn")
from sklearn.ensemble import (ExtraTreesRegressor, GradientBoostingClassifier,  # noqa: E402
                              HistGradientBoostingRegressor, RandomForestClassifier, RandomForestRegressor)
from sklearn.tree import DecisionTreeRegressor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRUSTED = ["sklearn.tree._tree.Tree", "sklearn._loss.link.Interval", "sklearn._loss.link.LogitLink",
           "sklearn._loss.loss.HalfBinomialLoss", "sklearn.dummy.DummyClassifier"]


def _data(nans: bool = False):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    if nans:
        X[::11, 2] = np.nan
    y = X[:, 0] * 2 + np.sin(X[:, 1])
    return X, y


def _labels(y):
    return np.array(["low", "mid", "high"])[(y > 0).astype(int) + (y > 1.5)]


CASES = {
    "forest": lambda X, y: (RandomForestRegressor(20, max_depth=8, random_state=0).fit(X, y), "predict"),
    "forest_trained_with_nans": lambda X, y: (RandomForestRegressor(20, random_state=0).fit(X, y), "predict"),
    "extra_trees": lambda X, y: (ExtraTreesRegressor(20, max_depth=8, random_state=0).fit(X, y), "predict"),
    "multi_output": lambda X, y: (RandomForestRegressor(10, max_depth=6, random_state=0).fit(X, np.stack([y, -y], 1)),
                                  "predict"),
    "tree": lambda X, y: (DecisionTreeRegressor(random_state=0).fit(X, y), "predict"),
    "string_labels": lambda X, y: (RandomForestClassifier(20, random_state=0).fit(X, _labels(y)), "predict"),
    "probabilities": lambda X, y: (RandomForestClassifier(20, random_state=0).fit(X, _labels(y)), "predict_proba"),
    "boosting_binary": lambda X, y: (GradientBoostingClassifier(n_estimators=30, random_state=0).fit(X, y > 0),
                                     "predict"),
}


def _save(model, method: str, X, path):
    mlflow.sklearn.save_model(model, str(path), pyfunc_predict_fn=method, skops_trusted_types=TRUSTED,
                              pip_requirements=["scikit-learn"],  # no requirement inference: seconds a model
                              signature=mlflow.models.infer_signature(X, getattr(model, method)(X[:5])))
    return path


def _column(table, method: str) -> np.ndarray:
    if pa.types.is_list(table.schema.field(0).type) or pa.types.is_fixed_size_list(table.schema.field(0).type):
        # one list column: a row's probabilities, or a multi-output model's values
        return np.array(table.column(0).to_pylist(), dtype=np.float64)
    return table.column(0).to_numpy(zero_copy_only=False)


@pytest.mark.parametrize("case", list(CASES))
def test_small_batches_take_the_compiled_path_and_answer_as_mlflow(case, tmp_path, capfd):
    """Loaded as a server loads it, a scikit-learn forest answers small batches through ONNX Runtime (built in
    the background, checked against the library, used below the measured crossover): MLflow's predictions,
    within flavors.compiled's stated tolerance (float32 leaf values), labels exactly; rows holding NaN go to
    the library, so they answer exactly as MLflow does."""
    X, y = _data(nans=case == "forest_trained_with_nans")
    model, method = CASES[case](X, y)
    path = _save(model, method, X, tmp_path / case)
    X_nan = X.copy()
    X_nan[::7, 3] = np.nan  # NaN where none was seen in training: scikit-learn's own routing
    frame = pd.DataFrame(X_nan)
    expected = np.asarray(mlflow.pyfunc.load_model(str(path)).predict(frame)) if case != "boosting_binary" else None
    served = engine.load_model(path, small_batches=True)
    assert served.flavor == "sklearn"
    assert compiled.wait(120)
    path_ = served.predictor.predict.small_batches
    assert path_ is not None and path_.crossover >= 1, "the compiled path was not taken"
    rows = X if case == "boosting_binary" else X_nan  # gradient boosting refuses NaN
    if expected is None:
        expected = np.asarray(mlflow.pyfunc.load_model(str(path)).predict(pd.DataFrame(rows)))
    for i in (0, 1, 7, 14, 15, 399):
        one = _column(served.predict(rows[i:i + 1]), method)
        if expected.dtype.kind in "fc":
            if np.isnan(rows[i]).any():  # the library answered
                np.testing.assert_array_equal(one, expected[i:i + 1])
            np.testing.assert_allclose(one, expected[i:i + 1], rtol=compiled.RTOL, atol=compiled.ATOL)
        else:
            np.testing.assert_array_equal(one, expected[i:i + 1].astype(one.dtype))
    whole = _column(served.predict(rows), method)
    if method == "predict_proba":  # float32 sums, clipped: never -1.2e-7 or 1.0000001
        assert whole.min() >= 0.0 and whole.max() <= 1.0
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(whole, expected, rtol=compiled.RTOL, atol=compiled.ATOL)
    else:
        np.testing.assert_array_equal(whole, expected.astype(whole.dtype))
    assert "onnxruntime" not in capfd.readouterr().err  # no warning per call (e.g. a declared shape it widens)


def test_values_the_library_refuses_are_refused_as_a_batch_job_refuses_them(tmp_path):
    """A value too large for float32 would be infinity in the ONNX forest; scikit-learn refuses it, so the
    served model does too (the library answers batches holding non-finite values)."""
    X, y = _data()
    path = _save(*CASES["forest"](X, y), X, tmp_path / "m")
    served = engine.load_model(path, small_batches=True)
    assert compiled.wait(120) and served.predictor.predict.small_batches.crossover >= 1
    bad = X[:2].copy()
    bad[1, 0] = 1e39
    for model in (served, engine.load_model(path)):
        with pytest.raises(ScoringError, match="too large|infinity"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.predict(bad)
        assert not [w for w in caught if w.filename.endswith("compiled.py")]  # scikit-learn's own warning only


def test_a_forest_fitted_on_one_class_is_left_to_scikit_learn(tmp_path):
    """ONNX Runtime aborts the whole process (a C++ assertion) on skl2onnx's graph of a one-class forest:
    such a model never reaches the converter. Run in a child process, since an abort would end pytest."""
    X, _ = _data()
    path = tmp_path / "one"
    mlflow.sklearn.save_model(RandomForestClassifier(5, random_state=0).fit(X, np.full(len(X), "only")), str(path),
                              serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    script = ("import engine, numpy as np; from flavors import compiled\n"
              f"m = engine.load_model({str(path)!r}, small_batches=True)\n"
              "assert compiled.wait(60)\n"
              "print(m.predict(np.zeros((2, 6))).column(0).to_pylist())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['only', 'only']"


def test_the_compiled_path_is_built_only_for_servers_of_tree_models(tmp_path):
    X, y = _data()
    forest, _ = CASES["forest"](X, y)
    path = _save(forest, "predict", X, tmp_path / "forest")
    assert not hasattr(engine.load_model(path).predictor.predict, "small_batches")  # a batch job
    off = engine.load_model(path, small_batches=True, model_config={"compiled": False})
    assert not hasattr(off.predictor.predict, "small_batches")
    # a model skl2onnx does not convert as a float32 tree ensemble
    hist = HistGradientBoostingRegressor(max_iter=5).fit(X, y)
    mlflow.sklearn.save_model(hist, str(tmp_path / "hist"), serialization_format="cloudpickle",
                              pip_requirements=["scikit-learn"])
    loaded = engine.load_model(tmp_path / "hist", small_batches=True)
    assert not hasattr(loaded.predictor.predict, "small_batches")
    np.testing.assert_array_equal(loaded.predict(X).column(0).to_numpy(), hist.predict(X))
    assert compiled.wait(120)


def test_a_forest_fitted_on_named_columns_takes_it_when_the_signature_is_its_columns(tmp_path):
    """Fitted on a DataFrame and logged with a signature of those columns (numbers), the forest is fed a
    matrix on the compiled path: MLflow's answers. Logged with its columns in another order, it keeps
    the DataFrame (scikit-learn's own error), never other numbers."""
    X, y = _data()
    frame = pd.DataFrame(X, columns=list("abcdef"))
    frame["c"] = (frame["c"] * 10).round().astype("int64")  # an integer column: cast as scikit-learn casts it
    frame.loc[::13, "d"] = np.nan  # NaN rows: the library, fed a DataFrame
    named = RandomForestRegressor(10, max_depth=6, random_state=0).fit(frame, y)
    mlflow.sklearn.save_model(named, str(tmp_path / "named"), skops_trusted_types=TRUSTED,
                              pip_requirements=["scikit-learn"], signature=mlflow.models.infer_signature(frame, y))
    expected = mlflow.pyfunc.load_model(str(tmp_path / "named")).predict(frame)
    served = engine.load_model(tmp_path / "named", small_batches=True)
    assert served.predictor.input_kind == "matrix"
    assert compiled.wait(120) and served.predictor.predict.small_batches.crossover >= 1
    for i in (0, 1, 5, 13, 399):
        np.testing.assert_allclose(served.predict(frame.iloc[i:i + 1]).column(0).to_numpy(), expected[i:i + 1],
                                   rtol=compiled.RTOL, atol=compiled.ATOL)
    np.testing.assert_allclose(served.predict(frame).column(0).to_numpy(), expected,
                               rtol=compiled.RTOL, atol=compiled.ATOL)
    # the same model logged with its columns in another order: scikit-learn's own error
    swapped = frame[list("bacdef")]
    mlflow.sklearn.save_model(named, str(tmp_path / "swapped"), skops_trusted_types=TRUSTED,
                              pip_requirements=["scikit-learn"], signature=mlflow.models.infer_signature(swapped, y))
    served = engine.load_model(tmp_path / "swapped", small_batches=True)
    assert not hasattr(served.predictor.predict, "small_batches")
    with pytest.raises(ScoringError, match="same order"):
        served.predict(swapped.iloc[:1])


def test_string_labels_must_match_exactly():
    """ONNX Runtime gives string labels as an object array; they are compared exactly, never as numbers."""
    labels = np.array(["low", "mid", "low", "high"])
    assert compiled._adapter([labels.astype(object)], labels) is not None
    assert compiled._adapter([labels[::-1].astype(object)], labels) is None
