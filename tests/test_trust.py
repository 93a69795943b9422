"""Code inside a model file: `arrowscore info` never runs it, loading says it does, skops refuses what it distrusts.

The models are written by real MLflow; the pickle one then has its model file replaced by a pickle that
touches a marker file when it is unpickled, as a tampered model would run anything.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

import engine


class _TouchThenLoad:
    """Unpickles as ``inner`` after touching ``marker``: any code could run there instead."""

    def __init__(self, marker: Path, inner: bytes):
        self.marker, self.inner = marker, inner

    def __reduce__(self):
        code = f"(__import__('pathlib').Path({str(self.marker)!r}).touch(), __import__('pickle').loads({self.inner!r}))[1]"
        return eval, (code,)


@pytest.fixture
def tampered(tmp_path):
    """An MLflow sklearn model (pickle format) whose model.pkl touches ``marker`` when unpickled."""
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    X = pd.DataFrame({"x": [0.0, 1.0, 2.0]})
    fitted = LinearRegression().fit(X.to_numpy(), [1.0, 3.0, 5.0])
    path = tmp_path / "model"
    mlflow.sklearn.save_model(fitted, str(path), serialization_format="pickle",
                              signature=infer_signature(X, fitted.predict(X.to_numpy())), pip_requirements=["mlflow"])
    marker = tmp_path / "unpickled"
    (path / "model.pkl").write_bytes(pickle.dumps(_TouchThenLoad(marker, pickle.dumps(fitted))))
    return path, marker


def test_info_reads_the_model_without_unpickling_it(tampered):
    path, marker = tampered
    out = subprocess.run([sys.executable, "-m", "engine", "info", str(path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["flavor"] == "sklearn" and doc["flavors"] == ["python_function", "sklearn"]
    assert doc["inputs"] == ["x: double"] and doc["outputs"] == ["prediction: double"]
    assert not marker.exists(), "arrowscore info ran code from the model file"


def test_loading_a_pickle_logs_once_that_it_runs_code_from_the_model_file(tampered, caplog):
    path, marker = tampered
    with caplog.at_level(logging.WARNING, logger="arrowscore"):
        model = engine.load_model(path)
        engine.load_model(path)
    assert marker.exists()  # loading does run it: that is what the log line says
    lines = [r.getMessage() for r in caplog.records if "runs code" in r.getMessage()]
    assert lines == [f"loading {path / 'model.pkl'} (pickle) runs code stored in the model file; "
                     "load models only from sources you trust"]
    assert model.predict({"x": [3.0]}).column("prediction").to_pylist() == pytest.approx([7.0])


def test_skops_types_the_model_does_not_trust_are_a_model_load_error(tmp_path):
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.array([[1.0], [4.0], [9.0]])
    # math.sqrt is not among the types skops trusts by default; it is never called when predicting
    step = FunctionTransformer(inverse_func=math.sqrt, check_inverse=False)
    pipe = make_pipeline(step, LinearRegression()).fit(X, [1.0, 2.0, 3.0])
    path = tmp_path / "model"
    mlflow.sklearn.save_model(pipe, str(path), serialization_format="skops", skops_trusted_types=["math.sqrt"],
                              pip_requirements=["mlflow"])
    assert engine.load_model(path).predict(X).num_rows == 3  # the author trusted math.sqrt
    doc = yaml.safe_load((path / "MLmodel").read_text())
    doc["flavors"]["sklearn"]["skops_trusted_types"] = None
    (path / "MLmodel").write_text(yaml.safe_dump(doc))
    with pytest.raises(engine.ModelLoadError, match=r"holds types skops does not trust: \['math.sqrt'\]; .*"
                                                    r"skops_trusted_types"):
        engine.load_model(path)
