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

__all__ = ["decode_json", "decode_doc", "FloatRows", "read_input", "FORMATS", "encode_json", "write_output", "check_output", "jsonable"]

KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _tensor(value, what: str, names=None) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError:  # numpy refuses ragged nested lists
        raise ConfigError(f"the {what} rows have different shapes; every row must have the same shape") from None
    if arr.ndim == 0:
        raise ConfigError(f"the {what} value is one value ({value!r}), not a list with one entry per row")
    if arr.ndim > 1 and 0 in arr.shape[1:] and arr.shape[0]:
        raise ConfigError(f"the {what} rows hold no values (shape {arr.shape}); send one value per input column")
    if arr.dtype.kind == "U" and not all(isinstance(v, str) for v in np.asarray(value, dtype=object).ravel()):
        arr = np.asarray(value, dtype=object)  # numpy made strings of numbers beside a string: keep them apart
    if arr.dtype == object:  # same shapes, mixed Python values (numbers and nulls): one Arrow column each
        if arr.ndim > 2 or any(isinstance(v, (list, dict)) for v in arr.ravel()):
            raise ConfigError(f"the {what} rows have different shapes; every row must have the same shape")
        arr = arr.reshape(len(arr), -1) if arr.ndim == 2 else arr
        for i in range(arr.shape[1] if arr.ndim == 2 else 0):
            try:
                pa.array(arr[:, i].tolist())
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                column = f" (column {names[i]!r})" if names and i < len(names) and arr.shape[1] == len(names) else ""
                raise ConfigError(f"the {what} values in position {i}{column} mix types "
                                  f"({sorted({type(v).__name__ for v in arr[:, i]})}); send one type per "
                                  "position (null for a missing value)") from None
    return arr


def _tensor_or_table(value, names) -> pa.Table:
    if isinstance(value, dict):
        return pa.table({k: convert.to_arrow(_tensor(v, f"'inputs' column {k!r}"))
                         if not isinstance(v, list) or (v and isinstance(v[0], list)) else pa.array(v)
                         for k, v in value.items()})
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return convert.records_table(value)
    return convert.to_table(_tensor(value, "'instances'/'inputs'", names), names)


def decode_json(body: bytes | str, names: list[str] | None = None) -> tuple[pa.Table, dict | None]:
    """Decode a JSON request body into (table, params)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the input is not valid JSON ({exc})") from None
    return decode_doc(doc, names)


def decode_doc(doc, names: list[str] | None = None, schema: pa.Schema | None = None,
               float_rows: bool = False) -> tuple[pa.Table, dict | None]:
    """(table, params) from a parsed JSON request; with the model's input ``schema``, JSON numbers take
    the types it declares (JSON has one number type: a float32 input gets float32, as MLflow does).
    float_rows: ``dataframe_split`` rows of plain floats come back as ``FloatRows`` (the server merges those)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"the JSON input must be an object with one of the keys {list(KEYS)}")
    found = [k for k in KEYS if k in doc]
    if len(found) != 1:
        raise ConfigError(f"the JSON input must have exactly one of the keys {list(KEYS)}; it has {sorted(doc)}")
    key, value, params = found[0], doc[found[0]], doc.get("params")
    try:
        if key == "dataframe_split" and schema is not None:
            fast = _float_split(value, schema)
            if fast is not None:
                return (fast if float_rows else fast.to_batch()), params
        if schema is not None and names is None:
            names = schema.names
        table = _table(key, value, names)
        return (table if schema is None else _typed(table, schema)), params
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise ConfigError(f"the {key!r} values cannot be read as typed columns ({exc}); "
                          "every column needs values of one type") from None


_FLOAT_PLANS: dict[int, tuple] = {}


def _float_plan(schema: pa.Schema) -> tuple:
    """(schema, {name: numpy dtype} of its float columns, {column names: (batch schema, dtypes)}),
    computed once per schema object; batches of one column list share one schema object (cheap to
    compare when the server's batcher groups requests)."""
    found = _FLOAT_PLANS.get(id(schema))
    if found is None or found[0] is not schema:
        floats = {f.name: convert.numpy_dtype(f.type) for f in schema if pa.types.is_floating(f.type)}
        found = _FLOAT_PLANS[id(schema)] = (schema, floats, {})
    return found


