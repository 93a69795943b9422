"""ONNX models through ONNX Runtime: tensors in, tensors out, no pandas.

MLmodel keys used: ``data``, ``providers``, ``onnx_session_options``.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from engine.errors import ModelLoadError, require
from engine.model.device import device_of, gpu_index, is_gpu
from engine.model.signature import TensorSpec

from . import Predictor

log = logging.getLogger("arrowscore.flavors.onnx")

_ONNX_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}


_SPINNING = "session.intra_op.allow_spinning"


def _session_options(ort, conf: dict, shared_cpu: bool = False):
    opts = ort.SessionOptions()
    given = conf.get("onnx_session_options") or {}
    extra = given.get("extra_session_config") or {}
    if shared_cpu and _SPINNING not in extra:
        # idle intra-op threads spin by default; in a pipeline they would steal the cores that read
        # and write (measured: +24% rows/s on 2 cores, benchmarks/bench_parquet.py)
        opts.add_session_config_entry(_SPINNING, "0")
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


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")  # in order of preference


def _providers(ort, conf: dict) -> list:
    """ONNX Runtime providers: from model_config's device when it names one, else the MLmodel's list
    (those this onnxruntime has); the CPU when none of them is here, said once in the log."""
    available = ort.get_available_providers()
    device = device_of(conf.get("config"))
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if is_gpu(device):
        gpu = next((p for p in _GPU_PROVIDERS if p in available), None)
        if gpu is None:
            log.warning("device %s asked for, but this onnxruntime has no GPU provider (it has %s): scoring on the "
                        "CPU; install onnxruntime-gpu for CUDA", device, available)
            return ["CPUExecutionProvider"]
        return [(gpu, {"device_id": gpu_index(device)}), "CPUExecutionProvider"]
    wanted = list(conf.get("providers") or ["CPUExecutionProvider"])
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing:
        log.info("ONNX providers %s are not available here; using %s", missing, chosen or ["CPUExecutionProvider"])
    return chosen or ["CPUExecutionProvider"]


def _tensor_spec(arg) -> TensorSpec:
    if arg.type not in _ONNX_DTYPES:
        raise ModelLoadError(f"ONNX input {arg.name!r} has type {arg.type}, which arrowscore cannot feed from Arrow; "
                             "re-export the model with tensor inputs")
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [-1]))
    return TensorSpec(arg.name, np.dtype(_ONNX_DTYPES[arg.type]), shape)


_COLUMNS_SUFFIX = "__columns"
_MAX_REWRITE_BYTES = 1 << 30  # protobuf cannot serialize 2 GiB; big models keep the row-major path


def _columnar_model(path, input_name: str) -> bytes | None:
    """The model with its 2-D input taken column-major: (features, rows) -> Transpose -> the graph.

    Arrow columns become a (features, rows) array with one contiguous copy per column, where the
    row-major (rows, features) array needs a strided transpose; ONNX Runtime folds the added
    Transpose into the first MatMul/Gemm, so the model runs as fast as before.
    """
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return None
    if path.stat().st_size > _MAX_REWRITE_BYTES:
        return None
    model = onnx.load(str(path))
    graph = model.graph
    index, original = next((i, x) for i, x in enumerate(graph.input) if x.name == input_name)
    dims = list(original.type.tensor_type.shape.dim)
    if len(dims) != 2:
        return None
    columns = helper.make_tensor_value_info(input_name + _COLUMNS_SUFFIX, original.type.tensor_type.elem_type, None)
    columns.type.tensor_type.shape.dim.extend(reversed(dims))
    graph.node.insert(0, helper.make_node("Transpose", [columns.name], [input_name], perm=[1, 0]))
    graph.input.remove(original)
    graph.input.insert(index, columns)
    return model.SerializeToString()


class _ColumnarEntry:
    """predict_columns for a one-input 2-D model: builds the rewritten session on first use only."""

    def __init__(self, make_session, session, input_name: str, names: list[str]):
        self._make, self._session, self._input, self._names = make_session, session, input_name, names
        self._run = None
        self._lock = threading.Lock()

    def _start(self) -> None:
        rewritten = self._make()
        if rewritten is not None:
            self._feed, self._transpose, self._run = self._input + _COLUMNS_SUFFIX, False, rewritten.run
        else:  # no onnx package, or too big to rewrite: transpose here instead
            self._feed, self._transpose, self._run = self._input, True, self._session.run

    def __call__(self, feed: dict, params):
        if self._run is None:
            with self._lock:
                if self._run is None:
                    self._start()
        x = feed[self._input]
        out = self._run(self._names, {self._feed: np.ascontiguousarray(x.T) if self._transpose else x})
        return out[0] if len(self._names) == 1 else dict(zip(self._names, out))


class OnnxFlavor:
    name = "onnx"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        ort = require("onnxruntime", "onnx", "an ONNX model")
        path = meta.path / conf.get("data", "model.onnx")
        if not path.is_file():
            raise ModelLoadError(f"the ONNX model file {str(path)!r} named in MLmodel is missing; re-log the model")
        shared = bool(options and options.shared_cpu)
        session_options, providers = _session_options(ort, conf, shared), _providers(ort, conf)
        session = ort.InferenceSession(str(path), sess_options=session_options, providers=providers)
        specs = tuple(_tensor_spec(arg) for arg in session.get_inputs())
        outputs = session.get_outputs()
        out_specs = tuple(_tensor_spec(o) for o in outputs) if all(o.type in _ONNX_DTYPES for o in outputs) else None
        names = [out.name for out in outputs]
        run = session.run

        if len(names) == 1:
            def predict(feed, params):
                return run(names, feed)[0]
        else:
            def predict(feed, params):
                return dict(zip(names, run(names, feed)))

        columnar = None
        if len(specs) == 1 and len(specs[0].shape) == 2:
            def make_session():
                rewritten = _columnar_model(path, specs[0].name)
                if rewritten is None:
                    return None
                return ort.InferenceSession(rewritten, sess_options=session_options, providers=providers)

            columnar = _ColumnarEntry(make_session, session, specs[0].name, names)
        return Predictor(predict=predict, input_kind="tensors", tensor_specs=specs, native=session,
                         predict_columns=columnar, output_specs=out_specs)


FLAVOR = OnnxFlavor()
