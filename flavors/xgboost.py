"""XGBoost models (ubj, json or legacy binary) with in-place prediction on numpy.

MLmodel keys used: ``data``, ``model_class`` (a Booster, or an sklearn-API class such as
``xgboost.sklearn.XGBClassifier`` whose ``predict`` returns labels).
"""

from __future__ import annotations

import importlib

import numpy as np

from engine.errors import ModelLoadError, require

from . import Predictor
from .compiled import SmallBatchPath, predict_fn

_BOOSTER = "xgboost.core.Booster"


def _model_class(name: str):
    module, _, attr = name.rpartition(".")
    if not module.startswith("xgboost"):
        raise ModelLoadError(f"model_class {name!r} in MLmodel is not an xgboost class; re-log the model")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"model_class {name!r} does not exist in this xgboost version ({exc})") from exc


def _direct(model, xgb):
    """``model.predict`` as the booster's own ``inplace_predict`` with the arguments the sklearn wrapper
    passes it, without the wrapper's per-call work (it enters xgboost's global config context, JSON in
    and out, around every call: 35-50 us, more than a 1-row prediction of a small forest). Used only
    when it gives exactly the wrapper's outputs on sample rows (NaNs included); None otherwise
    (gblinear, categorical features, other classes, any difference)."""
    if type(model) not in (xgb.XGBRegressor, xgb.XGBClassifier) or model.booster not in (None, "gbtree", "dart"):
        return None
    booster = model.get_booster()
    if any(t == "c" for t in (booster.feature_types or ())):
        return None
    try:
        iterations = (0, model.best_iteration + 1)  # as the wrapper: the best iteration of early stopping
    except AttributeError:
        iterations = (0, 0)
    missing, run = model.missing, booster.inplace_predict

    def values(x):
        return run(x, iteration_range=iterations, missing=missing, validate_features=False)

    fn = values
    if isinstance(model, xgb.XGBClassifier):  # probabilities -> labels, as XGBClassifier.predict
        softmax, two = model.objective == "multi:softmax", model.n_classes_ == 2

        def fn(x):
            p = values(x)
            if p.ndim > 1 and not two:
                return np.argmax(p, axis=1)
            if p.ndim > 1 and p.shape[1] != 1:
                labels = np.zeros(p.shape)
                labels[p > 0.5] = 1
                return labels
            if softmax:
                return p.astype(np.int32)
            labels = np.repeat(0, p.shape[0])
            labels[p > 0.5] = 1
            return labels

    sample = np.random.default_rng(0).normal(size=(64, booster.num_features())) * 3
    sample[::7, ::3] = np.nan
    for rows in (sample, sample[:1], np.asfortranarray(sample)):
        want, got = model.predict(rows), fn(rows)
        if want.dtype != got.dtype or want.shape != got.shape or not np.array_equal(want, got, equal_nan=True):
            return None
    return fn


def _width(model, xgb) -> int:
    return (model if isinstance(model, xgb.Booster) else model.get_booster()).num_features()


def _to_onnx(model, xgb):
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    return convert_xgboost(model, initial_types=[("input", FloatTensorType([None, _width(model, xgb)]))])


class XgboostFlavor:
    name = "xgboost"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        xgb = require("xgboost", "xgboost", "an XGBoost model")
        path = meta.path / conf.get("data", "model.xgb")
        if not path.is_file():
            raise ModelLoadError(f"the XGBoost model file {str(path)!r} named in MLmodel is missing; re-log the model")
        cls = _model_class(conf.get("model_class") or _BOOSTER)
        model = cls()
        model.load_model(str(path))
        if isinstance(model, xgb.Booster):
            fn = model.inplace_predict
        else:
            method = meta.flavors.get("python_function", {}).get("predict_fn") or "predict"
            fn = getattr(model, method)
            if method == "predict":
                fn = _direct(model, xgb) or fn
        if options is not None and options.small_batches and (conf.get("config") or {}).get("compiled", True):
            fn = SmallBatchPath(fn, lambda: _to_onnx(model, xgb), _width(model, xgb), f"XGBoost {path.name}")
        # XGBoost reads strided arrays in place, so the cheaper column-major copy suits it
        return Predictor(predict=predict_fn(fn), input_kind="matrix", native=model, order="F")


FLAVOR = XgboostFlavor()