class FloatRows:
    """Rows of float columns as one 2-D array (rows x columns), not yet Arrow: what ``dataframe_split``
    rows of plain numbers decode to. A server merges many requests' rows with one numpy concatenate and
    builds one batch for them all (building a batch costs about as much for 1 row as for 1,000).

    >>> schema = pa.schema([("a", pa.float64()), ("b", pa.float64())])
    >>> one = _float_split({"columns": ["a", "b"], "data": [[1.0, 2.0]]}, schema)
    >>> rows = FloatRows.concat([one, one])
    >>> rows.num_rows, rows.to_batch().to_pydict()
    (2, {'a': [1.0, 1.0], 'b': [2.0, 2.0]})
    """

    __slots__ = ("schema", "dtypes", "data")

    def __init__(self, schema: pa.Schema, dtypes: tuple, data: np.ndarray):
        self.schema, self.dtypes, self.data = schema, dtypes, data  # schema: one object per column list

    @property
    def num_rows(self) -> int:
        return self.data.shape[0]

    def to_batch(self) -> pa.RecordBatch:
        """One Arrow buffer sliced per column when the columns share a type, else one array a column."""
        arr, dtypes, n = self.data, self.dtypes, self.data.shape[0]
        if len(set(dtypes)) == 1:
            flat = pa.array(np.ascontiguousarray(arr.T, dtype=dtypes[0]).reshape(-1))
            arrays = [flat.slice(i * n, n) for i in range(len(dtypes))]
        else:
            arrays = [pa.array(np.ascontiguousarray(arr[:, i], dtype=d)) for i, d in enumerate(dtypes)]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    @staticmethod
    def concat(parts: list) -> FloatRows:
        """The rows of several parts of one layout (one schema object), in order."""
        first = parts[0]
        return FloatRows(first.schema, first.dtypes, np.concatenate([p.data for p in parts]))


def _float_split(value, schema: pa.Schema) -> FloatRows | None:
    """``dataframe_split`` rows of plain numbers for float inputs, as one 2-D array (the serving hot
    path: no per-column conversion); None when anything else is in it (nulls, strings, bools, ints,
    non-float inputs), for the general path to handle and name."""
    if not isinstance(value, dict) or len(value) > 3 or not value.get("columns"):
        return None
    columns, rows = value["columns"], value.get("data")
    _, floats, layouts = _float_plan(schema)
    key = tuple(columns) if isinstance(columns, list) else None
    layout = layouts.get(key)
    if layout is None:
        try:
            dtypes = tuple(floats[c] for c in columns)
        except (KeyError, TypeError):  # a column the signature does not declare as float
            return None
        if len(set(columns)) != len(columns):
            return None
        layout = (pa.schema([(c, schema.field(c).type) for c in columns]), dtypes)
        if len(layouts) < 64:  # bounded: clients choose the column lists
            layouts[key] = layout
    if not rows or (set(value) - {"columns", "data", "index"}):
        return None
    try:
        arr = np.asarray(rows)
    except ValueError:  # ragged
        return None
    # ints go the general way, where int -> float must be exact
    if arr.ndim != 2 or arr.shape[1] != len(columns) or arr.dtype.kind != "f":
        return None
    return FloatRows(layout[0], layout[1], arr)


def _typed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """JSON's numbers in the types the signature declares: floats as its float width, ints as its int or
    float type when every value fits exactly (anything else is left for the signature's own rules to
    judge and name)."""
    import pyarrow.compute as pc

    for i, name in enumerate(table.column_names):
        if name not in schema.names:
            continue
        want, have = schema.field(name).type, table.schema.field(i).type
        if want == have:
            continue
        try:
            if pa.types.is_floating(want) and pa.types.is_floating(have):
                table = table.set_column(i, name, pc.cast(table.column(i), want, safe=False))
            elif pa.types.is_integer(have) and (pa.types.is_integer(want) or pa.types.is_floating(want)):
                table = table.set_column(i, name, pc.cast(table.column(i), want, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return table


def _table(key: str, value, names) -> pa.Table:
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise ConfigError("'dataframe_split' must be an object with 'columns' and 'data' (and optionally 'index')")
        extra = set(value) - {"columns", "data", "index"}
        if extra:
            raise ConfigError(f"'dataframe_split' has unknown keys {sorted(extra)}; use columns, data, index")
        rows = value["data"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ConfigError("'dataframe_split' 'data' must be a list of rows, each a list of values")
        columns = value.get("columns") or [f"f{i}" for i in range(len(rows[0]) if rows else 0)]
        if len(set(map(str, columns))) != len(columns):
            raise ConfigError(f"'dataframe_split' names a column twice: {list(columns)}; column names must be unique")
        for i, r in enumerate(rows):
            if len(r) != len(columns):
                raise ConfigError(f"'dataframe_split' row {i} has {len(r)} values for the {len(columns)} "
                                  f"columns {list(columns)}; every row needs one value per column")
        cols = list(zip(*rows)) if rows else [[] for _ in columns]
        return pa.table({str(c): pa.array(list(v)) for c, v in zip(columns, cols)})
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise ConfigError("'dataframe_records' must be a list of objects, one per row")
        return convert.records_table(value)
    return _tensor_or_table(value, names)


FORMATS = ("json", "csv", "parquet")
_SUFFIXES = {".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def read_input(path: str | Path, names: list[str] | None = None, fmt: str | None = None,
               stdin=None) -> tuple[pa.Table, dict | None]:
    """Read a json, csv or parquet input: ``fmt`` when given, else the file's extension. ``-`` reads
    ``stdin`` (a binary stream), JSON unless ``fmt`` says otherwise, as ``mlflow models predict`` does."""
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"content type {fmt!r} is not one of {list(FORMATS)}")
    if str(path) == "-":
        data = stdin.read()
        return _decode(pa.BufferReader(data), fmt or "json", "stdin", len(data), data, names)
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"input {str(p)!r} is a directory; predict reads one file (.json, .csv or .parquet): "
                          "name a file, or score a Parquet directory with `arrowscore score`")
    if not p.is_file():
        raise ConfigError(f"input file {str(p)!r} does not exist")
    fmt = fmt or _SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot read {p.name!r}: the input must end in .json, .csv or .parquet, or name its "
                          "format with -t/--content-type json|csv|parquet")
    return _decode(p, fmt, repr(p.name), p.stat().st_size, None, names)


