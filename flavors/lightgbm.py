"""LightGBM models: a Booster in text format, or an sklearn-API estimator (skops/pickle/cloudpickle).

MLmodel keys used: ``data``, ``model_class``, ``serialization_format``, ``skops_trusted_types``.

Loaded for small batches (servers), the forest is also written as an ONNX tree ensemble with LightGBM's
own double thresholds, fed doubles (``flavors.compiled``): LightGBM costs about 15-25 us a call
whatever the rows, ONNX Runtime about 7.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from engine.errors import ModelLoadError, require

from . import Predictor
from .compiled import SmallBatchPath, predict_fn
from .sklearn import estimator_predictor, load_estimator

_BOOSTER = "lightgbm.basic.Booster"
# objectives whose prediction is the sum of the leaves or a transform ONNX gives: the ensemble's own softmax,
# a Sigmoid after it (ONNX Runtime's TreeEnsembleRegressor leaves LOGISTIC out)
_TRANSFORMS = {"regression": "NONE", "regression_l1": "NONE", "huber": "NONE", "fair": "NONE", "quantile": "NONE",
               "mape": "NONE", "binary": "Sigmoid", "multiclass": "SOFTMAX"}


def _to_onnx(booster):
    """The booster as an ONNX TreeEnsembleRegressor on doubles. LightGBM reads values within 1e-35 (its
    float ``kZeroThreshold``) of zero as zero; at a numerical split NaN is 0 unless the split's missing
    type is NaN, then it takes the default side; else ``x <= threshold``.
    Raises on what it does not reproduce (the library answers): categorical splits, zero-as-missing,
    linear trees, averaged forests (rf mode), other objectives."""
    from onnx import TensorProto, helper, numpy_helper

    dump = booster.dump_model()
    kind, *args = dump["objective"].split()
    if kind not in _TRANSFORMS or "sqrt" in args or any(a.startswith("sigmoid:") and a != "sigmoid:1" for a in args):
        raise ValueError(f"objective {dump['objective']!r} is not converted")
    if dump.get("average_output"):
        raise ValueError("averaged trees (boosting=rf) are not converted")
    per_iteration = dump["num_tree_per_iteration"]
    nodes: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "featureids", "modes", "values", "truenodeids",
                                              "falsenodeids", "missing_value_tracks_true")}
    targets: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for t, tree in enumerate(dump["tree_info"]):
        stack, count = [(tree["tree_structure"], 0)], 1
        while stack:
            node, nid = stack.pop()
            nodes["treeids"].append(t)
            nodes["nodeids"].append(nid)
            if "leaf_value" in node and "split_feature" not in node:
                if "leaf_coeff" in node:
                    raise ValueError("linear trees are not converted")
                nodes["featureids"].append(0), nodes["modes"].append("LEAF"), nodes["values"].append(0.0)
                nodes["truenodeids"].append(0), nodes["falsenodeids"].append(0)
                nodes["missing_value_tracks_true"].append(0)
                for key, value in zip(targets, (t, nid, t % per_iteration, node["leaf_value"])):
                    targets[key].append(value)
                continue
            if node["decision_type"] != "<=" or node["missing_type"] not in ("None", "NaN"):
                raise ValueError(f"a {node['decision_type']!r} split with missing type {node['missing_type']!r} "
                                 "is not converted")
            threshold = float(node["threshold"])
            left, right, count = count, count + 1, count + 2
            nodes["featureids"].append(node["split_feature"]), nodes["modes"].append("BRANCH_LEQ")
            nodes["values"].append(threshold)
            nodes["truenodeids"].append(left), nodes["falsenodeids"].append(right)
            goes_left = node["default_left"] if node["missing_type"] == "NaN" else 0.0 <= threshold
            nodes["missing_value_tracks_true"].append(int(goes_left))
            stack += [(node["left_child"], left), (node["right_child"], right)]
    transform = _TRANSFORMS[kind]
    zeroed = [  # |x| <= 1e-35 -> 0
        helper.make_node("Abs", ["input"], ["magnitude"]),
        helper.make_node("LessOrEqual", ["magnitude", "zero_threshold"], ["tiny"]),
        helper.make_node("Where", ["tiny", "zero", "input"], ["features"]),
    ]
    ensemble = helper.make_node(
        "TreeEnsembleRegressor", ["features"], ["sum" if transform == "Sigmoid" else "output"], domain="ai.onnx.ml",
        n_targets=per_iteration, post_transform="NONE" if transform == "Sigmoid" else transform,
        aggregate_function="SUM",
        nodes_values_as_tensor=numpy_helper.from_array(np.array(nodes.pop("values"), np.float64)),
        target_weights_as_tensor=numpy_helper.from_array(np.array(targets.pop("weights"), np.float64)),
        **{f"nodes_{k}": v for k, v in nodes.items()}, **{f"target_{k}": v for k, v in targets.items()})
    steps = [*zeroed, ensemble] + ([helper.make_node("Sigmoid", ["sum"], ["output"])] if transform == "Sigmoid" else [])
    constants = [numpy_helper.from_array(np.array(float(np.float32(1e-35))), "zero_threshold"),
                 numpy_helper.from_array(np.array(0.0), "zero")]
    graph = helper.make_graph(
        steps, "lightgbm", [helper.make_tensor_value_info("input", TensorProto.DOUBLE, [None, booster.num_feature()])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, per_iteration])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


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
            predictor = Predictor(predict=lambda x, params: booster.predict(x), input_kind="matrix", native=booster)
        else:
            # MLflow writes sklearn-API LightGBM models like sklearn ones; an absent format means cloudpickle
            model = load_estimator(path, conf.get("serialization_format"), conf.get("skops_trusted_types"),
                                   default_format="cloudpickle")
            method = meta.flavors.get("python_function", {}).get("predict_fn") or "predict"
            predictor = replace(estimator_predictor(model, method), order="C")  # LightGBM copies other layouts
            booster = getattr(model, "_Booster", None)
        if (options is not None and options.small_batches and (conf.get("config") or {}).get("compiled", True)
                and predictor.input_kind == "matrix" and booster is not None):
            native = predictor.predict
            fn = SmallBatchPath(lambda x: native(x, None), lambda: _to_onnx(booster), booster.num_feature(),
                                f"LightGBM {path.name}", dtype=np.float64)
            predictor = replace(predictor, predict=predict_fn(fn))
        return predictor


FLAVOR = LightgbmFlavor()
