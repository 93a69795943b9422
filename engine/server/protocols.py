"""Request and response bodies: MLflow's scoring protocol (JSON, CSV), Arrow IPC and Parquet bodies,
and the Open Inference Protocol v2 (KServe, Triton clients), to and from Arrow record batches.

>>> batch, params = decode("application/json", b'{"dataframe_split": {"columns": ["x"], "data": [[1.5]]}}', None)
>>> batch.to_pydict(), params
({'x': [1.5]}, None)
>>> encode_mlflow(pa.table({"prediction": [3.0]}), "application/json")
(b'{"predictions":[3.0]}', 'application/json')
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa

from ..errors import ConfigError
from ..model import convert, payload

try:
    import orjson

    def _loads(body: bytes):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            try:
                return json.loads(body)  # NaN and Infinity, which orjson refuses and MLflow's clients send
            except RecursionError:  # nested deeper than Python's stack: orjson's message says so
                raise ValueError(str(exc)) from None

    def _dumps(doc) -> bytes:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - orjson is in the serve extra
    _loads = json.loads

    def _dumps(doc) -> bytes:
        return json.dumps(doc).encode()

__all__ = ["decode", "encode_mlflow", "negotiate", "decode_v2", "encode_v2", "ARROW", "PARQUET", "JSON", "CSV", "BINARY",
           "Unsupported"]

JSON, CSV = "application/json", "text/csv"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = ("application/vnd.apache.parquet", "application/x-parquet", "application/parquet")


class Unsupported(ConfigError):
    """A content type no protocol here reads (415)."""


def media_type(header: str | None) -> str:
    """The media type of a Content-Type / Accept value; a charset other than utf-8 is refused."""
    if not header or header == JSON:
        return JSON
    media, *params = [p.strip() for p in header.split(";")]
    for param in params:
        name, _, value = param.partition("=")
        if name.lower() == "charset" and value.strip('"').lower() not in ("utf-8", "utf8"):
            raise Unsupported(f"charset {value!r} is not supported; send utf-8")
    return media.lower()


def _batch(table) -> pa.RecordBatch:
    if isinstance(table, (pa.RecordBatch, payload.FloatRows)):  # FloatRows: the JSON fast path, merged later
        return table
    if all(c.num_chunks == 1 for c in table.columns):  # the usual case, without a copy
        return pa.RecordBatch.from_arrays([c.chunk(0) for c in table.columns], schema=table.schema)
    table = table.combine_chunks()
    batches = table.to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], table.schema)


def decode(content_type: str | None, body: bytes, schema: pa.Schema | None) -> tuple[pa.RecordBatch, dict | None]:
    """(batch, params) from a body in MLflow's protocol, Arrow IPC stream or Parquet. ``dataframe_split``
    rows of plain floats come as ``payload.FloatRows`` (rows not yet Arrow: the batcher merges them)."""
    media = media_type(content_type)
    if media == JSON:
        try:
            doc = _loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the body is not valid JSON ({exc})") from None
        if isinstance(doc, dict) and "parameters" in doc and "params" not in doc:  # Vertex AI's name
            doc = {**doc, "params": doc.pop("parameters")}
        table, params = payload.decode_doc(doc, schema=schema, float_rows=True)
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"'params' must be an object, got {type(params).__name__}")
        return _batch(table), params
    if media == CSV:
        if not body.strip():
            raise ConfigError("the CSV body is empty; send a header line and one line per row")
        return _batch(payload.read_csv(io.BytesIO(body), "the body", schema)), None
    if media == ARROW:
        try:
            return _batch(pa.ipc.open_stream(body).read_all()), None
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"the body is not an Arrow IPC stream ({exc})") from None
    if media in PARQUET:
        import pyarrow.parquet as pq

        try:
            return _batch(pq.read_table(io.BytesIO(body))), None
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"the body is not a Parquet file ({exc})") from None
    raise Unsupported(f"content type {media!r} is not supported; send {JSON}, {CSV}, {ARROW} or {PARQUET[0]}")


_NUMBERS = {}  # output schema -> whether it is one column of numbers (the JSON fast path)


def _predictions(table: pa.Table | pa.RecordBatch):
    """What MLflow answers in ``predictions``: one column's values, else one record per row."""
    schema = table.schema
    numbers = _NUMBERS.get(schema)
    if numbers is None:
        kind = schema.field(0).type if len(schema) == 1 else None
        numbers = kind is not None and (pa.types.is_floating(kind) or pa.types.is_integer(kind))
        if len(_NUMBERS) < 256:  # bounded: a model's outputs have one or a few schemas
            _NUMBERS[schema] = numbers
    if numbers:
        col = table.column(0)
        if col.null_count == 0:
            values = col.to_numpy(zero_copy_only=False)  # fast path: numbers straight to JSON
            return values.astype(np.float64) if values.dtype == np.float32 else values
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    return json.loads(payload.encode_json(table))["predictions"]


