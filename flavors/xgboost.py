"""XGBoost models (ubj, json or legacy binary) with in-place prediction on numpy.

MLmodel keys used: ``data``, ``model_class`` (a Booster, or an sklearn-API class such as
``xgboost.sklearn.XGBClassifier`` whose ``predict`` returns labels).
"""

from __future__ import annotations

import importlib

from engine.errors import ModelLoadError, require

from . import Predictor

_BOOSTER = "xgboost.core.Booster"


def _model_class(name: str):
    module, _, attr = name.rpartition(".")
    if not module.startswith("xgboost"):
        raise ModelLoadError(f"model_class {name!r} in MLmodel is not an xgboost class; re-log the model")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"model_class {name!r} does not exist in this xgboost version ({exc})") from exc


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
            fn = getattr(model, meta.flavors.get("python_function", {}).get("predict_fn") or "predict")
        # XGBoost reads strided arrays in place, so the cheaper column-major copy suits it
        return Predictor(predict=lambda x, params: fn(x), input_kind="matrix", native=model, order="F")


FLAVOR = XgboostFlavor()
