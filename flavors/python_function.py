"""python_function: custom PythonModels, models-from-code, custom loader modules, plain callables.

The fallback flavor: any model MLflow can load through ``loader_module`` loads here too.
Three paths, chosen from the MLmodel file when the model is loaded:
- ``mlflow.pyfunc.model``: a cloudpickled PythonModel, loaded directly (mlflow must be importable
  because the class derives from ``mlflow.pyfunc.PythonModel``);
- ``flavors.python_function``: a plain callable written by ``engine.save_model``;
- anything else (models-from-code, custom flavors): ``<loader_module>._load_pyfunc(path[, config])``.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import inspect
import lzma
import sys
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ModelLoadError, require

from . import Predictor, note_code_runs

CALLABLE_FILE = "callable.pkl"
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass(frozen=True)
class ModelContext:
    """What a PythonModel's ``load_context`` and ``predict`` receive as ``context``."""

    artifacts: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)


def add_code_path(meta, conf: dict) -> None:
    """Put the model's bundled ``code`` directory first on sys.path, as MLflow does."""
    code = conf.get("code")
    if code:
        path = str(meta.path / code)
        if path not in sys.path:
            sys.path.insert(0, path)


def _unpickle(path: Path, what: str):
    cloudpickle = require("cloudpickle", "mlflow", what)
    opener = _OPENERS.get(path.suffix, open)
    note_code_runs(path, "cloudpickle")
    try:
        with opener(path, "rb") as fh:
            return cloudpickle.load(fh)
    except ModuleNotFoundError as exc:
        hint = ("pip install 'arrowscore[mlflow]'" if exc.name and exc.name.startswith("mlflow")
                else "install the model's requirements (arrowscore info MODEL lists them)")
        raise ModelLoadError(f"loading {what} from {str(path)!r} needs the module {exc.name!r}; {hint}") from exc


def _takes(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _call(fn, context=None):
    """Bind ``fn(model_input, params)`` once, so nothing is inspected per batch."""
    with_context = context is not None and _takes(fn, "context")
    with_params = _takes(fn, "params")
    if with_context and with_params:
        return lambda x, params: fn(context, x, params=params)
    if with_context:
        return lambda x, params: fn(context, x)
    if with_params:
        return lambda x, params: fn(x, params=params)
    return lambda x, params: fn(x)


def _python_model(meta, conf: dict, model_config: dict) -> Predictor:
    require("mlflow", "mlflow", "a custom PythonModel (its class derives from mlflow.pyfunc.PythonModel)")
    model = _unpickle(meta.path / conf.get("python_model", "python_model.pkl"), "the PythonModel")
    artifacts = {name: str(meta.path / spec["path"]) for name, spec in (conf.get("artifacts") or {}).items()}
    context = ModelContext(artifacts, model_config)
    model.load_context(context)
    return Predictor(predict=_call(model.predict, context), input_kind="frame",
                     accepts_params=_takes(model.predict, "params"), native=model)


def _plain_callable(meta, conf: dict) -> Predictor:
    fn = _unpickle(meta.path / conf.get("data", CALLABLE_FILE), "the saved callable")
    return Predictor(predict=_call(fn), input_kind="frame", accepts_params=_takes(fn, "params"), native=fn)


def _loader_module(meta, conf: dict, model_config: dict) -> Predictor:
    name = conf.get("loader_module")
    if not name:
        raise ModelLoadError(f"the python_function flavor in {str(meta.path)!r} names no loader_module; re-log the model")
    if name.startswith("mlflow"):
        require("mlflow", "mlflow", f"a model with loader_module {name!r}")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ModelLoadError(
            f"the model's loader_module {name!r} cannot be imported ({exc}); install the package that provides it "
            "or add its code to the model with code_paths"
        ) from exc
    data = meta.path / conf["data"] if conf.get("data") else meta.path
    impl = module._load_pyfunc(str(data), model_config) if model_config else module._load_pyfunc(str(data))
    return Predictor(predict=_call(impl.predict), input_kind="frame",
                     accepts_params=_takes(impl.predict, "params"), native=impl)


class PythonFunctionFlavor:
    name = "python_function"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        add_code_path(meta, conf)
        config = dict(conf.get("config") or {})
        loader = conf.get("loader_module")
        if loader == "flavors.python_function":
            return _plain_callable(meta, conf)
        if loader == "mlflow.pyfunc.model" and not meta.is_signature_from_type_hint:
            return _python_model(meta, conf, config)
        return _loader_module(meta, conf, config)


def _load_pyfunc(path: str):
    """Entry point MLflow calls for models written by ``engine.save_model(callable)``: path is the pickle."""
    fn = _unpickle(Path(path), "the saved callable")
    return _PyfuncAdapter(_call(fn))


class _PyfuncAdapter:
    def __init__(self, predict):
        self._predict = predict

    def predict(self, data, params=None):
        return self._predict(data, params)


FLAVOR = PythonFunctionFlavor()