_ANSWERS = {JSON: JSON, "*/*": JSON, "application/*": JSON, ARROW: ARROW, **{p: PARQUET[0] for p in PARQUET}}


def negotiate(accept: str | None) -> str:
    """The answer's media type for an Accept header: the supported type of highest quality (the first
    of equals; ``*/*`` is JSON), JSON without one; Unsupported (406) when it names none of them.

    >>> negotiate("application/json;q=0.5, application/vnd.apache.arrow.stream;q=0.9")
    'application/vnd.apache.arrow.stream'
    """
    if not accept or accept == JSON or accept == "*/*":
        return JSON
    best, best_q = None, 0.0
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        answer = _ANSWERS.get(media.lower())
        if answer is not None and q > best_q:
            best, best_q = answer, q
    if best is None:
        raise Unsupported(f"cannot answer as {accept!r}; accept {JSON}, {ARROW} or {PARQUET[0]}")
    return best


def encode_mlflow(table: pa.Table | pa.RecordBatch, media: str = JSON) -> tuple[bytes, str]:
    """(body, content type) for the predictions in ``media``, what ``negotiate`` chose from the Accept
    header (the server negotiates before scoring, so a 406 costs no model call)."""
    if media == ARROW:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write(table)
        return sink.getvalue(), ARROW
    if media in PARQUET:
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_batches([table]), sink)
        return sink.getvalue(), PARQUET[0]
    return _dumps({"predictions": _predictions(table)}), JSON


# ---- Open Inference Protocol v2 -----------------------------------------------------------------------
_V2_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64, "BYTES": object}
_V2_NAMES = {np.dtype(v).name: k for k, v in _V2_TYPES.items() if v is not object}


def is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)


def v2_type(arrow_type: pa.DataType) -> str:
    while is_list(arrow_type):
        arrow_type = arrow_type.value_type
    try:
        return _V2_NAMES.get(convert.numpy_dtype(arrow_type).name, "BYTES")
    except (NotImplementedError, TypeError, pa.ArrowException):
        return "BYTES"


BINARY = "application/octet-stream"  # a v2 body with binary tensors (Inference-Header-Content-Length set)
_V2_EXTENSION_PARAMS = ("binary_data_output",)  # request parameters of the protocol, not of the model


