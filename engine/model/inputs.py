"""Signature enforcement and model-input building, on Arrow, decided once per batch schema.

An ``InputPlan`` is built when a model loads. For each new batch schema it chooses, once, one small
feed object that knows which columns to take, which safe casts to apply and how to shape them:
``MatrixFeed`` (one 2-D array), ``FrameFeed`` (pandas), ``ColumnTensorFeed`` (a column signature
feeding named tensors), ``TensorFeed`` (tensor signatures, from list or scalar columns) and
``ColumnarTensorFeed`` (scalar columns fed column-major to big batches). Every later batch with that
schema only calls ``feed.build(batch)``: no per-batch dispatch. Casts (``casts``) are lossless or
raise SchemaError.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import convert
from ..errors import SchemaError, SchemaMismatch
from .casts import cast, cast_target, cast_tensor, is_numeric
from .signature import Signature, TensorSpec

__all__ = ["InputPlan"]


class _Columns:
    """A column signature's (or an unsigned model's) columns for one batch schema: which to take, casts
    to apply, optional columns the batch lacks (filled with nulls), which must hold no nulls."""

    def __init__(self, indices, names, casts, required, fills, width: int):
        self.indices, self.names, self.casts, self.required, self.fills = indices, names, casts, required, fills
        self.select = indices != list(range(width))  # False: the batch already is those columns in order

    def take(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        sub = batch.select(self.indices) if self.select else batch
        if not (self.casts or self.fills):
            return sub
        arrays = list(sub.columns)
        for pos, target in self.casts:
            arrays[pos] = cast(arrays[pos], target, self.names[pos])
        names = list(self.names)
        for pos, name, t in self.fills:
            arrays.insert(pos, pa.nulls(batch.num_rows, t))
            names.insert(pos, name)
        return pa.RecordBatch.from_arrays(arrays, names)

    def check_nulls(self, sub: pa.RecordBatch) -> None:
        nulls = [self.names[i] for i in self.required if sub.column(i).null_count]
        if nulls:
            raise SchemaError(f"columns {nulls} hold nulls, which the model cannot take; fill or drop those "
                              "rows, or log the model with those columns optional")


class MatrixFeed:
    """Columns -> one 2-D array (missing optional values as NaN)."""

    def __init__(self, cols: _Columns, plan: "InputPlan"):
        self.cols, self.predict, self.order = cols, plan.predict, plan.order
        self.nullable = bool(cols.fills) or len(cols.required) != len(cols.names)
        self.dtype = (plan.dtype or np.dtype(np.float64)) if self.nullable else plan.dtype

    def build(self, batch: pa.RecordBatch):
        sub = self.cols.take(batch)
        if self.nullable:
            self.cols.check_nulls(sub)
            return convert.matrix(sub, self.dtype, self.order, null_to_nan=True), self.predict
        return convert.matrix(sub, self.dtype, self.order), self.predict


class FrameFeed:
    """Columns -> a pandas DataFrame (python_function models)."""

    def __init__(self, cols: _Columns, plan: "InputPlan"):
        self.cols, self.predict = cols, plan.predict

    def build(self, batch: pa.RecordBatch):
        sub = self.cols.take(batch)
        self.cols.check_nulls(sub)
        return sub.to_pandas(), self.predict


class ColumnTensorFeed:
    """A column signature feeding tensor inputs (ONNX): by name, or all columns into the single input."""

    def __init__(self, cols: _Columns, plan: "InputPlan"):
        self.cols, self.predict = cols, plan.predict
        model = {m.name: m for m in plan.model_tensors}
        names = list(cols.names)
        for pos, name, _ in cols.fills:
            names.insert(pos, name)
        if all(n in model for n in names):  # one tensor per column, by name
            self.tensors = [model[n] for n in names]
            self.single = None
        elif len(plan.model_tensors) == 1:  # every column into the one input
            self.tensors, self.single = None, plan.model_tensors[0]
        else:
            raise SchemaError(f"the model's inputs {list(model)} do not match the signature columns "
                              f"{cols.names}; re-log the model with a tensor signature")

    def build(self, batch: pa.RecordBatch):
        sub = self.cols.take(batch)
        if self.single is not None:  # convert.matrix refuses nulls itself, naming the columns
            m = self.single          # (a check before it wrapped every column: 1 us each, most of a 1-row call)
            return {m.name: cast_tensor(convert.matrix(sub), m.dtype, m.name)}, self.predict
        self.cols.check_nulls(sub)
        feed = {}
        for m, col in zip(self.tensors, sub.columns):
            arr = cast_tensor(col.to_numpy(zero_copy_only=False), m.dtype, m.name)
            feed[m.name] = arr.reshape((-1, *[d if d > 0 else 1 for d in m.row_shape]))
        return feed, self.predict


class _ListSource:
    """A tensor from one list column."""

    def __init__(self, index: int, name: str):
        self.index, self.name = index, name

    def array(self, batch: pa.RecordBatch, dtype: np.dtype | None = None) -> np.ndarray:  # _shaped converts
        return convert.list_tensor(batch.column(self.index), self.name)


class _ScalarSource:
    """A tensor from scalar columns, one per value of a row (None: every column, in order)."""

    def __init__(self, indices):
        self.indices = indices

    def array(self, batch: pa.RecordBatch, dtype: np.dtype | None = None) -> np.ndarray:
        """floating-point columns become ``dtype`` (when floating-point too) in the one copy; ``_shaped``
        checks and converts anything else"""
        return convert.matrix(batch if self.indices is None else batch.select(self.indices), dtype, floats_only=True)


def _shaped(arr: np.ndarray, spec: TensorSpec, feed: str) -> np.ndarray:
    arr = cast_tensor(arr, spec.dtype, feed)
    want = spec.row_shape
    if len(want) == 0 and arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if len(want) != arr.ndim - 1 or any(w > 0 and w != g for w, g in zip(want, arr.shape[1:])):
        if int(np.prod(arr.shape[1:])) == int(np.prod([abs(w) for w in want])) and all(w > 0 for w in want):
            return arr.reshape((-1, *want))
        raise SchemaError(f"input {feed!r} has rows of shape {arr.shape[1:]}, the model wants "
                          f"{tuple(want)} (-1 means any); reshape the data first")
    return arr


class TensorFeed:
    """A tensor signature: one source (list column or scalar columns) per tensor, shaped as the spec says."""

    def __init__(self, sources: list, plan: "InputPlan"):
        self.sources, self.specs, self.names, self.predict = sources, plan.specs, plan.feed_names, plan.predict
        self.as_dict = plan.kind == "tensors" or len(sources) != 1

    def build(self, batch: pa.RecordBatch):
        arrays = [_shaped(src.array(batch, spec.dtype), spec, feed)
                  for src, spec, feed in zip(self.sources, self.specs, self.names)]
        if self.as_dict:
            return dict(zip(self.names, arrays)), self.predict
        return arrays[0], self.predict


class ColumnarTensorFeed(TensorFeed):
    """Scalar columns making up one 2-D tensor go column-major to the predictor's column entry point
    (contiguous copies, no strided transpose). Measured with benchmarks/bench_core.py on the ONNX MLP,
    against the row-major feed: as fast or faster at every batch size (1 row: 10 us added per call
    against 12.5; 1,024 rows: 1.06-1.22x the raw library against 1.25-1.30)."""

    def __init__(self, source: _ScalarSource, plan: "InputPlan"):
        super().__init__([source], plan)
        self.predict_columns = plan.predict_columns

    def build(self, batch: pa.RecordBatch):
        where = self.sources[0].indices
        sub = batch if where is None else batch.select(where)
        spec = self.specs[0]
        x = cast_tensor(convert.matrix(sub, spec.dtype, order="F", floats_only=True).T, spec.dtype, self.names[0])
        return {self.names[0]: x}, self.predict_columns


class InputPlan:
    """RecordBatch -> (model input, predict function to call with it).

    The input is a 2-D ndarray, a dict of tensors, or a pandas DataFrame, as the predictor asks;
    the function is the predictor's, or its column-major entry point when the batch's columns can
    feed that one. The feed that does it is chosen once per batch schema.
    """

    def __init__(self, signature: Signature, predictor, feature_columns=None):
        self.kind = predictor.input_kind
        self.order = predictor.order
        self.predict = predictor.predict
        self.predict_columns = predictor.predict_columns
        model_tensors = predictor.tensor_specs
        dtype = predictor.dtype
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.feature_columns = list(feature_columns) if feature_columns else None
        specs = signature.inputs
        if not specs and model_tensors:
            specs = model_tensors
        self.specs = specs or ()
        self.tensors = bool(self.specs) and isinstance(self.specs[0], TensorSpec)
        self.model_tensors = model_tensors or ()
        self._cache: list[tuple[pa.Schema, object]] = []
        if self.tensors and model_tensors:
            # unnamed signature tensors feed the model's inputs in order
            self.feed_names = [m.name for m in model_tensors][: len(self.specs)]
        else:
            self.feed_names = [s.name or "input" for s in self.specs]

    # ---- what the model needs -------------------------------------------------------------
    @property
    def columns(self) -> list[str] | None:
        """Input columns the model reads, when the signature names them (None: it decides per batch)."""
        if self.feature_columns:
            return list(self.feature_columns)
        if self.specs and not self.tensors and all(s.name for s in self.specs):
            return [s.name for s in self.specs]
        return None

    # ---- per batch ------------------------------------------------------------------------
    def build(self, batch: pa.RecordBatch):
        schema = batch.schema
        for known, feed in self._cache:
            if known.equals(schema):
                break
        else:
            try:
                feed = self._choose(schema)
            except SchemaMismatch:
                raise
            except SchemaError as exc:  # decided from the schema alone: every row of such a batch fails
                raise SchemaMismatch(str(exc)) from None
            self._cache = [(schema, feed)] + self._cache[:3]
        return feed.build(batch)

    def _choose(self, schema: pa.Schema):
        """The feed for batches of this schema."""
        if self.tensors:
            return self._tensor_feed(schema)
        cols = self._columns(schema) if self.specs else self._unsigned(schema)
        return {"matrix": MatrixFeed, "frame": FrameFeed}.get(self.kind, ColumnTensorFeed)(cols, self)

    def _columns(self, schema: pa.Schema) -> _Columns:
        names = schema.names
        missing = [s.name for s in self.specs if s.required and s.name not in names]
        if missing:
            raise SchemaError(f"the model needs columns {missing} that the input lacks (it has {names}); "
                              "add or rename those columns")
        indices, out_names, casts, required, fills = [], [], [], [], []
        for s in self.specs:
            if s.name not in names:
                if self.kind != "frame":
                    fills.append((len(out_names), s.name, s.type))
                continue
            i = names.index(s.name)
            target = cast_target(schema.field(i).type, s.type, s.name)
            if target is not None:
                casts.append((len(out_names), target))
            if s.required:
                required.append(len(out_names))
            indices.append(i)
            out_names.append(s.name)
        if self.kind == "matrix":
            casts = self._widen(schema, indices, out_names, dict(casts))
        return _Columns(indices, out_names, casts, required, fills, len(names))

    def _widen(self, schema, indices, names, casts: dict) -> list:
        """A matrix of mixed column types: cast explicitly to one type, so Arrow checks exactness."""
        types = [casts.get(k) or schema.field(i).type for k, i in enumerate(indices)]
        bad = [f"{n} ({t})" for n, t in zip(names, types) if not is_numeric(t)]
        if bad:
            raise SchemaError(f"the model takes a numeric matrix, but columns {bad} are not numeric; "
                              "drop or encode them first")
        if len(set(types)) <= 1:
            return sorted(casts.items())
        target = pa.float64()
        for k, (t, name) in enumerate(zip(types, names)):
            if t != target:
                casts[k] = cast_target(t, target, name, lossy_float=False) or target
        return sorted(casts.items())

    def _unsigned(self, schema: pa.Schema) -> _Columns:
        names = self.feature_columns or schema.names
        absent = [n for n in names if n not in schema.names]
        if absent:
            raise SchemaError(f"feature_columns {absent} are not in the input (it has {schema.names})")
        indices = [schema.get_field_index(n) for n in names]
        casts = self._widen(schema, indices, list(names), {}) if self.kind == "matrix" else []
        return _Columns(indices, list(names), casts, list(range(len(names))), [], len(schema.names))

    # ---- tensor signatures ------------------------------------------------------------------
    def _tensor_feed(self, schema: pa.Schema):
        names = schema.names
        sources = []
        for spec, feed in zip(self.specs, self.feed_names):
            if spec.name and spec.name in names:
                sources.append(_ListSource(names.index(spec.name), spec.name))
            elif feed in names:
                sources.append(_ListSource(names.index(feed), feed))
            elif len(self.specs) == 1:
                source = self._scalar_source(spec, schema)
                if isinstance(source, _ScalarSource) and self.predict_columns is not None \
                        and self.kind == "tensors" and len(spec.shape) == 2:
                    return ColumnarTensorFeed(source, self)
                sources.append(source)
            else:
                raise SchemaError(f"the model takes tensors {self.feed_names}; the input needs a list column "
                                  f"for each, named so (it has {names})")
        return TensorFeed(sources, self)

    def _scalar_source(self, spec: TensorSpec, schema: pa.Schema):
        names = schema.names
        lists = [f.name for f in schema if pa.types.is_nested(f.type)]
        if not self.feature_columns and len(lists) == 1 and len(names) == 1:
            return _ListSource(0, names[0])
        width = int(np.prod(spec.row_shape)) if spec.row_shape and min(spec.row_shape) > 0 else None
        cols = self.feature_columns or names
        absent = [c for c in cols if c not in names]
        if absent:
            raise SchemaError(f"feature_columns {absent} are not in the input (it has {names})")
        if width is not None and len(cols) != width:
            raise SchemaError(
                f"model input {self.feed_names[0]!r} is a {spec.dtype} tensor of {width} values per row; the input has "
                f"{len(cols)} columns {cols}; pass one list column named {self.feed_names[0]!r}, exactly {width} "
                "numeric columns, or feature_columns=[...] naming them in order")
        bad = [c for c in cols if not is_numeric(schema.field(c).type)]
        if bad:
            raise SchemaError(f"columns {bad} are not numeric, so they cannot make up tensor {self.feed_names[0]!r}")
        indices = [names.index(c) for c in cols]
        # None: the batch already is those columns in that order, so no select per batch
        return _ScalarSource(None if indices == list(range(len(names))) else indices)
