"""``save_model``: write an MLflow model directory that arrowscore and MLflow both load.

>>> import tempfile, numpy as np, pyarrow as pa
>>> from sklearn.linear_model import LinearRegression
>>> fitted = LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([1.0, 3.0]))
>>> path = save_model(tempfile.mkdtemp() + "/model", fitted, signature=pa.schema([("x", pa.float64())]))
>>> from engine import load_model
>>> round(load_model(path).predict({"x": [2.0]}).column("prediction")[0].as_py(), 6)
5.0
"""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import yaml

from ..errors import ConfigError
from .mlmodel import write_mlmodel
from .signature import Signature

__all__ = ["save_model"]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _signature(signature, optional) -> Signature | None:
    if isinstance(optional, str) or not isinstance(optional, (list, tuple, set, frozenset)):
        raise ConfigError(f"optional must be a list of column names, got {optional!r}")
    if optional and not isinstance(signature, (pa.Schema, tuple)):
        raise ConfigError("optional= applies to a pyarrow schema; an engine Signature or MLflow ModelSignature "
                          "carries its own required flags")
    if signature is None or isinstance(signature, Signature):
        return signature
    if isinstance(signature, pa.Schema):
        return Signature.infer(signature, optional=optional)
    if isinstance(signature, tuple) and len(signature) == 2:
        return Signature.infer(*signature, optional=optional)
    if hasattr(signature, "to_dict"):  # an MLflow ModelSignature
        return Signature.from_mlmodel(signature.to_dict())
    raise ConfigError(f"signature must be an engine Signature, a pyarrow Schema, (input, output) schemas, "
                      f"or an MLflow ModelSignature; got {type(signature).__name__}")


def _kind(obj) -> str:
    module = type(obj).__module__
    if module.startswith("onnx") or isinstance(obj, (bytes, bytearray)):
        return "onnx"
    if module.startswith("sklearn") or (hasattr(obj, "fit") and hasattr(obj, "get_params")):
        return "sklearn"
    if callable(obj):
        return "callable"
    raise ConfigError(f"cannot save a {type(obj).__name__}: pass an ONNX model, a scikit-learn estimator, "
                      "or a Python callable that takes a pandas DataFrame")


def _pyfunc(loader: str, **keys) -> dict:
    return {"loader_module": loader, "python_version": platform.python_version(),
            "env": {"virtualenv": "python_env.yaml"}, **keys}


def _write_onnx(path: Path, obj) -> tuple[dict, list[str]]:
    data = bytes(obj) if isinstance(obj, (bytes, bytearray)) else obj.SerializeToString()
    (path / "model.onnx").write_bytes(data)
    flavors = {
        "onnx": {"data": "model.onnx", "onnx_version": _version("onnx"), "providers": ["CPUExecutionProvider"],
                 "onnx_session_options": None, "code": None},
        "python_function": _pyfunc("mlflow.onnx", data="model.onnx"),
    }
    return flavors, ["onnxruntime", "onnx", "numpy"]


def _write_sklearn(path: Path, obj, predict_fn: str) -> tuple[dict, list[str]]:
    import cloudpickle

    with open(path / "model.pkl", "wb") as fh:
        cloudpickle.dump(obj, fh)
    flavors = {
        "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle",
                    "sklearn_version": _version("scikit-learn"), "skops_trusted_types": None, "code": None},
        "python_function": _pyfunc("mlflow.sklearn", model_path="model.pkl", predict_fn=predict_fn),
    }
    return flavors, ["scikit-learn", "cloudpickle", "numpy"]


def _user_module(obj):
    """The module defining ``obj`` when it is the user's own code (not installed, not stdlib), else None."""
    import sys
    import sysconfig

    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    source = getattr(module, "__file__", None)
    if module is None or module.__name__ == "__main__" or not source:
        return None
    installed = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return None if any(os.path.abspath(source).startswith(p) for p in installed) else module


def _write_callable(path: Path, obj) -> tuple[dict, list[str]]:
    import cloudpickle

    from flavors.python_function import CALLABLE_FILE

    # the user's own module travels inside the model, so the model loads where that module is absent
    module = _user_module(obj)
    if module is not None:
        cloudpickle.register_pickle_by_value(module)
    try:
        with open(path / CALLABLE_FILE, "wb") as fh:
            cloudpickle.dump(obj, fh)
    finally:
        if module is not None:
            cloudpickle.unregister_pickle_by_value(module)
    return {"python_function": _pyfunc("flavors.python_function", data=CALLABLE_FILE)}, \
        ["arrowscore", "cloudpickle", "pandas"]


def save_model(path: str | os.PathLike, model, signature=None, *, optional=(), predict_fn: str = "predict",
               metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` (ONNX, scikit-learn estimator, or a callable on pandas DataFrames) to ``path``.

    A pyarrow schema as ``signature`` makes every input column required (as MLflow's signatures do);
    ``optional`` names the input columns a batch may lack (fed to the model as missing values).
    """
    sig = _signature(signature, optional)
    out = Path(path)
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{str(out)!r} already exists; choose another path or pass overwrite=True")
        shutil.rmtree(out)
    kind = _kind(model)
    out.mkdir(parents=True)
    try:
        if kind == "onnx":
            flavors, deps = _write_onnx(out, model)
        elif kind == "sklearn":
            flavors, deps = _write_sklearn(out, model, predict_fn)
        else:
            flavors, deps = _write_callable(out, model)
        pins = [f"{d}=={v}" if (v := _version(d)) else d for d in deps]
        (out / "requirements.txt").write_text("\n".join(pins) + "\n")
        (out / "python_env.yaml").write_text(yaml.safe_dump({
            "python": platform.python_version(), "build_dependencies": ["pip"],
            "dependencies": ["-r requirements.txt"]}))
        extra = {"metadata": metadata} if metadata else {}
        write_mlmodel(out, flavors, sig, **extra)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out
