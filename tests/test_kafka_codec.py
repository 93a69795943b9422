"""connectors.kafka.codec: Kafka message values <-> Arrow batches, without a broker.

The codec is pure data conversion: it only calls value(), key(), partition(), offset() and timestamp()
on confluent_kafka Messages. ``Msg`` below is a stand-in with those methods (plus topic() and headers());
the real consumer path is covered end to end in test_stream.py.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

from connectors.kafka.codec import FORMATS, PASS_THROUGH, decode, encode
from engine.errors import ConfigError


class Msg:
    """What the codec reads of a confluent_kafka.Message."""

    def __init__(self, value, key=None, partition=0, offset=0, timestamp_ms=0):
        self._value, self._key, self._partition, self._offset, self._ts = value, key, partition, offset, timestamp_ms

    def value(self):
        return self._value

    def key(self):
        return self._key

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def timestamp(self):
        return (1, self._ts)  # (TIMESTAMP_CREATE_TIME, ms since the epoch)

    def headers(self):
        return None

    def topic(self):
        return "in"


def js(**row) -> Msg:
    return Msg(json.dumps(row).encode())


def ipc(**columns) -> bytes:
    table = pa.table(columns)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_json_rows_with_every_pass_through_column():
    msgs = [Msg(b'{"x": 1.5, "s": "a"}', key=b"k0", partition=2, offset=10, timestamp_ms=1_700_000_000_000),
            Msg(b'{"x": 2, "s": null}', key=None, partition=3, offset=11, timestamp_ms=5)]
    (batch,), bad = decode(msgs, "json")
    assert bad == [] and FORMATS == ("json", "arrow")
    assert batch.schema == pa.schema([("x", pa.float64()), ("s", pa.string()), ("_msg", pa.int32()),
                                      ("_key", pa.string()), ("_partition", pa.int32()),
                                      ("_offset", pa.int64()), ("_timestamp", pa.int64())])
    assert batch.to_pydict() == {"x": [1.5, 2.0], "s": ["a", None], "_msg": [0, 1], "_key": ["k0", None],
                                 "_partition": [2, 3], "_offset": [10, 11], "_timestamp": [1_700_000_000_000, 5]}


@pytest.mark.parametrize("keep, columns", [((), ["x", "_msg"]), (("_offset",), ["x", "_msg", "_offset"]),
                                           (("_timestamp", "_key"), ["x", "_msg", "_key", "_timestamp"])])
def test_pass_through_columns_only_when_asked(keep, columns):
    (batch,), _ = decode([js(x=1)], "json", keep=keep)
    assert batch.schema.names == columns


def test_undecodable_json_messages_are_reported_by_index():
    msgs = [js(x=1), Msg(b"{not json"), Msg(b"[1, 2]"), Msg(None), Msg(b"\xff"), js(x=3)]
    (batch,), bad = decode(msgs, "json", keep=())
    assert batch.to_pydict() == {"x": [1, 3], "_msg": [0, 5]}
    assert [i for i, _ in bad] == [1, 2, 3, 4]
    assert bad[0][1].startswith("value is not valid JSON: Expecting property name")
    assert bad[1][1] == "value is JSON list, not an object with one field per column"
    assert "not NoneType" in bad[2][1] and "can't decode byte 0xff" in bad[3][1]


def test_nothing_decodable():
    assert decode([Msg(b"nope")], "json")[0] == []
    assert decode([], "arrow") == ([], [])
    assert decode([Msg(ipc(x=pa.array([], pa.float64())))], "arrow") == ([], [])  # no rows, nothing to score


def test_conflicting_types_decode_to_one_batch_per_type():
    """The model's signature decides which to score, not the first message (once, every message whose
    type differed from the first one's was rejected, the good ones too when the first was the odd one)."""
    msgs = [js(x="s", y="a"), js(x=1, y="b"), js(x=[1], y="c"), js(x=2.5, y="d"), js(x=None, y="e")]
    batches, bad = decode(msgs, "json", keep=())
    assert bad == []
    assert [b.to_pydict() for b in batches] == [
        {"x": ["s", None], "y": ["a", "e"], "_msg": [0, 4]},  # a null agrees with anything: the first that takes it
        {"x": [1.0, 2.5], "y": ["b", "d"], "_msg": [1, 3]},   # int and float widen to double (2.5 was once cut to 2)
        {"x": [[1]], "y": ["c"], "_msg": [2]}]
    assert [b.schema.field("x").type for b in batches] == [pa.string(), pa.float64(), pa.list_(pa.int64())]


