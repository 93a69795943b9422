"""Request payloads in MLflow's serving formats (JSON, CSV, Parquet) <-> Arrow tables.

JSON keys, exactly one of: ``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``;
plus optional ``params``.

>>> table, params = decode_json(b'{"dataframe_records": [{"x": 1.0}], "params": {"k": 2}}')
>>> table.num_rows, params
(1, {'k': 2})
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import convert
from ..errors import ConfigError

__all__ = ["decode_json", "read_input", "encode_json", "write_output", "jsonable"]

KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _tensor_or_table(value, names) -> pa.Table:
    if isinstance(value, dict):
        return pa.table({k: convert.to_arrow(np.asarray(v)) if np.ndim(v) > 1 else pa.array(v) for k, v in value.items()})
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return pa.Table.from_pylist(value)
    arr = np.asarray(value)
    if arr.dtype == object:
        raise ConfigError("the 'instances'/'inputs' rows have different shapes; every row must have the same shape")
    return convert.to_table(arr, names)


def decode_json(body: bytes | str, names: list[str] | None = None) -> tuple[pa.Table, dict | None]:
    """Decode a JSON request body into (table, params)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the input is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"the JSON input must be an object with one of the keys {list(KEYS)}")
    found = [k for k in KEYS if k in doc]
    if len(found) != 1:
        raise ConfigError(f"the JSON input must have exactly one of the keys {list(KEYS)}; it has {sorted(doc)}")
    key, value, params = found[0], doc[found[0]], doc.get("params")
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise ConfigError("'dataframe_split' must be an object with 'columns' and 'data' (and optionally 'index')")
        extra = set(value) - {"columns", "data", "index"}
        if extra:
            raise ConfigError(f"'dataframe_split' has unknown keys {sorted(extra)}; use columns, data, index")
        rows = value["data"]
        columns = value.get("columns") or [f"f{i}" for i in range(len(rows[0]) if rows else 0)]
        cols = list(zip(*rows)) if rows else [[] for _ in columns]
        return pa.table({str(c): pa.array(list(v)) for c, v in zip(columns, cols)}), params
    if key == "dataframe_records":
        if not isinstance(value, list):
            raise ConfigError("'dataframe_records' must be a list of objects, one per row")
        return pa.Table.from_pylist(value), params
    return _tensor_or_table(value, names), params


def read_input(path: str | Path, names: list[str] | None = None) -> tuple[pa.Table, dict | None]:
    """Read a .json, .csv or .parquet input file (format from the extension)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"input file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".json":
        return decode_json(p.read_bytes(), names)
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(p), None
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return pq.read_table(p), None
    raise ConfigError(f"cannot read {p.name!r}: the input must end in .json, .csv or .parquet")


def jsonable(v):
    """A value from Arrow's to_pylist as JSON takes it: NaN -> null, bytes -> base64, datetimes -> ISO."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, bytes):
        import base64

        return base64.b64encode(v).decode()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v


def encode_json(table: pa.Table) -> str:
    """``{"predictions": ...}``: a list of values for one output column, else a list of records."""
    if table.num_columns == 1:
        preds = [jsonable(v) for v in table.column(0).to_pylist()]
    else:
        preds = [jsonable(r) for r in table.to_pylist()]
    return json.dumps({"predictions": preds})


def write_output(table: pa.Table, path: str | Path | None, out=None) -> None:
    """Write predictions to .json/.csv/.parquet by extension, or JSON to ``out`` when path is None."""
    if path is None:
        out.write(encode_json(table) + "\n")
        return
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, p)
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(table, buf)
        p.write_bytes(buf.getvalue())
    elif suffix == ".json":
        p.write_text(encode_json(table) + "\n")
    else:
        raise ConfigError(f"cannot write {p.name!r}: the output must end in .json, .csv or .parquet")
