"""Kafka messages <-> Arrow batches (confluent-kafka messages in, produce arguments out).

Two value formats:
- ``json``: one JSON object per message, one row;
- ``arrow``: an Arrow IPC stream per message, any number of rows.
Every decoded row carries ``_msg`` (its message's index in the micro-batch) and the pass-through
columns ``_key``, ``_partition``, ``_offset``, ``_timestamp`` (ms since the epoch).

    batch, bad = decode(messages, "json")   # confluent_kafka Messages -> one RecordBatch (+ _msg, _key, ...)
    bad                                     # [(index, reason), ...] for the undecodable ones
    for index, value in encode(scored, "json"): ...   # one output value per input message
"""

from __future__ import annotations

import io
import json
from typing import Iterable

import numpy as np
import pyarrow as pa

from engine.errors import ConfigError
from engine.model.convert import records_table
from engine.model.payload import jsonable

__all__ = ["decode", "encode", "FORMATS", "PASS_THROUGH"]

FORMATS = ("json", "arrow")
PASS_THROUGH = ("_key", "_partition", "_offset", "_timestamp")


def _meta_columns(msgs: list, index: list[int], keep) -> dict:
    """_msg and the kept pass-through columns; computed once per message, then repeated for its rows."""
    ids = np.asarray(index, np.int32)
    if len(ids) and (np.diff(ids) == 0).any():  # several rows per message (Arrow IPC values)
        starts = np.flatnonzero(np.r_[True, np.diff(ids) != 0])
        unique = ids[starts]
        take = pa.array(np.repeat(np.arange(len(unique)), np.diff(np.r_[starts, len(ids)])))
    else:
        unique, take = ids, None
    picked = [msgs[i] for i in unique.tolist()]
    build = {
        "_key": lambda: pa.array([k.decode("utf-8", "replace") if (k := m.key()) is not None else None
                                  for m in picked], pa.string()),
        "_partition": lambda: pa.array([m.partition() for m in picked], pa.int32()),
        "_offset": lambda: pa.array([m.offset() for m in picked], pa.int64()),
        "_timestamp": lambda: pa.array([m.timestamp()[1] for m in picked], pa.int64()),
    }
    per_message = {name: build[name]() for name in PASS_THROUGH if name in keep}
    out = {"_msg": pa.array(ids, pa.int32())}
    out.update({k: (v.take(take) if take is not None else v) for k, v in per_message.items()})
    return out


def _json_rows(msgs: list) -> tuple[list, list, list]:
    rows, index, bad = [], [], []
    for i, m in enumerate(msgs):
        try:
            row = json.loads(m.value())
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            bad.append((i, f"value is not valid JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            bad.append((i, f"value is JSON {type(row).__name__}, not an object with one field per column"))
            continue
        rows.append(row)
        index.append(i)
    return rows, index, bad


def _arrow_rows(msgs: list) -> tuple[list, list, list]:
    tables, index, bad = [], [], []
    for i, m in enumerate(msgs):
        if m.value() is None:
            bad.append((i, "value is null (a tombstone), not an Arrow IPC stream"))
            continue
        try:
            table = pa.ipc.open_stream(m.value()).read_all()
        except (pa.ArrowInvalid, TypeError, OSError) as exc:
            bad.append((i, f"value is not an Arrow IPC stream: {exc}"))
            continue
        tables.append(table)
        index.extend([i] * table.num_rows)
    return tables, index, bad


def decode(msgs: list, fmt: str, keep=PASS_THROUGH) -> tuple[pa.RecordBatch | None, list]:
    """(rows of every decodable message with _msg and the ``keep`` pass-through columns, [(index, reason)]
    of the rest). A message field named like any pass-through column is refused."""
    if fmt == "json":
        rows, index, bad = _json_rows(msgs)
        if not rows:
            return None, bad
        try:
            data = records_table(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            data, index, bad = _json_one_by_one(rows, index, bad)
            if data is None:
                return None, bad
    elif fmt == "arrow":
        tables, index, bad = _arrow_rows(msgs)
        if not tables:
            return None, bad
        try:
            data = pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(f"Arrow messages in one micro-batch have schemas that cannot be combined: {exc}") from None
    else:
        raise ConfigError(f"value format {fmt!r} is not one of {FORMATS}")
    data = data.combine_chunks()
    for name in ("_msg", *PASS_THROUGH):
        if name in data.column_names:
            raise ConfigError(f"message field {name!r} clashes with arrowscore's pass-through column of that name")
    for name, column in _meta_columns(msgs, index, keep).items():
        data = data.append_column(name, column)
    batches = data.to_batches()
    return (batches[0] if batches else None), bad


def _json_one_by_one(rows, index, bad):
    """Rows whose types cannot share one column (e.g. a number here, a list there): in each such column
    the first value's type wins, widened as Arrow's permissive promotion allows (int to double, more
    struct fields); the rows whose value cannot join it are rejected with the reason."""
    rejected, fields = {}, []
    for name in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(name) for row in rows]
        try:
            fields.append(pa.field(name, pa.array(values).type))
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
        kind = None
        for r, value in enumerate(values):
            if value is None or r in rejected:
                continue
            what = f"field {name!r} is {type(value).__name__} {value!r}"
            try:
                t = pa.array([value]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                rejected[r] = f"{what}, which Arrow cannot hold: {exc}"
                continue
            try:
                kind = t if kind is None else _promote(kind, t)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                rejected[r] = f"{what}; the other messages have {kind}"
        fields.append(pa.field(name, kind or pa.null()))
    bad.extend((index[r], reason) for r, reason in rejected.items())
    keep = [r for r in range(len(rows)) if r not in rejected]
    if not keep:
        return None, [], bad
    return pa.Table.from_pylist([rows[r] for r in keep], schema=pa.schema(fields)), [index[r] for r in keep], bad


def _promote(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The type both ``a`` and ``b`` values fit, as concat_tables(promote_options="permissive") finds it."""
    return pa.unify_schemas([pa.schema([("v", a)]), pa.schema([("v", b)])],
                            promote_options="permissive").field("v").type


def encode(out: pa.RecordBatch, fmt: str) -> Iterable[tuple[int, bytes]]:
    """(message index, value) per input message, from an output batch that carries ``_msg``."""
    data = out.drop_columns(["_msg"])
    if fmt == "json":
        msg = out.column("_msg").to_pylist()
        names = data.schema.names
        columns = [c.to_pylist() for c in data.columns]
        for r, i in enumerate(msg):
            yield i, json.dumps({n: jsonable(col[r]) for n, col in zip(names, columns)}).encode()
        return
    ids = out.column("_msg").to_numpy()
    bounds = np.flatnonzero(np.r_[True, np.diff(ids) != 0, True]) if len(ids) else np.array([0])
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_batch(data.slice(start, end - start))
        yield int(ids[start]), sink.getvalue()