def test_types_that_widen_stay_in_one_batch():
    (batch,), bad = decode([js(s={"a": 1}), js(s={"b": "t"}), js(v=[1]), js(v=[2.5])], "json", keep=())
    assert bad == [] and batch.schema.field("v").type == pa.list_(pa.float64())
    assert batch.to_pydict()["s"] == [{"a": 1, "b": None}, {"a": None, "b": "t"}, None, None]


def test_fields_missing_from_the_first_message_are_kept():
    assert [b.to_pydict() for b in decode([js(x=1), js(x=2, y=5)], "json", keep=())[0]] == [
        {"x": [1, 2], "y": [None, 5], "_msg": [0, 1]}]
    # the same when another message's types differ (a batch has the fields its own messages have)
    assert [b.to_pydict() for b in decode([js(x=1), js(x=[1]), js(x=2, y=5)], "json", keep=())[0]] == [
        {"x": [1, 2], "y": [None, 5], "_msg": [0, 2]}, {"x": [[1]], "_msg": [1]}]


def test_an_integer_too_large_for_arrow_is_one_bad_message():
    (batch,), bad = decode([js(x=1), Msg(b'{"x": 18446744073709551616}')], "json", keep=())
    assert batch.to_pydict() == {"x": [1], "_msg": [0]}
    assert bad == [(1, "field 'x' is int 18446744073709551616, which Arrow cannot hold: "
                       "Python int too large to convert to C long")]


def test_empty_objects_are_rows_without_fields():
    (batch,), bad = decode([Msg(b"{}"), Msg(b"{}")], "json", keep=("_offset",))
    assert bad == [] and batch.to_pydict() == {"_msg": [0, 1], "_offset": [0, 0]}


def test_arrow_messages_with_several_rows_repeat_their_message_columns():
    msgs = [Msg(ipc(x=[1.0, 2.0, 3.0]), key=b"a", offset=5), Msg(b"junk"), Msg(None),
            Msg(ipc(x=pa.array([], pa.float64()))), Msg(ipc(x=[4.0]), key=b"b", offset=7, partition=1)]
    (batch,), bad = decode(msgs, "arrow", keep=("_key", "_partition", "_offset"))
    assert batch.to_pydict() == {"x": [1.0, 2.0, 3.0, 4.0], "_msg": [0, 0, 0, 4], "_key": ["a", "a", "a", "b"],
                                 "_partition": [0, 0, 0, 1], "_offset": [5, 5, 5, 7]}
    assert [i for i, _ in bad] == [1, 2]
    assert bad[0][1].startswith("value is not an Arrow IPC stream: ")
    assert bad[1][1] == "value is null (a tombstone), not an Arrow IPC stream"  # once an AttributeError


