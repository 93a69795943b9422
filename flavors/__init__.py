"""Flavors: one small module per model library, each turning a model directory into a Predictor.

A flavor is anything with a ``name`` and a ``load(meta, conf) -> Predictor`` method; register it
once with ``register``. Native flavors are tried in registry order; ``python_function`` is last,
the fallback for anything else MLflow can load.

>>> from flavors import Predictor, register
>>> class EchoFlavor:
...     name = "echo"
...     def load(self, meta, conf, options=None):
...         return Predictor(predict=lambda x, params: x[:, 0], input_kind="matrix")
>>> EchoFlavor().load(None, {}).input_kind
'matrix'
>>> register(EchoFlavor()); register(EchoFlavor())
Traceback (most recent call last):
...
engine.errors.ConfigError: flavor 'echo' is already registered...
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from engine.errors import ConfigError, FlavorNotFound

__all__ = ["Predictor", "Flavor", "LoadOptions", "register", "registered", "choose", "note_code_runs"]

INPUT_KINDS = ("matrix", "tensors", "frame")


@dataclass(frozen=True)
class Predictor:
    """A loaded model as the scorer sees it.

    predict(model_input, params) -> raw output (ndarray, dict of arrays, DataFrame, ...)
    input_kind: "matrix" (one 2-D ndarray), "tensors" (dict name -> ndarray), "frame" (pandas)
    dtype: element type a "matrix" must have (None: float64 unless the signature says otherwise)
    tensor_specs: the model's own inputs, used when the MLmodel has no signature (onnx)
    accepts_params: whether predict uses the params argument
    order: memory layout a "matrix" should have: "C" (row-major) or "F" (column-major, which Arrow
        columns become with contiguous copies instead of a strided transpose)
    predict_columns: optional second entry point taking {input: (features, rows) array}, the
        column-major form of a single 2-D tensor input (ONNX models rewritten with a leading Transpose)
    output_specs: the model's own outputs (TensorSpecs), giving the output schema of a model
        logged without an output signature (onnx)
    """

    predict: Callable[[Any, dict | None], Any]
    input_kind: str = "matrix"
    dtype: np.dtype | None = None
    tensor_specs: tuple | None = None
    accepts_params: bool = False
    native: Any = None
    order: str = "C"
    predict_columns: Callable[[Any, dict | None], Any] | None = None
    output_specs: tuple | None = None

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ConfigError(f"Predictor.input_kind {self.input_kind!r} is not one of {INPUT_KINDS}")
        if self.order not in ("C", "F"):
            raise ConfigError(f"Predictor.order {self.order!r} is not 'C' or 'F'")


@dataclass(frozen=True)
class LoadOptions:
    """How the caller will run the model, for flavors that tune their library to it.

    shared_cpu: other busy threads share the CPUs with the model (a pipelined batch job reading and
        writing while it scores): libraries should not spin idle worker threads (ONNX Runtime).
    small_batches: the caller scores small batches (a server's requests): tree flavors build their
        compiled small-batch path (``flavors.compiled``), which batch jobs would not use.
    """

    shared_cpu: bool = False
    small_batches: bool = False


class Flavor(Protocol):
    name: str

    def load(self, meta, conf: dict, options: LoadOptions = LoadOptions()) -> Predictor: ...


_REGISTRY: dict[str, Flavor] = {}


def register(flavor: Flavor) -> Flavor:
    """Add a flavor; registering a name twice is an error."""
    if flavor.name in _REGISTRY:
        raise ConfigError(f"flavor {flavor.name!r} is already registered; give yours another name")
    _REGISTRY[flavor.name] = flavor
    return flavor


def registered() -> dict[str, Flavor]:
    _register_builtins()
    return dict(_REGISTRY)


def choose(meta, wanted: str | None = None) -> tuple[str, Flavor]:
    """The flavor to load ``meta`` with: ``wanted`` if given, else the first native one it has."""
    flavors = registered()
    if wanted is not None:
        if wanted not in meta.flavors:
            raise FlavorNotFound(f"the model has no {wanted!r} flavor; it has {sorted(meta.flavors)}")
        if wanted not in flavors:
            raise FlavorNotFound(f"arrowscore cannot load flavor {wanted!r}; known flavors: {sorted(flavors)}")
        return wanted, flavors[wanted]
    # python_function is the fallback: every native flavor, built in or registered, goes first
    for name, flavor in sorted(flavors.items(), key=lambda kv: kv[0] == "python_function"):
        if name in meta.flavors:
            return name, flavor
    raise FlavorNotFound(
        f"the model's flavors {sorted(meta.flavors)} include none arrowscore can load "
        f"(known: {sorted(flavors)}); log it with a python_function flavor so any Python code can serve it"
    )


_trust_log = logging.getLogger("arrowscore.trust")
_noted: set[str] = set()


def note_code_runs(path, fmt: str) -> None:
    """Log once per model file (per process) that loading it runs code stored in it (pickle formats)."""
    key = str(Path(path).resolve())
    if key not in _noted:
        _noted.add(key)
        _trust_log.warning("loading %s (%s) runs code stored in the model file; load models only from sources "
                           "you trust", path, fmt)


_BUILTINS = ("onnx", "xgboost", "lightgbm", "sklearn", "pytorch", "python_function")


def _register_builtins() -> None:
    if all(name in _REGISTRY for name in _BUILTINS):
        return
    import importlib

    for name in _BUILTINS:
        if name not in _REGISTRY:
            module = importlib.import_module(f"flavors.{name}")
            register(module.FLAVOR)
