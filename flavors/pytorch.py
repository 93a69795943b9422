"""PyTorch models (``data/model.pth`` pickled, or ``data/model.pt2`` from torch.export), when torch is installed.

MLmodel keys used: pytorch ``model_data``; python_function ``data`` and ``config``. The model's
config, under ``model_config`` given at load (``--device``) and over the MLmodel's own:

- ``device``: ``cpu``, ``cuda`` or ``cuda:N``; when none says, ``MLFLOW_DEFAULT_PREDICTION_DEVICE``,
  else ``cuda`` if torch sees a GPU, else ``cpu`` (MLflow's order).
- ``dtype``: ``float16`` or ``bfloat16`` runs the model in half precision (weights and inputs cast on
  the device, outputs back to float32); off by default, as it changes results (see docs/models.md).
- ``chunk_rows``: rows per forward pass. On a GPU (default 65,536) batch N+1's rows go to the device
  through reused pinned buffers on a copy stream while the model computes on batch N, and results
  come back through pinned buffers; on the CPU (default: the whole batch) it bounds activation memory.

Inputs as MLflow feeds them: one tensor (a column signature becomes a float32 matrix), or, for a
model with several tensor inputs, one argument per input in signature order; params go to
``forward`` as keyword arguments. Outputs: a tensor, or a tuple/list/dict of tensors.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from engine.errors import ConfigError, ModelLoadError, ScoringError, require
from engine.model.device import check_device
from engine.model.signature import TensorSpec

from . import Predictor, note_code_runs

GPU_CHUNK_ROWS = 65_536
HALF = ("float16", "bfloat16")


def choose_device(torch, wanted):
    """The torch.device to run on, checked against what this machine has."""
    name = check_device(wanted or os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE") or None)
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {name!r} asked for, but torch {torch.__version__} sees no GPU here "
                f"(CUDA build: {torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); pass --device cpu or model_config={{'device': 'cpu'}}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ModelLoadError(f"device {name!r} asked for, but this machine has {count} GPU(s): "
                                 f"use cuda:0 to cuda:{count - 1}")
    return device


def _half(torch, dtype):
    if dtype is None:
        return None
    if str(dtype) not in HALF:
        raise ConfigError(f"model_config dtype {dtype!r} is not one of {HALF}; leave it out for the model's own")
    return getattr(torch, str(dtype))


def _load(torch, data, device, half):
    if (data / "model.pt2").is_file():
        if half is not None:  # the graph fixes its dtypes (and may check them): casting weights breaks it
            raise ConfigError("model_config dtype does not apply to a torch.export (pt2) model, whose graph fixes its "
                              "dtypes; export the model in half precision instead, or log it as a pickle")
        from torch.export.passes import move_to_device_pass

        # weights and the devices written into the graph move together (a program exported on a GPU
        # comes to the CPU too)
        return move_to_device_pass(torch.export.load(str(data / "model.pt2")), device).module()
    if (data / "model.pth").is_file():
        note_code_runs(data / "model.pth", "torch pickle")
        model = torch.load(str(data / "model.pth"), map_location=device, weights_only=False)
        model.eval()
        return model.to(device)
    raise ModelLoadError(f"no model.pth or model.pt2 under {str(data)!r}; re-log the model with mlflow.pytorch")


def _tensor(torch, arr: np.ndarray):
    if not arr.flags.writeable:  # Arrow buffers are read-only; the model only reads them
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(np.ascontiguousarray(arr))


class _Runner:
    """Calls the model on one batch: arrays in, numpy out, on the CPU or through a GPU pipeline."""

    def __init__(self, torch, model, device, half, chunk_rows):
        self.torch, self.model, self.device, self.half = torch, model, device, half
        self.gpu = device.type == "cuda"
        self.chunk_rows = chunk_rows
        self.lock = threading.Lock()  # the staging buffers are shared: one batch at a time
        self.staging: list[dict] = [{}, {}]  # two slots: one filled on the host while the other copies
        self.ran: list = [None, None]        # per slot: the event of its last chunk's forward pass
        self.results: dict = {}
        if self.gpu:
            self.copy_stream, self.back_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)

    def __call__(self, x, params):
        arrays = list(x.values()) if isinstance(x, dict) else [x]
        rows = arrays[0].shape[0]
        kwargs = params or {}
        with self.torch.inference_mode():
            if not self.gpu and not (self.chunk_rows and rows > self.chunk_rows):
                args = [self._cast(_tensor(self.torch, a).to(self.device)) for a in arrays]
                return _to_numpy(self.torch, self.model(*args, **kwargs))
            with self.lock:
                return self._pipelined(arrays, rows, kwargs)

    def _cast(self, t):
        return t.to(self.half) if self.half is not None and t.is_floating_point() else t

    def _pipelined(self, arrays, rows, kwargs):
        torch = self.torch
        from torch.utils._pytree import tree_flatten, tree_unflatten

        step = self.chunk_rows or rows or 1
        compute = torch.cuda.current_stream(self.device) if self.gpu else None
        outs, spec = None, None
        for i, start in enumerate(range(0, max(rows, 1), step)):
            stop, slot = min(start + step, rows), i % 2
            if self.ran[slot] is not None:
                # the forward pass of the slot's last chunk is done, so its copy is too: its pinned buffers
                # may be refilled, and no more than two chunks' inputs are on the device at once
                self.ran[slot].synchronize()
            staged = [self._stage(slot, k, a[start:stop]) for k, a in enumerate(arrays)]
            if self.gpu:
                with torch.cuda.stream(self.copy_stream):
                    moved = [t.to(self.device, non_blocking=True) for t in staged]
                    copied = torch.cuda.Event(blocking=True)
                    copied.record(self.copy_stream)
                compute.wait_event(copied)
                for t in moved:
                    t.record_stream(compute)  # allocated on the copy stream, used on the compute stream
            else:
                moved = staged
            try:
                leaves, spec = tree_flatten(self.model(*[self._cast(t) for t in moved], **kwargs))
            except Exception as exc:
                if rows <= step:
                    raise
                raise ScoringError(f"the model failed on rows {start}-{stop - 1} of a {rows}-row batch scored in "
                                   f"chunks of {step} ({type(exc).__name__}: {exc}); a model exported for one batch "
                                   "size needs model_config chunk_rows set to it, or 0 for whole batches") from exc
            if outs is None:
                outs = [self._result(j, leaf, rows) for j, leaf in enumerate(leaves)]
            host = []
            for j, leaf in enumerate(leaves):
                if leaf.ndim == 0 or leaf.shape[0] != stop - start:
                    raise ScoringError(
                        f"output {j} has shape {tuple(leaf.shape)} for {stop - start} input rows; chunked scoring "
                        "needs one output row per input row: set model_config chunk_rows=0 and score smaller batches")
                if leaf.device != self.device:
                    raise ScoringError(f"output {j} is on {leaf.device}, the model on {self.device}; return outputs "
                                       "on the model's device")
                host.append(leaf.float() if self.half is not None and leaf.is_floating_point() else leaf)
            if self.gpu:  # results go home on their own stream, behind this forward, beside the next one
                ran = torch.cuda.Event(blocking=True)
                ran.record(compute)
                self.ran[slot] = ran
                self.back_stream.wait_event(ran)
                with torch.cuda.stream(self.back_stream):
                    for j, out in enumerate(host):
                        out.record_stream(self.back_stream)
                        outs[j][start:stop].copy_(out, non_blocking=True)
            else:
                for j, out in enumerate(host):
                    outs[j][start:stop].copy_(out)
        if self.gpu:
            self.back_stream.synchronize()
        # the result buffers are reused by the next batch: hand out copies
        return _to_numpy(torch, tree_unflatten([o[:rows].clone() for o in outs], spec))

    def _stage(self, slot: int, k: int, part: np.ndarray):
        """``part`` copied into the slot's buffer for input k (pinned on a GPU), grown when too small."""
        buf = self.staging[slot].get(k)
        dtype = self.torch.from_numpy(np.empty(0, part.dtype)).dtype
        if buf is None or buf.shape[1:] != part.shape[1:] or buf.dtype != dtype or buf.shape[0] < len(part):
            size = max(len(part), self.chunk_rows or 0)
            buf = self.torch.empty((size, *part.shape[1:]), dtype=dtype, pin_memory=self.gpu)
            self.staging[slot][k] = buf
        view = buf[: len(part)]
        np.copyto(view.numpy(), part)
        return view

    def _result(self, j: int, leaf, rows: int):
        dtype = self.torch.float32 if self.half is not None and leaf.is_floating_point() else leaf.dtype
        buf = self.results.get(j)
        if buf is None or buf.shape[1:] != leaf.shape[1:] or buf.dtype != dtype or buf.shape[0] < rows:
            buf = self.torch.empty((rows, *leaf.shape[1:]), dtype=dtype, pin_memory=self.gpu)
            self.results[j] = buf
        return buf