def test_arrow_schemas_are_promoted_or_decoded_apart():
    (batch,), _ = decode([Msg(ipc(x=[1])), Msg(ipc(x=[1.5], y=["s"]))], "arrow", keep=())
    assert batch.schema == pa.schema([("x", pa.float64()), ("y", pa.string()), ("_msg", pa.int32())])
    assert batch.to_pydict() == {"x": [1.0, 1.5], "y": [None, "s"], "_msg": [0, 1]}
    # schemas that cannot be combined once stopped the stream; now each set that can is one batch
    msgs = [Msg(ipc(x=["s", "t"])), Msg(ipc(x=[1, 2])), Msg(ipc(x=[3.5])), Msg(ipc(x=["u"]), key=b"k")]
    batches, bad = decode(msgs, "arrow", keep=("_key",))
    assert bad == [] and [b.to_pydict() for b in batches] == [
        {"x": ["s", "t", "u"], "_msg": [0, 0, 3], "_key": [None, None, "k"]},
        {"x": [1.0, 2.0, 3.5], "_msg": [1, 1, 2], "_key": [None, None, None]}]


@pytest.mark.parametrize("name", ["_msg", *PASS_THROUGH])
def test_a_field_named_like_a_pass_through_column_is_refused_alone(name):
    """Once a ConfigError that stopped the stream (or, in a later message, a field silently dropped)."""
    reason = (f"field '{name}' is named like a column arrowscore adds to every row (_msg, _key, _partition, "
              "_offset, _timestamp); rename it in the producer")
    for at in (0, 2):  # first or later
        msgs = [js(x=1), js(x=2), js(x=3)]
        msgs[at] = Msg(json.dumps({"x": 9, name: 2}).encode())
        (batch,), bad = decode(msgs, "json", keep=())  # refused even when not kept
        assert bad == [(at, reason)]
        assert batch.to_pydict() == {"x": [x for i, x in enumerate([1, 2, 3]) if i != at],
                                     "_msg": [i for i in range(3) if i != at]}
    (batch,), bad = decode([Msg(ipc(**{name: [1]})), Msg(ipc(x=[1.0]))], "arrow")
    assert bad == [(0, reason)] and batch.column("_msg").to_pylist() == [1]


def test_unknown_format():
    with pytest.raises(ConfigError, match=r"value format 'avro' is not one of \('json', 'arrow'\)"):
        decode([js(x=1)], "avro")


def _scored(msg_ids, **columns) -> pa.RecordBatch:
    return pa.record_batch({"_msg": pa.array(msg_ids, pa.int32()), **columns})


def test_encode_json_one_object_per_message():
    out = _scored([0, 2, 3], p=[0.5, float("nan"), 1.0], label=["a", "b", None])
    assert list(encode(out, "json")) == [(0, b'{"p": 0.5, "label": "a"}'), (2, b'{"p": null, "label": "b"}'),
                                         (3, b'{"p": 1.0, "label": null}')]


def test_encode_arrow_one_stream_per_message():
    out = _scored([0, 0, 0, 4], p=[1.0, 2.0, 3.0, 4.0])
    values = list(encode(out, "arrow"))
    assert [i for i, _ in values] == [0, 4]
    tables = [pa.ipc.open_stream(v).read_all() for _, v in values]
    assert [t.to_pydict() for t in tables] == [{"p": [1.0, 2.0, 3.0]}, {"p": [4.0]}]  # no _msg inside


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_of_no_rows_is_no_values(fmt):
    assert list(encode(_scored([], p=pa.array([], pa.float64())), fmt)) == []


@pytest.mark.parametrize("fmt, msgs", [
    ("json", [js(x=1.5, s="a"), Msg(b"bad"), js(x=2.5, s=None)]),
    ("arrow", [Msg(ipc(x=[1.5, 2.5], s=["a", None])), Msg(b"bad"), Msg(ipc(x=[3.5], s=["c"]))]),
])
def test_decode_encode_round_trip(fmt, msgs):
    (batch,), bad = decode(msgs, fmt, keep=())
    assert [i for i, _ in bad] == [1]
    values = list(encode(batch, fmt))
    assert [i for i, _ in values] == [0, 2]  # one value per decodable input message, in order
    (again,), _ = decode([Msg(v) for _, v in values], fmt, keep=())
    assert again.drop_columns(["_msg"]).equals(batch.drop_columns(["_msg"]))
