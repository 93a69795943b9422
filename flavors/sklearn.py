"""scikit-learn models saved as skops, pickle or cloudpickle.

MLmodel keys used: ``pickled_model``, ``serialization_format`` (never the file extension: MLflow
once wrote skops data to ``model.pkl``), ``skops_trusted_types``, and ``predict_fn`` from the
python_function flavor (predict, predict_proba, ...).

Trust: pickle and cloudpickle files run code when loaded (logged once per file). ``skops_trusted_types``
comes from the model's own MLmodel, so it is the trust of whoever wrote the model, not the user's:
arrowscore passes it to skops as written, and a type skops distrusts that it does not list is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pyarrow as pa

from engine.errors import ModelLoadError, require

from . import Predictor, note_code_runs
from .compiled import SmallBatchPath, predict_fn

FORMATS = ("skops", "cloudpickle", "pickle")


def load_estimator(path, serialization_format: str | None, trusted_types=None, default_format: str = "pickle"):
    """Deserialize an estimator written by MLflow or ``engine.save_model``."""
    fmt = serialization_format or default_format
    if fmt not in FORMATS:
        raise ModelLoadError(f"serialization_format {fmt!r} in MLmodel is not one of {FORMATS}; re-log the model")
    if not path.is_file():
        raise ModelLoadError(f"the model file {str(path)!r} named in MLmodel is missing; re-log the model")
    if fmt == "skops":
        return _load_skops(path, list(trusted_types or []))
    loader = require("cloudpickle", "sklearn", "a cloudpickled model") if fmt == "cloudpickle" else pickle
    note_code_runs(path, fmt)
    with open(path, "rb") as fh:
        try:
            return loader.load(fh)
        except ModuleNotFoundError as exc:
            raise ModelLoadError(
                f"unpickling {str(path)!r} needs the module {exc.name!r}, which is not installed; "
                "install the model's requirements (arrowscore info MODEL shows them)"
            ) from exc


def _load_skops(path, trusted: list[str]):
    sio = require("skops.io", "sklearn", "a model saved in the skops format")
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return sio.load(path, trusted=trusted or None)
    except UntrustedTypesFoundException as exc:
        untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(trusted))
        raise ModelLoadError(
            f"the skops file {str(path)!r} holds types skops does not trust: {untrusted}; the model's MLmodel "
            "does not list them in skops_trusted_types. Review them, and if you trust the model, re-log it with "
            f"skops_trusted_types={untrusted} (or add them to skops_trusted_types in its MLmodel file)"
        ) from exc


def estimator_predictor(model, method: str) -> Predictor:
    """A Predictor calling ``model.<method>``: pandas when the model was fitted on named columns."""
    fn = getattr(model, method, None)
    if fn is None:
        raise ModelLoadError(f"the model ({type(model).__name__}) has no method {method!r}; "
                             "choose another predict_fn when logging it")
    kind = "frame" if hasattr(model, "feature_names_in_") else "matrix"
    # column-major: Arrow columns copy into it contiguously, and scikit-learn takes any layout
    return Predictor(predict=lambda x, params: fn(x), input_kind=kind, native=model, order="F")


# estimators that read the features as float32 and that skl2onnx converts to an ONNX tree ensemble
_TREES = ("sklearn.tree._classes", "sklearn.ensemble._forest", "sklearn.ensemble._gb")


def _to_onnx(model, width: int):
    from skl2onnx import to_onnx

    options = {id(model): {"zipmap": False}} if hasattr(model, "classes_") else None  # probabilities as a tensor
    return to_onnx(model, np.zeros((1, width), np.float32), options=options)


def small_batch_predictor(predictor: Predictor, model, method: str, what: str, inputs=None) -> Predictor:
    """A tree model as a server loads it: small batches through the compiled path (``flavors.compiled``).

    inputs: the signature's input schema. A model fitted on named columns takes a DataFrame; when the
    signature is those columns, in that order, all numbers, it is fed a matrix instead (no pandas per
    call on the compiled path), and the library gets a DataFrame made from it."""
    if type(model).__module__ not in _TREES or method not in ("predict", "predict_proba"):
        return predictor
    classes = getattr(model, "classes_", None)
    if classes is not None and min(len(c) for c in (classes if isinstance(classes, list) else [classes])) < 2:
        return predictor  # fitted on one class: ONNX Runtime aborts the process on skl2onnx's graph of it
    native, width = getattr(model, method), model.n_features_in_
    if predictor.input_kind == "frame":
        names = list(model.feature_names_in_)
        if inputs is None or inputs.names != names or not all(_numeric(f.type) for f in inputs):
            return predictor
        import pandas as pd

        by_name = native

        def native(x):
            return by_name(pd.DataFrame(x, columns=names, copy=False))

        predictor = replace(predictor, input_kind="matrix")
    fn = SmallBatchPath(native, lambda: _to_onnx(model, width), width, what, finite_only=True)

    # predict_proba's float32 sums: -1.2e-7 or 1.0000001 would break log(p) and range checks
    clip = (lambda p: np.clip(p, 0.0, 1.0)) if method == "predict_proba" else None
    return replace(predictor, predict=predict_fn(fn, clip))


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class SklearnFlavor:
    name = "sklearn"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        require("sklearn", "sklearn", "a scikit-learn model")
        path = meta.path / conf.get("pickled_model", "model.pkl")
        model = load_estimator(path, conf.get("serialization_format"), conf.get("skops_trusted_types"))
        method = meta.flavors.get("python_function", {}).get("predict_fn") or "predict"
        predictor = estimator_predictor(model, method)
        if options is not None and options.small_batches and (conf.get("config") or {}).get("compiled", True):
            predictor = small_batch_predictor(predictor, model, method, f"scikit-learn {path.name}",
                                              None if meta.signature.is_tensor else meta.signature.input_schema())
        return predictor


FLAVOR = SklearnFlavor()
