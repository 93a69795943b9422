"""LightGBM models: a Booster in text format, or an sklearn-API estimator (skops/pickle/cloudpickle).

MLmodel keys used: ``data``, ``model_class``, ``serialization_format``, ``skops_trusted_types``.
"""

from __future__ import annotations

from dataclasses import replace

from engine.errors import ModelLoadError, require

from . import Predictor
from .sklearn import estimator_predictor, load_estimator

_BOOSTER = "lightgbm.basic.Booster"


class LightgbmFlavor:
    name = "lightgbm"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        lgb = require("lightgbm", "lightgbm", "a LightGBM model")
        model_class = conf.get("model_class") or _BOOSTER
        path = meta.path / conf.get("data", "model.lgb")
        if model_class == _BOOSTER:
            if not path.is_file():
                raise ModelLoadError(f"the LightGBM model file {str(path)!r} named in MLmodel is missing; re-log the model")
            booster = lgb.Booster(model_file=str(path))
            return Predictor(predict=lambda x, params: booster.predict(x), input_kind="matrix", native=booster)
        # MLflow writes sklearn-API LightGBM models like sklearn ones; an absent format means cloudpickle
        model = load_estimator(path, conf.get("serialization_format"), conf.get("skops_trusted_types"),
                               default_format="cloudpickle")
        method = meta.flavors.get("python_function", {}).get("predict_fn") or "predict"
        return replace(estimator_predictor(model, method), order="C")  # LightGBM copies other layouts


FLAVOR = LightgbmFlavor()