def _bytes_elements(raw: memoryview, name: str) -> list[bytes]:
    """A BYTES tensor's binary form: each element a 4-byte little-endian length, then its bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ConfigError(f"input {name!r}: the binary BYTES data ends inside an element's length")
        size = int.from_bytes(raw[offset:offset + 4], "little")
        if offset + 4 + size > len(raw):
            raise ConfigError(f"input {name!r}: a binary BYTES element of {size} bytes runs past the data")
        out.append(bytes(raw[offset + 4:offset + 4 + size]))
        offset += 4 + size
    return out


def _binary_tensor(raw: memoryview, name: str, shape: list, kind: str) -> np.ndarray:
    count = int(np.prod(shape))
    if kind == "BYTES":
        values = _bytes_elements(raw, name)
        if len(values) != count:
            raise ConfigError(f"input {name!r}: {len(values)} binary BYTES elements for shape {shape}")
        return np.array([v.decode("utf-8", "replace") for v in values], dtype=object).reshape(shape)
    dtype = np.dtype(_V2_TYPES[kind]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ConfigError(f"input {name!r}: binary_data_size {len(raw)} is not shape {shape} of {kind} "
                          f"({count * dtype.itemsize} bytes)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _json_tensor(data, name: str, shape: list, kind: str) -> np.ndarray:
    """A JSON tensor's values as ``kind``, refusing what would change them: a null, text in a number
    tensor, a fraction or an out-of-range number in an integer one (numpy would truncate or wrap)."""
    try:
        raw = np.asarray(data, dtype=object if kind == "BYTES" else None)
        if raw.size != int(np.prod(shape)):
            raise ValueError(f"{raw.size} values")
    except ValueError as exc:
        raise ConfigError(f"input {name!r}: the data does not fit shape {shape} ({exc})") from None
    if kind == "BYTES":
        return raw.reshape(shape)
    target = np.dtype(_V2_TYPES[kind])
    if raw.dtype.kind not in "biuf":
        flat = raw.ravel()
        if any(v is None for v in flat):
            raise ConfigError(f"input {name!r} holds null values; Open Inference Protocol tensors have none: send "
                              "values, or nulls through MLflow's protocol (/invocations)")
        bad = next((v for v in flat if isinstance(v, (str, bytes, list, dict))), None)
        if bad is None:  # numbers numpy could not hold in one type: integers past 64 bits
            bad = next(v for v in flat if isinstance(v, int) and not -(1 << 63) <= v < (1 << 64))
            raise ConfigError(f"input {name!r}: {bad!r} is out of range for {kind}")
        bad = bad.item() if isinstance(bad, np.generic) else bad
        raise ConfigError(f"input {name!r}: {bad!r} is not a {kind} value")
    if target.kind == "b":
        if raw.dtype.kind != "b":
            raise ConfigError(f"input {name!r}: BOOL data must be true/false, got {raw.ravel()[0].item()!r}")
    elif target.kind in "iu":
        if raw.dtype.kind == "b":
            raise ConfigError(f"input {name!r}: true/false is not a {kind} value")
        if raw.dtype.kind == "f":
            fractions = raw[~np.isfinite(raw) | (raw != np.round(raw))]
            if fractions.size:
                raise ConfigError(f"input {name!r}: {fractions.ravel()[0].item()!r} is not an {kind} value")
        info = np.iinfo(target)
        if raw.size and (raw.min() < info.min or raw.max() > info.max):
            value = raw.min() if raw.min() < info.min else raw.max()
            raise ConfigError(f"input {name!r}: {value.item()!r} is out of range for {kind}")
    elif raw.dtype.kind == "b":
        raise ConfigError(f"input {name!r}: true/false is not a {kind} value")
    return raw.astype(target).reshape(shape)


def decode_v2(body: bytes, header_length: str | None = None) -> tuple[pa.RecordBatch, dict | None, str | None]:
    """(batch, params, request id) from an OIP v2 infer request: each input tensor a column (shape [n]
    or [n, 1] a plain column, [n, ...] a tensor column). With ``header_length`` (the
    Inference-Header-Content-Length header: the binary tensor data extension) the body is that many
    bytes of JSON, then the inputs that give ``parameters.binary_data_size`` as raw little-endian
    bytes, in input order."""
    binary = memoryview(b"")
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ConfigError(f"Inference-Header-Content-Length {header_length!r} is not a length within the "
                              f"body ({len(body)} bytes)")
        binary, body = memoryview(body)[int(header_length):], body[:int(header_length)]
    try:
        doc = _loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        hint = "" if header_length is not None else ("; a body with binary tensor data needs the "
                                                     "Inference-Header-Content-Length header (the JSON's length)")
        raise ConfigError(f"the body is not valid JSON ({exc}){hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ConfigError("an infer request needs 'inputs': a list of {name, shape, datatype, data}")
    columns, offset = {}, 0
    for i, tensor in enumerate(doc["inputs"]):
        size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(tensor, dict) else None
        needed = {"name", "shape", "datatype"} | (set() if size is not None else {"data"})
        if not isinstance(tensor, dict) or not needed <= set(tensor):
            raise ConfigError(f"input {i} needs 'name', 'shape', 'datatype' and 'data' (or "
                              "parameters.binary_data_size with the binary tensor data extension)")
        name, shape, kind = tensor["name"], tensor["shape"], str(tensor["datatype"]).upper()
        if kind not in _V2_TYPES:
            raise ConfigError(f"input {name!r}: datatype {kind!r} is not one of {sorted(_V2_TYPES)}")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ConfigError(f"input {name!r}: shape must be a list of sizes, the first the number of rows")
        if 0 in shape[1:]:
            raise ConfigError(f"input {name!r}: shape {shape} has a row size of 0; every dimension after "
                              "the first must be at least 1")
        if size is not None and "data" in tensor:
            raise ConfigError(f"input {name!r} has both 'data' and binary_data_size; send one of them")
        if size is not None:
            if header_length is None:
                raise ConfigError(f"input {name!r} has binary_data_size but the request has no "
                                  "Inference-Header-Content-Length header saying where the JSON ends")
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ConfigError(f"input {name!r}: binary_data_size {size!r} runs past the body's binary data "
                                  f"({len(binary) - offset} bytes left)")
            arr = _binary_tensor(binary[offset:offset + size], name, shape, kind)
            offset += size
        else:
            arr = _json_tensor(tensor["data"], name, shape, kind)
        if kind == "BYTES":
            arr = arr.astype(str)
        columns[name] = convert.to_arrow(arr)
    if offset != len(binary):
        raise ConfigError(f"the body has {len(binary) - offset} bytes of binary data that no input's "
                          "binary_data_size claims")
    rows = {len(c) for c in columns.values()}
    if len(rows) != 1:
        raise ConfigError(f"the inputs have different numbers of rows (first dimensions {sorted(rows)})")
    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise ConfigError("'parameters' must be an object")
    outputs = doc.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o
                                                                          for o in outputs)):
        raise ConfigError("'outputs' must be a list of {name, parameters}")
    wanted = _wanted_outputs(outputs, params)
    if params:
        params = {k: v for k, v in params.items() if k not in _V2_EXTENSION_PARAMS} or None
    return pa.RecordBatch.from_pydict(columns), params, (doc.get("id"), wanted)


def _wanted_outputs(outputs, params) -> dict | None:
    """{output name: as binary} the request names, or {"*": as binary} for all; None: all, as JSON."""
    everything = bool((params or {}).get("binary_data_output"))
    if outputs:
        return {o["name"]: bool((o.get("parameters") or {}).get("binary_data", everything)) for o in outputs}
    return {"*": True} if everything else None


def _binary_bytes(arr: np.ndarray, kind: str) -> bytes:
    if kind == "BYTES":
        parts = []
        for value in arr.ravel():
            raw = value if isinstance(value, bytes) else str(value).encode()
            parts += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=np.dtype(_V2_TYPES[kind]).newbyteorder("<")).tobytes()


def encode_v2(table: pa.Table, model: str, version: str | None, request: tuple) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): the outputs the request names (all by default), in JSON, or
    as raw bytes after the JSON where it asked for binary data."""
    request_id, wanted = request
    names = table.column_names
    if wanted and "*" not in wanted:
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ConfigError(f"the request asks for outputs {unknown}; the model has {names}")
        names = list(wanted)
    outputs, blobs = [], []
    for name in names:
        col = table.column(name).combine_chunks()
        if is_list(col.type):
            arr = convert.list_tensor(col, name)
        else:
            arr = col.to_numpy(zero_copy_only=False)
        kind = v2_type(col.type)
        out = {"name": name, "datatype": kind, "shape": list(arr.shape)}
        if wanted and wanted.get(name, wanted.get("*")):
            blobs.append(_binary_bytes(arr, kind))
            out["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            out["data"] = arr.astype(str).ravel().tolist() if kind == "BYTES" else arr.ravel()
        outputs.append(out)
    doc = {"model_name": model, "outputs": outputs}
    if version is not None:
        doc["model_version"] = str(version)
    if request_id is not None:
        doc["id"] = request_id
    header = _dumps(doc)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