def _decode(source, fmt: str, name: str, size: int, data: bytes | None, names) -> tuple[pa.Table, dict | None]:
    if fmt == "json":
        return decode_json(data if data is not None else Path(source).read_bytes(), names)
    if fmt == "csv":
        if size == 0:
            raise ConfigError(f"input {name} is empty; a CSV input needs a header line and one line per row")
        return read_csv(source, f"input {name}"), None
    import pyarrow.parquet as pq

    try:
        return pq.read_table(source), None
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"cannot read {name} as Parquet ({exc}); the file is truncated or not Parquet: "
                          "rewrite it") from None


# pandas' missing-value words (its read_csv default), less its NaN spellings: those are numbers here
_CSV_MISSING = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
                "NULL", "None", "n/a", "null"]


def read_csv(source, what: str, schema: pa.Schema | None = None) -> pa.Table:
    """A CSV input with a header line, as pandas reads it for MLflow: ``nan`` and ``inf`` are numbers, an
    empty cell or NA is a missing value (null: refused in a required column, NaN in an optional one), and with
    the model's input ``schema`` numbers take the types it declares (a float32 column reads as float32)."""
    import pyarrow.csv as pcsv

    try:
        table = pcsv.read_csv(source, convert_options=pcsv.ConvertOptions(null_values=_CSV_MISSING))
    except pa.ArrowInvalid as exc:
        raise ConfigError(f"{what} cannot be read as CSV ({exc}); send a header line and one line per row") from None
    if table.num_rows == 0:
        raise ConfigError(f"{what} has a header line and no rows: the first line of a CSV input names the columns "
                          f"(it read {table.column_names[:8]}), and each line after it is a row")
    return table if schema is None else _typed(table, schema)


def jsonable(v):
    """A value from Arrow's to_pylist as JSON takes it: NaN -> null, bytes -> base64, datetimes -> ISO."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, bytes):
        import base64

        return base64.b64encode(v).decode()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, (list, tuple)):  # tuples: a map column's (key, value) pairs
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
    p = check_output(path)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, p)
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        nested = [f.name for f in table.schema if pa.types.is_nested(f.type)]
        if nested:
            raise ConfigError(f"cannot write {p.name!r}: CSV has no cell type for the list/struct/map columns "
                              f"{nested}; write .json or .parquet")
        buf = io.BytesIO()
        pcsv.write_csv(table, buf)
        p.write_bytes(buf.getvalue())
    else:
        p.write_text(encode_json(table) + "\n")


def check_output(path: str | Path) -> Path:
    """The output file's path, once its extension is one we write and its directory exists (call before predicting)."""
    p = Path(path)
    if p.suffix.lower() not in (".parquet", ".pq", ".csv", ".json"):
        raise ConfigError(f"cannot write {p.name!r}: the output must end in .json, .csv or .parquet")
    if p.is_dir():
        raise ConfigError(f"output {str(p)!r} is a directory; name a file in it (.json, .csv or .parquet)")
    parent = p.parent
    if not parent.is_dir():
        raise ConfigError(f"output directory {str(parent)!r} does not exist; create it first, or write elsewhere")
    return p
