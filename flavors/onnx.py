"""ONNX models through ONNX Runtime: tensors in, tensors out, no pandas.

MLmodel keys used: ``data``, ``providers``, ``onnx_session_options``.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.errors import ModelLoadError, require
from engine.signature import TensorSpec

from . import Predictor

log = logging.getLogger("arrowscore.flavors.onnx")

_ONNX_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}


def _session_options(ort, conf: dict):
    opts = ort.SessionOptions()
    given = conf.get("onnx_session_options") or {}
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        if given.get(key) is not None:
            setattr(opts, key, int(given[key]))
    mode = given.get("execution_mode")
    if mode:
        modes = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
        if str(mode).lower() not in modes:
            raise ModelLoadError(f"onnx_session_options.execution_mode {mode!r} is not one of {sorted(modes)}")
        opts.execution_mode = modes[str(mode).lower()]
    if given.get("graph_optimization_level") is not None:
        opts.graph_optimization_level = ort.GraphOptimizationLevel(int(given["graph_optimization_level"]))
    for key, value in (given.get("extra_session_config") or {}).items():
        opts.add_session_config_entry(str(key), str(value))
    return opts


def _providers(ort, conf: dict) -> list[str]:
    wanted = list(conf.get("providers") or ["CPUExecutionProvider"])
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        log.info("ONNX providers %s are not available here; using %s", missing, chosen or ["CPUExecutionProvider"])
    return chosen or ["CPUExecutionProvider"]


def _tensor_spec(arg) -> TensorSpec:
    if arg.type not in _ONNX_DTYPES:
        raise ModelLoadError(f"ONNX input {arg.name!r} has type {arg.type}, which arrowscore cannot feed from Arrow")
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [-1]))
    return TensorSpec(arg.name, np.dtype(_ONNX_DTYPES[arg.type]), shape)


class OnnxFlavor:
    name = "onnx"

    def load(self, meta, conf: dict) -> Predictor:
        ort = require("onnxruntime", "onnx", "an ONNX model")
        path = meta.path / conf.get("data", "model.onnx")
        if not path.is_file():
            raise ModelLoadError(f"the ONNX model file {str(path)!r} named in MLmodel is missing; re-log the model")
        session = ort.InferenceSession(str(path), sess_options=_session_options(ort, conf),
                                       providers=_providers(ort, conf))
        specs = tuple(_tensor_spec(arg) for arg in session.get_inputs())
        names = [out.name for out in session.get_outputs()]
        run = session.run

        if len(names) == 1:
            def predict(feed, params):
                return run(names, feed)[0]
        else:
            def predict(feed, params):
                return dict(zip(names, run(names, feed)))

        return Predictor(predict=predict, input_kind="tensors", tensor_specs=specs, native=session)


FLAVOR = OnnxFlavor()
