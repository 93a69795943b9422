"""PyTorch models score when torch is installed (an optional extra; skipped where torch is absent)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not in the test environment (not in the dev extra)")
mlflow = pytest.importorskip("mlflow")

import engine  # noqa: E402


def test_pytorch_model_matches_mlflow(tmp_path):

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    path = tmp_path / "m"
    mlflow.pytorch.save_model(net, str(path), input_example=X)
    ours = engine.load_model(path)
    assert ours.flavor == "pytorch"
    expected = np.asarray(mlflow.pyfunc.load_model(str(path)).predict(X)).reshape(-1)
    np.testing.assert_allclose(ours.predict(X).column(0).to_numpy(), expected, rtol=1e-6)
