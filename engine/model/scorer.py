"""The scorer: one hot path, ``RecordBatch -> model input -> predict -> RecordBatch``, that every mode calls.

>>> import tempfile, engine, pyarrow as pa
>>> path = engine.save_model(tempfile.mkdtemp() + "/m", lambda df: df["x"] * 2,
...                          signature=pa.schema([("x", pa.float64())]))
>>> model = engine.load_model(path)
>>> model.score_batch(pa.record_batch({"x": [1.0, 2.0]})).to_pydict()
{'prediction': [2.0, 4.0]}
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pyarrow as pa

import flavors

from . import convert, uris
from ..errors import EngineError, ScoringError, SchemaError
from .inputs import InputPlan
from .mlmodel import ModelMeta, read_mlmodel
from .outputs import OutputPlan, schema_from_tensors
from .params import ParamsPlan
from .device import device_of, is_gpu
from .requirements import warn_once

__all__ = ["Model", "load_model"]

log = logging.getLogger("arrowscore.model")
PLACED = ("pytorch", "onnx", "python_function")  # flavors that take model_config's device (pyfunc: the model's code)


class Model:
    """A loaded model: everything about its input and output is decided here, once."""

    def __init__(self, meta: ModelMeta, flavor: str, predictor: flavors.Predictor, feature_columns=None):
        self.meta = meta
        self.flavor = flavor
        self.predictor = predictor
        sig = meta.signature
        self._inputs = InputPlan(sig, predictor, feature_columns)
        self._outputs = OutputPlan(sig)
        self._params = ParamsPlan(sig.params)
        self._fixed_params = self._params.resolve(None) if predictor.accepts_params else None
        self._empty_schema = self._outputs.schema
        if self._empty_schema is None and predictor.output_specs:
            self._empty_schema = schema_from_tensors(predictor.output_specs)

    @property
    def path(self) -> Path:
        return self.meta.path

    @property
    def signature(self):
        return self.meta.signature

    @property
    def input_schema(self) -> pa.Schema | None:
        """Arrow schema of the signature's inputs (for tensor models, list columns); None if unsigned."""
        return self.meta.signature.input_schema()

    @property
    def output_schema(self) -> pa.Schema | None:
        """Arrow schema of the outputs: from the signature, else learned from the first scored batch."""
        return self._outputs.schema or self._empty_schema

    @property
    def input_columns(self) -> list[str] | None:
        """The columns the model reads, when known before seeing data (a Parquet reader reads only these)."""
        return self._inputs.columns

    def check_params(self, params: dict | None) -> dict | None:
        """Params resolved against the signature's params schema (defaults filled), or ConfigError."""
        return self._params.resolve(params)

    def score_batch(self, batch: pa.RecordBatch, params: dict | None = None) -> pa.RecordBatch:
        """The hot path: one RecordBatch in, one RecordBatch of outputs (same rows, same order) out."""
        rows = batch.num_rows
        if rows == 0:
            return self._empty()
        x, predict = self._inputs.build(batch)
        p = self._params.resolve(params) if params else self._fixed_params
        try:
            raw = predict(x, p)
        except EngineError:
            raise
        except Exception as exc:
            raise ScoringError(f"the {self.flavor} model raised {type(exc).__name__}: {exc}") from exc
        out = self._outputs.build(raw, rows)
        if self._empty_schema is None:
            self._empty_schema = out.schema
        return out

    def predict(self, data, params: dict | None = None) -> pa.Table:
        """Score any supported input (Arrow, pandas, polars, numpy, dict of columns); returns a Table."""
        if params:
            params = self.check_params(params)  # a bad param fails even on empty input
        table = convert.to_table(data, self._names_for_arrays())
        if table.num_rows == 0:
            return pa.Table.from_batches([self._empty()])
        out = [self.score_batch(b, params) for b in table.combine_chunks().to_batches()]
        return pa.Table.from_batches(out)

    def _names_for_arrays(self) -> list[str] | None:
        specs = self.meta.signature.inputs or self.predictor.tensor_specs or ()
        names = [s.name for s in specs]
        return names if names and all(names) else None

    def _empty(self) -> pa.RecordBatch:
        if self._empty_schema is None:
            raise SchemaError("cannot score an empty batch: the model has no output signature, so the shape of an "
                              "empty result is unknown; pass at least one row")
        return pa.RecordBatch.from_pylist([], self._empty_schema)

    def __repr__(self) -> str:
        return f"Model(path={str(self.path)!r}, flavor={self.flavor!r})"


def load_model(uri: str | os.PathLike, *, flavor: str | None = None, model_config: dict | None = None,
               feature_columns: list[str] | None = None, cache_dir: str | os.PathLike | None = None,
               shared_cpu: bool = False, small_batches: bool = False) -> Model:
    """Load a model from a path, file://, runs:/, models:/ or remote URI into a scorer.

    flavor: force one of the model's flavors (default: the native one, python_function last).
    model_config: overrides for a python_function model's ``model_config``.
    feature_columns: scalar columns, in order, that make up a tensor input.
    shared_cpu: the model shares the CPUs with other busy threads (batch runners set it): model
        libraries are told not to spin idle threads.
    small_batches: the caller scores small batches (servers set it): tree models (XGBoost, LightGBM,
        scikit-learn's trees and forests) get a compiled path for them (``flavors.compiled``; ``model_config={"compiled":
        False}`` turns it off).
    """
    started = time.perf_counter()
    path = uris.resolve(uri, cache_dir)
    meta = read_mlmodel(path)
    name, chosen = flavors.choose(meta, flavor)
    conf = dict(meta.flavors[name])
    if model_config:
        conf["config"] = {**(conf.get("config") or {}), **model_config}
    warn_once(path, name)
    device = device_of(conf.get("config"))
    if name not in PLACED and is_gpu(device):
        log.warning("device %s asked for, but %s models run where their library puts them (the CPU here): only "
                    "%s models are placed on a device", device, name, " and ".join(PLACED))
    predictor = chosen.load(meta, conf, flavors.LoadOptions(shared_cpu=shared_cpu, small_batches=small_batches))
    log.debug("loaded %s (flavor %s) from %s in %.3f s", os.fspath(uri), name, path, time.perf_counter() - started)
    return Model(meta, name, predictor, feature_columns)
