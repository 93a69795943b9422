"""Kafka messages <-> Arrow batches (confluent-kafka messages in, produce arguments out).

Two value formats:
- ``json``: one JSON object per message, one row;
- ``arrow``: an Arrow IPC stream per message, any number of rows.
Every decoded row carries ``_msg`` (its message's index in the micro-batch) and the pass-through
columns ``_key``, ``_partition``, ``_offset``, ``_timestamp`` (ms since the epoch).

    tables, bad = decode(messages, "json")    # confluent_kafka Messages -> Arrow tables (+ _msg, _key, ...)
    bad                                       # [(index, reason), ...] for the undecodable ones
    for index, value in encode(scored, "json"): ...   # one output value per input message

A micro-batch decodes to one table. Messages whose values cannot share one Arrow schema (a number
here, a string there; Arrow schemas that do not unify) decode to one table per set that can, so the
model's signature, not the first message, decides which of them are scored.
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

__all__ = ["decode", "encode", "FORMATS", "PASS_THROUGH", "RESERVED"]

FORMATS = ("json", "arrow")
PASS_THROUGH = ("_key", "_partition", "_offset", "_timestamp")
RESERVED = ("_msg", *PASS_THROUGH)  # the columns decode adds: a message field of one of these names is refused
_RESERVED = frozenset(RESERVED)
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)


def _meta_columns(msgs: list, index, keep) -> dict:
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


def _reserved(name: str) -> str:
    return (f"field {name!r} is named like a column arrowscore adds to every row ({', '.join(RESERVED)}); "
            "rename it in the producer")


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


def _json_tables(rows: list, index: list, bad: list) -> list[tuple[pa.Table, list]]:
    """[(table, message index per row)]: one table from every row in the usual case, built at C level."""
    try:
        data = records_table(rows)
    except _ARROW_ERRORS:
        data = None
    if data is not None and not set(RESERVED).intersection(data.column_names):
        return [(data, index)]
    kept = []
    for r, row in enumerate(rows):
        clash = [n for n in RESERVED if n in row]
        if clash:
            bad.append((index[r], _reserved(clash[0])))
        else:
            kept.append(r)
    return _json_groups([rows[r] for r in kept], [index[r] for r in kept], bad)


def _json_groups(rows: list, index: list, bad: list) -> list[tuple[pa.Table, list]]:
    """Rows whose values cannot share one column (a number here, a string there) go to separate tables,
    each value joining the first table whose column type it fits or widens (int to double, more struct
    fields); a null fits any. Values Arrow cannot hold at all are rejected with the reason."""
    if not rows:
        return []
    try:
        return [(records_table(rows), index)]
    except _ARROW_ERRORS:
        pass
    mixed = []
    for name in dict.fromkeys(k for row in rows for k in row):
        try:
            pa.array([row.get(name) for row in rows])
        except _ARROW_ERRORS:
            mixed.append(name)
    groups: list[tuple[dict, list]] = []  # (column types so far, row positions)
    for r, row in enumerate(rows):
        types = _value_types(row, mixed, index[r], bad)
        if types is None:
            continue
        for have, members in groups:
            merged = _merged(have, types)
            if merged is not None:
                have.update(merged)
                members.append(r)
                break
        else:
            groups.append((types, [r]))
    out = []
    for _, members in groups:
        try:
            out.append((records_table([rows[r] for r in members]), [index[r] for r in members]))
        except _ARROW_ERRORS:  # types that agree one by one but not in one column: one table per message
            out.extend((records_table([rows[r]]), [index[r]]) for r in members)
    return out


def _value_types(row: dict, names: list, i: int, bad: list) -> dict | None:
    """{name: Arrow type of the row's value} for the non-null ``names``; None (and a reason) if Arrow cannot hold one."""
    types = {}
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        try:
            types[name] = pa.array([value]).type
        except _ARROW_ERRORS as exc:
            bad.append((i, f"field {name!r} is {type(value).__name__} {value!r}, which Arrow cannot hold: {exc}"))
            return None
    return types


def _merged(have: dict, types: dict) -> dict | None:
    """``types`` widened to fit ``have`` where both name a column, or None where one cannot hold the other."""
    out = {}
    for name, t in types.items():
        if name in have:
            try:
                t = _promote(have[name], t)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                return None
        out[name] = t
    return out


def _promote(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """The type both ``a`` and ``b`` values fit, as concat_tables(promote_options="permissive") finds it."""
    return pa.unify_schemas([pa.schema([("v", a)]), pa.schema([("v", b)])],
                            promote_options="permissive").field("v").type


def _arrow_tables(msgs: list) -> tuple[list, list, list]:
    tables, ids, bad = [], [], []
    for i, m in enumerate(msgs):
        value = m.value()  # a new bytes object on every call: read once
        if value is None:
            bad.append((i, "value is null (a tombstone), not an Arrow IPC stream"))
            continue
        try:
            table = pa.ipc.open_stream(value).read_all()
        except (pa.ArrowInvalid, TypeError, OSError) as exc:
            bad.append((i, f"value is not an Arrow IPC stream: {exc}"))
            continue
        if not _RESERVED.isdisjoint(names := table.schema.names):
            bad.append((i, _reserved(next(n for n in RESERVED if n in names))))
            continue
        tables.append(table)
        ids.append(i)
    return tables, ids, bad


def _arrow_groups(tables: list, ids: list) -> list[tuple[pa.Table, np.ndarray]]:
    """[(table, message index per row)]: one table in the usual case; else each message joins the first
    table whose schema its own unifies with (permissive promotion), or starts one."""
    try:
        return [(pa.concat_tables(tables, promote_options="permissive"), _row_ids(tables, ids))]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    groups: list[list] = []  # [schema so far, tables, message indexes]
    for table, i in zip(tables, ids):
        for group in groups:
            try:
                group[0] = pa.unify_schemas([group[0], table.schema], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                continue
            group[1].append(table)
            group[2].append(i)
            break
        else:
            groups.append([table.schema, [table], [i]])
    return [(pa.concat_tables(members, promote_options="permissive"), _row_ids(members, member_ids))
            for _, members, member_ids in groups]


def _row_ids(tables: list, ids: list) -> np.ndarray:
    return np.repeat(np.asarray(ids, np.int32), [t.num_rows for t in tables])


def decode(msgs: list, fmt: str, keep=PASS_THROUGH) -> tuple[list[pa.Table], list]:
    """([table, ...] of the decodable messages' rows with _msg and the ``keep`` pass-through columns,
    [(index, reason)] of the rest, by index). One table unless values cannot share one schema. A message
    with a field named like a column decode adds (``RESERVED``) is one of the rest. Arrow IPC messages stay
    the table's chunks, uncopied: a caller scoring slices combines each slice while it is small enough to
    stay in the CPU's cache."""
    if fmt == "json":
        rows, index, bad = _json_rows(msgs)
        parts = _json_tables(rows, index, bad) if rows else []
    elif fmt == "arrow":
        tables, ids, bad = _arrow_tables(msgs)
        parts = _arrow_groups(tables, ids) if tables else []
    else:
        raise ConfigError(f"value format {fmt!r} is not one of {FORMATS}")
    tables = []
    for data, index in parts:
        if not data.num_rows:
            continue
        for name, column in _meta_columns(msgs, index, keep).items():
            data = data.append_column(name, column)
        tables.append(data)
    return tables, sorted(bad)


def encode(out: pa.RecordBatch | pa.Table, fmt: str) -> Iterable[tuple[int, bytes]]:
    """(message index, value) per input message, from output rows that carry ``_msg`` (a message's rows together)."""
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
            writer.write(data.slice(start, end - start))
        yield int(ids[start]), sink.getvalue()