def _to_numpy(torch, out):
    if isinstance(out, torch.Tensor):
        out = out.detach()
        if out.device.type != "cpu":
            out = out.cpu()
        return (out.float() if out.dtype in (torch.float16, torch.bfloat16) else out).numpy()
    if isinstance(out, dict):
        return {str(k): _to_numpy(torch, v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return {f"output_{i}": _to_numpy(torch, v) for i, v in enumerate(out)}
    raise ScoringError(f"the PyTorch model returned {type(out).__name__}; arrowscore takes a tensor, or a "
                       "tuple, list or dict of tensors")


class PytorchFlavor:
    name = "pytorch"

    def load(self, meta, conf: dict, options=None) -> Predictor:
        torch = require("torch", "pytorch", "a PyTorch model")
        pyfunc = meta.flavors.get("python_function", {})
        given = {k: v for k, v in (conf.get("config") or {}).items() if v is not None}
        config = {**{k: v for k, v in (pyfunc.get("config") or {}).items() if v is not None}, **given}
        device = choose_device(torch, config.get("device"))
        half = _half(torch, config.get("dtype"))
        chunk_rows = config.get("chunk_rows", GPU_CHUNK_ROWS if device.type == "cuda" else 0)
        if not isinstance(chunk_rows, int) or isinstance(chunk_rows, bool) or chunk_rows < 0:
            raise ConfigError(f"model_config chunk_rows must be a whole number >= 0 (0: the whole batch), "
                              f"got {chunk_rows!r}")
        data = meta.path / (conf.get("model_data") or pyfunc.get("data") or "data")
        try:
            model = _load(torch, data, device, half)
            if half is not None:
                model = model.to(half)
        except (ModelLoadError, ConfigError):
            raise
        except Exception as exc:
            raise ModelLoadError(f"torch could not load the model under {str(data)!r} onto {device}: {exc}") from exc
        specs = meta.signature.inputs or ()
        tensors = bool(specs) and all(isinstance(s, TensorSpec) for s in specs)
        return Predictor(
            predict=_Runner(torch, model, device, half, chunk_rows),
            input_kind="tensors" if tensors and len(specs) > 1 else "matrix",
            # a tensor signature feeds its own dtypes (MLflow passes ndarrays as they are); columns
            # become a float32 matrix, as MLflow's DataFrame.to_numpy(dtype=float32)
            dtype=None if tensors else np.dtype("float32"),
            accepts_params=True, native=model)


FLAVOR = PytorchFlavor()
