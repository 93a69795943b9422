"""What a model returned -> an output RecordBatch, with the same column rules in every mode.

- named outputs (signature, dict keys, DataFrame columns, ONNX output names) keep their names;
- one unnamed output is ``prediction``: a scalar column, or a fixed-size list of k values per row;
- no signature: the same rules, applied to what predict returns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import convert
from ..errors import EngineError, ScoringError
from .signature import Signature

__all__ = ["OutputPlan", "PREDICTION", "schema_from_tensors"]

PREDICTION = "prediction"


class OutputPlan:
    def __init__(self, signature: Signature):
        specs = signature.outputs or ()
        self.names = [s.name for s in specs] if specs and all(s.name for s in specs) else None
        self.schema = signature.output_schema()
        single = self.names[0] if self.names and len(self.names) == 1 else PREDICTION
        self._single = [single]

    def build(self, raw, rows: int) -> pa.RecordBatch:
        try:
            if isinstance(raw, np.ndarray):  # the common case first: one array
                col = pa.array(raw) if raw.ndim == 1 and raw.dtype != object else convert.to_arrow(raw)
                batch = pa.RecordBatch.from_arrays([col], self._single)
            else:
                batch = self._other(raw)
        except EngineError:
            raise
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ScoringError(f"the model's output cannot become Arrow columns ({type(exc).__name__}: {exc}); "
                               "a model must return values of one type per output") from exc
        if batch.num_rows != rows:
            raise ScoringError(f"the model returned {batch.num_rows} rows for {rows} input rows; "
                               "a model must return one prediction per row")
        return batch

    def _other(self, raw) -> pa.RecordBatch:
        if isinstance(raw, pa.RecordBatch):
            return raw
        if isinstance(raw, pa.Table):
            return raw.combine_chunks().to_batches()[0] if raw.num_rows else pa.RecordBatch.from_pylist([], raw.schema)
        if isinstance(raw, dict):
            return pa.RecordBatch.from_arrays([convert.to_arrow(v) for v in raw.values()], [str(k) for k in raw])
        module = type(raw).__module__.split(".")[0]
        if module == "pandas" and hasattr(raw, "columns"):
            return self._frame(raw)
        if module == "polars" and hasattr(raw, "columns"):
            return self._other(raw.to_arrow())
        if isinstance(raw, (list, tuple)) and raw and all(hasattr(v, "__len__") and not isinstance(v, (str, bytes, dict)) for v in raw) \
                and self.names and len(raw) == len(self.names):
            return pa.RecordBatch.from_arrays([convert.to_arrow(v) for v in raw], self.names)
        return pa.RecordBatch.from_arrays([convert.to_arrow(raw)], self._single)

    def _frame(self, df) -> pa.RecordBatch:
        named = all(isinstance(c, str) for c in df.columns)
        if not named:
            if df.shape[1] == 1:
                names = self._single
            elif self.names and len(self.names) == df.shape[1]:
                names = self.names
            else:
                names = [f"{PREDICTION}_{c}" for c in df.columns]
            df = df.set_axis(names, axis=1)
        return pa.RecordBatch.from_pandas(df, preserve_index=False)


def schema_from_tensors(specs) -> pa.Schema | None:
    """The output schema a model's own tensor outputs produce under these rules (None: not knowable,
    e.g. a variable row width)."""
    fields = []
    for spec in specs:
        name = PREDICTION if len(specs) == 1 else spec.name
        dims = list(spec.row_shape)
        if dims == [1]:  # (rows, 1) becomes a scalar column, as convert.to_arrow does
            dims = []
        if any(d <= 0 for d in dims) or spec.dtype.kind in "OUS":
            return None
        t = pa.from_numpy_dtype(spec.dtype)
        for d in reversed(dims):
            t = pa.list_(t, d)
        fields.append(pa.field(name, t))
    return pa.schema(fields)
