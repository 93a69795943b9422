"""Streaming over a real Apache Kafka broker (KRaft, 127.0.0.1, jars from Maven Central)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path


import numpy as np
import pyarrow as pa
import pytest

from needs import need  # noqa: E402

ck = need("confluent_kafka", "the Kafka streaming suite")

import engine  # noqa: E402
from engine.runners.stream import stream  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        future.result(30)


def _produce(bootstrap: str, topic: str, values: list, keys: list) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for k, v in zip(keys, values):
        p.produce(topic, key=k, value=v, headers=[("trace", k.encode())])
    assert p.flush(30) == 0


def _consume_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 60) -> list:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                     "auto.offset.reset": "earliest", "isolation.level": "read_committed", "enable.auto.commit": False})
    c.subscribe([topic])
    out, deadline = [], time.time() + timeout_s
    while time.time() < deadline and len(out) < expect:
        out.extend(m for m in c.consume(1000, 0.5) if not m.error())
    quiet = time.time() + 2  # anything beyond what we expect (duplicates) must show too
    while time.time() < quiet:
        out.extend(m for m in c.consume(1000, 0.3) if not m.error())
    c.close()
    return out


@pytest.fixture(scope="module")
def xgb_case(logged_models):
    case = logged_models["xgboost_booster"]
    rows = case.arrow_input.to_pylist()
    return case, rows, np.asarray(case.expected)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_json_round_trip(kafka, xgb_case, guarantee):
    case, rows, expected = xgb_case
    topic = f"in-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out", partitions=2)
    keys = [f"k{i}" for i in range(len(rows))]
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows], keys)
    report = stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", guarantee=guarantee, max_messages=len(rows), max_batch_rows=16)
    assert report.messages == len(rows) and report.dead_lettered == 0
    out = _consume_all(kafka, topic + "-out", len(rows))
    got = {m.key().decode(): json.loads(m.value()) for m in out}
    assert len(out) == len(rows) == len(got), "an input was lost or doubled"
    for i, key in enumerate(keys):
        assert got[key]["_key"] == key
        np.testing.assert_allclose(got[key]["prediction"], expected[i], rtol=1e-6)
    assert all(dict(m.headers())["trace"] == m.key() for m in out)  # headers kept


def test_arrow_messages_exactly_once(kafka, logged_models):
    case = logged_models["onnx"]
    table = case.arrow_input
    topic = f"arrow-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    values, keys = [], []
    for start in range(0, table.num_rows, 10):  # 10 rows per message
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table.slice(start, 10))
        values.append(sink.getvalue())
        keys.append(f"m{start}")
    _produce(kafka, topic, values, keys)
    report = stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", guarantee="exactly-once", value_format="arrow", max_messages=len(values))
    assert (report.messages, report.rows) == (len(values), table.num_rows)  # rows, not output messages
    out = _consume_all(kafka, topic + "-out", len(values))
    assert sorted(m.key().decode() for m in out) == sorted(keys)
    preds = np.concatenate([pa.ipc.open_stream(m.value()).read_all().column("prediction").to_numpy()
                            for m in sorted(out, key=lambda m: int(m.key()[1:]))])
    (expected,) = [np.asarray(v).reshape(-1) for v in case.expected.values()]
    np.testing.assert_allclose(preds, expected, rtol=1e-6)


def _at_most_7_rows(df):
    if len(df) > 7:
        raise ValueError(f"called with {len(df)} rows")
    return df["x"] * 2


def test_arrow_messages_are_scored_in_calls_of_max_batch_rows(kafka, tmp_path):
    """--max-batch-rows bounds every model call, also when one Arrow message holds more rows; each
    message still gets one output with all of its rows."""
    model = engine.save_model(tmp_path / "m", _at_most_7_rows, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    topic = f"rows-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    tables = [pa.table({"x": [float(10 * m + i) for i in range(10)]}) for m in range(4)]
    _produce(kafka, topic, [_ipc(t) for t in tables], [f"m{m}" for m in range(4)])
    report = stream(str(model), bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", value_format="arrow", max_messages=4, max_batch_rows=7,
                    max_batch_messages=100)
    assert (report.messages, report.rows, report.dead_lettered) == (4, 40, 0)
    out = {m.key().decode(): pa.ipc.open_stream(m.value()).read_all() for m in _consume_all(kafka, topic + "-out", 4)}
    for m, table in enumerate(tables):
        assert out[f"m{m}"].column("prediction").to_pylist() == [2 * v for v in table.column("x").to_pylist()]


def test_max_batch_bytes_bounds_a_micro_batch_of_big_messages(kafka, tmp_path):
    """Arrow IPC messages of many rows: a micro-batch stops at about --max-batch-bytes of values (memory
    stays bounded whatever the backlog), and every message is still scored whole."""
    model = engine.save_model(tmp_path / "m", _at_most_7_rows, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    topic = f"bytes-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    tables = [pa.table({"x": [float(10 * m + i) for i in range(10)]}) for m in range(12)]
    values = [_ipc(t) for t in tables]
    _produce(kafka, topic, values, [f"m{m}" for m in range(12)])
    report = stream(str(model), bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", value_format="arrow", max_messages=12, max_batch_rows=7,
                    max_batch_messages=100, max_batch_bytes=int(2.5 * len(values[0])))
    assert (report.messages, report.rows) == (12, 120)
    assert report.batches >= 6, f"{report.batches} micro-batches for 12 messages of which 2 fit the byte bound"
    out = {m.key().decode(): pa.ipc.open_stream(m.value()).read_all() for m in _consume_all(kafka, topic + "-out", 12)}
    for m, table in enumerate(tables):
        assert out[f"m{m}"].column("prediction").to_pylist() == [2 * v for v in table.column("x").to_pylist()]
    from engine.errors import ConfigError
    from engine.jobs.options import StreamOptions

    with pytest.raises(ConfigError, match="max_batch_bytes must be >= 1"):
        StreamOptions(bootstrap_servers="127.0.0.1:1", input_topic="a", output_topic="b", group_id="g", max_batch_bytes=0)


def test_max_messages_scores_and_commits_exactly_that_many(kafka, xgb_case):
    """A backfill of N messages from a longer topic: N scored, N committed; the rest stay for the next run."""
    case, rows, _ = xgb_case
    topic = f"maxmsg-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows[:10]], [f"k{i}" for i in range(10)])
    report = stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", max_messages=4, max_batch_messages=100)
    assert (report.messages, report.rows) == (4, 4)
    assert _committed(kafka, f"g-{topic}", topic) == 4
    assert sorted(m.key().decode() for m in _consume_all(kafka, topic + "-out", 4)) == ["k0", "k1", "k2", "k3"]


def test_max_batch_messages_is_a_flag_and_both_bounds_are_checked(capsys):
    from engine.errors import ConfigError
    from engine.jobs.options import StreamOptions

    with pytest.raises(ConfigError, match="max_batch_rows and max_batch_messages must be >= 1"):
        StreamOptions(bootstrap_servers="127.0.0.1:1", input_topic="a", output_topic="b", group_id="g",
                      max_batch_messages=0)
    with pytest.raises(ConfigError, match="max_messages must be >= 1"):
        StreamOptions(bootstrap_servers="127.0.0.1:1", input_topic="a", output_topic="b", group_id="g", max_messages=0)
    from engine.cli import main

    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    help_text = capsys.readouterr().out
    assert "--max-batch-messages" in help_text and "--max-batch-rows" in help_text


def _get(port: int, path: str) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _metric(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def test_health_and_metrics_endpoint_of_a_running_stream(kafka, xgb_case):
    import socket

    case, rows, _ = xgb_case
    topic = f"mon-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows], [f"k{i}" for i in range(len(rows))])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop, result = threading.Event(), {}
    worker = threading.Thread(target=lambda: result.update(report=stream(
        case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
        group_id=f"g-{topic}", stop=stop, metrics_port=port, max_batch_rows=16)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, text = _get(port, "/metrics")
                if status == 200 and _metric(text, "arrowscore_stream_messages_total") == len(rows):
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline and worker.is_alive(), "the metrics never counted every message"
            time.sleep(0.2)
        assert _metric(text, "arrowscore_stream_rows_total") == len(rows)
        assert _metric(text, "arrowscore_stream_batches_total") >= len(rows) / 16
        assert _metric(text, "arrowscore_stream_up") == 1
        assert 'arrowscore_stream_batch_seconds_bucket{le="+Inf"}' in text
        time.sleep(1.2)  # the lag is read at most once a second
        assert _metric(_get(port, "/metrics")[1], "arrowscore_stream_lag") == 0
        assert _get(port, "/health") == (200, '{"status": "ok"}')
        assert _get(port, "/ready") == (200, '{"status": "ok"}')
        assert _get(port, "/nothing")[0] == 404
    finally:
        stop.set()
        worker.join(60)
    assert result["report"].messages == len(rows)
    with pytest.raises(OSError):
        _get(port, "/health")  # closed with the stream


def test_stream_is_alive_but_not_ready_while_brokers_do_not_answer(xgb_case):
    import socket

    case, _, _ = xgb_case
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = _closed_port()
    errors = []

    def run():
        try:
            stream(case.uris["path"], bootstrap_servers=f"127.0.0.1:{dead}", input_topic="a", output_topic="b",
                   group_id="g", metrics_port=port, broker_timeout_s=8)
        except Exception as exc:  # the stream gives up after broker_timeout_s
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 6
        while True:
            try:
                health = _get(port, "/health")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health == (200, '{"status": "ok"}')
        status, body = _get(port, "/ready")
        assert status == 503 and "brokers do not answer" in body
    finally:
        worker.join(60)
    assert errors and "could not be reached" in str(errors[0])


def test_poison_messages_go_to_the_dead_letter_topic(kafka, xgb_case):
    case, rows, expected = xgb_case
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out", topic + "-dead")
    good = rows[:10]
    missing = {k: v for k, v in rows[10].items() if k != "f3"}
    wrong = {**rows[11], "f5": "not a number"}
    values = [json.dumps(r).encode() for r in good] + [b"{not json", json.dumps(missing).encode(),
                                                       json.dumps(wrong).encode(), b"[1, 2]"]
    keys = [f"g{i}" for i in range(10)] + ["bad-json", "missing", "wrong", "array"]
    _produce(kafka, topic, values, keys)
    report = stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", dead_letter_topic=topic + "-dead", max_messages=len(values))
    assert report.dead_lettered == 4 and report.rows == 10
    dead = {m.key().decode(): dict(m.headers()) for m in _consume_all(kafka, topic + "-dead", 4)}
    assert set(dead) == {"bad-json", "missing", "wrong", "array"}
    assert b"not valid JSON" in dead["bad-json"]["arrowscore.error"]
    assert b"['f3'] hold nulls" in dead["missing"]["arrowscore.error"]
    assert b"column 'f5' is string, the model's signature wants double" in dead["wrong"]["arrowscore.error"]
    assert b"not an object" in dead["array"]["arrowscore.error"]
    assert dead["missing"]["trace"] == b"missing"  # the original headers travel along
    out = {m.key().decode(): json.loads(m.value()) for m in _consume_all(kafka, topic + "-out", 10)}
    assert sorted(out) == sorted(keys[:10])


def test_bad_message_without_dead_letter_topic_stops_the_stream(kafka, xgb_case):
    case, rows, _ = xgb_case
    topic = f"stop-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    _produce(kafka, topic, [json.dumps(rows[0]).encode(), b"{broken"], ["a", "b"])
    with pytest.raises(engine.ConnectorError, match=r"cannot be scored \(value is not valid JSON.*no --dead-letter-topic"):
        stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
               group_id=f"g-{topic}", max_messages=2)


def _committed(kafka: str, group: str, topic: str) -> int:
    c = ck.Consumer({"bootstrap.servers": kafka, "group.id": group})
    tps = c.committed([ck.TopicPartition(topic, 0)], 30)
    c.close()
    return tps[0].offset


def _cli(kafka, model, topic, group, guarantee):
    return [sys.executable, "-m", "engine", "stream", model, "--bootstrap-servers", kafka, "--input-topic", topic,
            "--output-topic", topic + "-out", "--group-id", group, "--guarantee", guarantee, "--max-batch-rows", "50",
            "--stats-every-s", "1"]


def test_sigterm_stops_cleanly_with_offsets_committed(kafka, xgb_case):
    case, rows, _ = xgb_case
    topic = f"term-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows], [f"k{i}" for i in range(len(rows))])
    proc = subprocess.Popen(_cli(kafka, case.uris["path"], topic, "g-term", "at-least-once"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(_consume_all(kafka, topic + "-out", len(rows), timeout_s=1)) < len(rows):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert f"streamed {len(rows):,} messages" in out
    assert _committed(kafka, "g-term", topic) == len(rows)


def test_at_least_once_commits_no_offset_whose_outputs_were_not_acknowledged(kafka, xgb_case):
    """Outputs are acknowledged while the next micro-batch is scored; offsets are committed only after the
    acknowledgement. An output topic that does not exist fails every delivery: the stream stops with the
    reason, and no offset of the group was committed, so a restart scores every message again."""
    case, rows, _ = xgb_case
    topic = f"unacked-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic)  # no output topic, and the broker does not create topics
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows], [f"k{i}" for i in range(len(rows))])
    with pytest.raises(engine.ConnectorError, match=r"did not acknowledge every output.*consumed again"):
        stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-missing",
               group_id=f"g-{topic}", max_messages=len(rows), max_batch_messages=7,
               producer_config={"message.timeout.ms": 3000}, broker_timeout_s=20)
    assert _committed(kafka, f"g-{topic}", topic) < 0  # none: OFFSET_INVALID


def test_at_least_once_replicas_hand_over_partitions_with_offsets_committed(kafka, xgb_case):
    """A second replica joins a busy at-least-once stream (micro-batches of 5 messages, each batch's outputs
    acknowledged while the next is scored): the first hands its partitions over only after the outputs it
    produced are acknowledged and their offsets committed. Nothing is lost or scored twice, every offset is
    committed at the end, and both replicas scored."""
    case, rows, expected = xgb_case
    topic = f"alo-rebal-{uuid.uuid4().hex[:6]}"
    _topics(kafka, topic, topic + "-out", partitions=4)
    total, group = 4000, f"g-{topic}"
    keys = [f"k{i}" for i in range(total)]
    _produce(kafka, topic, [json.dumps(rows[i % len(rows)]).encode() for i in range(total)], keys)
    stop = threading.Event()
    reports = {}

    def replica(name):
        reports[name] = stream(case.uris["path"], stop=stop, bootstrap_servers=kafka, input_topic=topic,
                               output_topic=topic + "-out", group_id=group, max_batch_messages=5, max_wait_ms=5,
                               consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})

    first, second = threading.Thread(target=replica, args=("a",)), threading.Thread(target=replica, args=("b",))
    first.start()
    deadline = time.time() + 60
    while time.time() < deadline and _committed_total(kafka, group, topic, 4) <= 0:
        time.sleep(0.2)
    second.start()  # joins while the first is busy
    deadline = time.time() + 120
    while time.time() < deadline and _committed_total(kafka, group, topic, 4) < total:
        time.sleep(0.5)
    stop.set()
    first.join(60)
    second.join(60)
    assert set(reports) == {"a", "b"}, "a replica failed"
    assert _committed_total(kafka, group, topic, 4) == total
    assert reports["a"].messages > 0 and reports["b"].messages > 0, reports
    out = _consume_all(kafka, topic + "-out", total)
    assert set(m.key().decode() for m in out) == set(keys)
    assert len(out) == total, f"{len(out) - total} outputs twice: a handover without a crash scores nothing again"
    for m in out:
        np.testing.assert_allclose(json.loads(m.value())["prediction"], expected[int(m.key()[1:]) % len(rows)], rtol=1e-6)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_sigkill_at_random_points_then_restart(kafka, xgb_case, guarantee):
    """Kill the stream for real while input is being produced; restart it; nothing lost (and, with
    exactly-once, nothing doubled for a read_committed reader)."""
    case, rows, expected = xgb_case
    topic = f"kill-{guarantee[:5]}-{uuid.uuid4().hex[:6]}"
    _topics(kafka, topic, topic + "-out")
    total = 600
    values = [json.dumps(rows[i % len(rows)]).encode() for i in range(total)]
    keys = [f"k{i}" for i in range(total)]
    producer_done = threading.Event()

    def produce_slowly():
        p = ck.Producer({"bootstrap.servers": kafka, "linger.ms": 1})
        for i in range(total):
            p.produce(topic, key=keys[i], value=values[i])
            if i % 50 == 0:
                p.flush(10)
                time.sleep(0.1)
        p.flush(30)
        producer_done.set()

    feeder = threading.Thread(target=produce_slowly)
    feeder.start()
    rng = np.random.default_rng(7)
    group = f"g-{topic}"
    # a killed replica holds its partitions for the group's session timeout, and an open transaction holds its
    # output from read_committed readers for the transaction timeout (45 s and 60 s by default, up to 100 s of
    # this test's time): the shortest the broker allows (docs/streaming.md names both settings)
    quick = ["-X", "consumer.session.timeout.ms=6000", "-X", "producer.transaction.timeout.ms=10000"]
    for _ in range(3):
        proc = subprocess.Popen(_cli(kafka, case.uris["path"], topic, group, guarantee) + quick,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(3.0, 5.0)))  # start-up (~2-3 s) plus some batches
        proc.kill()
        proc.wait(30)
    feeder.join()
    # a final run drains the topic
    final = subprocess.Popen(_cli(kafka, case.uris["path"], topic, group, guarantee) + quick, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and _committed(kafka, group, topic) < total:
        time.sleep(0.5)
    final.send_signal(signal.SIGTERM)
    final.communicate(timeout=60)
    out = _consume_all(kafka, topic + "-out", total)
    seen = [m.key().decode() for m in out]
    assert set(seen) == set(keys), f"{len(set(keys) - set(seen))} inputs lost"
    if guarantee == "exactly-once":
        assert len(seen) == total, f"{len(seen) - total} duplicates seen by a read_committed reader"
    for m in out:
        i = int(m.key()[1:])
        np.testing.assert_allclose(json.loads(m.value())["prediction"], expected[i % len(rows)], rtol=1e-6)


def test_spark_structured_streaming_from_kafka_to_kafka(kafka, spark, xgb_case, tmp_path):
    """Spark's Kafka source -> engine.spark.udf -> Spark's Kafka sink (examples/spark_kafka_stream.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import spark_kafka_stream

    case, rows, expected = xgb_case
    topic = f"spark-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    keys = [f"k{i}" for i in range(len(rows))]
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows], keys)
    query = spark_kafka_stream.start(spark, case.uris["path"], kafka, topic, topic + "-out", str(tmp_path / "ckpt"),
                                     available_now=True)
    query.awaitTermination(timeout=180)
    out = {m.key().decode(): json.loads(m.value())["prediction"] for m in _consume_all(kafka, topic + "-out", len(rows))}
    assert sorted(out) == sorted(keys)
    np.testing.assert_allclose([out[k] for k in keys], expected, rtol=1e-6)


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def _dead_run(kafka, case, topic, values, keys, **options):
    """Stream ``values`` with a dead-letter topic: (report, {key: output}, {key: dead-letter headers})."""
    _topics(kafka, topic, topic + "-out", topic + "-dead")
    _produce(kafka, topic, values, keys)
    report = stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
                    group_id=f"g-{topic}", dead_letter_topic=topic + "-dead", max_messages=len(values), **options)
    out = _consume_all(kafka, topic + "-out", len(values) - report.dead_lettered)
    dead = _consume_all(kafka, topic + "-dead", report.dead_lettered)
    assert len(out) + len(dead) == len(values), "a message was lost or doubled"
    return report, {m.key().decode(): m.value() for m in out}, {m.key().decode(): dict(m.headers()) for m in dead}


def test_a_first_message_lacking_a_field_is_dead_lettered_alone(kafka, xgb_case):
    case, rows, expected = xgb_case
    lacking = {k: v for k, v in rows[0].items() if k != "f3"}
    values = [json.dumps(lacking).encode()] + [json.dumps(r).encode() for r in rows[1:10]]
    keys = [f"k{i}" for i in range(10)]
    report, out, dead = _dead_run(kafka, case, f"lack-{uuid.uuid4().hex[:8]}", values, keys)
    assert sorted(dead) == ["k0"] and b"'f3'" in dead["k0"]["arrowscore.error"]
    assert sorted(out) == keys[1:] and report.rows == 9
    for i in range(1, 10):
        np.testing.assert_allclose(json.loads(out[f"k{i}"])["prediction"], expected[i], rtol=1e-6)


def test_a_bad_first_message_does_not_reject_the_good_ones(kafka, xgb_case):
    """Types that cannot share a column: the model's signature decides, not the first message."""
    case, rows, expected = xgb_case
    values = [json.dumps({**rows[0], "f5": "not a number"}).encode()] + [json.dumps(r).encode() for r in rows[1:10]]
    keys = [f"k{i}" for i in range(10)]
    report, out, dead = _dead_run(kafka, case, f"first-{uuid.uuid4().hex[:8]}", values, keys)
    assert sorted(dead) == ["k0"] and b"f5" in dead["k0"]["arrowscore.error"]
    assert sorted(out) == keys[1:] and report.rows == 9 and report.dead_lettered == 1


@pytest.mark.parametrize("name, at", [("_key", 0), ("_key", 5), ("_offset", 9), ("_msg", 3)])
def test_a_field_named_like_a_pass_through_column_is_dead_lettered_alone(kafka, xgb_case, name, at):
    case, rows, _ = xgb_case
    values = [json.dumps({**r, name: "x"} if i == at else r).encode() for i, r in enumerate(rows[:10])]
    keys = [f"k{i}" for i in range(10)]
    report, out, dead = _dead_run(kafka, case, f"pass-{uuid.uuid4().hex[:8]}", values, keys)
    assert sorted(dead) == [f"k{at}"]
    assert f"field '{name}' is named like a column arrowscore adds".encode() in dead[f"k{at}"]["arrowscore.error"]
    assert sorted(out) == sorted(set(keys) - {f"k{at}"}) and report.rows == 9
    assert all(json.loads(v)["_key"] == k for k, v in out.items())  # the real key, never the field


def test_a_pass_through_named_field_without_dead_letter_topic_stops_the_stream(kafka, xgb_case):
    case, rows, _ = xgb_case
    topic = f"stop-pass-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    _produce(kafka, topic, [json.dumps(rows[0]).encode(), json.dumps({**rows[1], "_key": "x"}).encode()], ["a", "b"])
    with pytest.raises(engine.ConnectorError, match=r"message stop-pass-\w+/0/1 cannot be scored \(field '_key' is "
                                                    r"named like a column arrowscore adds.*no --dead-letter-topic"):
        stream(case.uris["path"], bootstrap_servers=kafka, input_topic=topic, output_topic=topic + "-out",
               group_id=f"g-{topic}", max_messages=2)
    assert _consume_all(kafka, topic + "-out", 0, timeout_s=1) == []  # nothing produced for the batch either


def test_arrow_messages_that_do_not_combine_are_scored_apart(kafka, xgb_case):
    """Per message: an odd schema or one bad row dead-letters that message alone; every other message gets
    exactly one output holding all its rows, and the report counts rows, not messages."""
    case, rows, expected = xgb_case
    table = case.arrow_input
    values = [_ipc(table.slice(s, 5)) for s in range(0, 40, 5)]  # 8 messages of 5 rows
    odd = table.slice(10, 5).set_column(3, "f3", pa.array(["a"] * 5))  # f3 as strings: no common schema
    values[2] = _ipc(odd)
    holed = table.slice(25, 5).to_pylist()
    holed[2]["f7"] = None  # one row the signature refuses
    values[5] = _ipc(pa.Table.from_pylist(holed, table.schema))
    keys = [f"m{i}" for i in range(8)]
    report, out, dead = _dead_run(kafka, case, f"arrow-odd-{uuid.uuid4().hex[:8]}", values, keys,
                                  value_format="arrow")
    assert sorted(dead) == ["m2", "m5"]
    assert b"f3" in dead["m2"]["arrowscore.error"] and b"f7" in dead["m5"]["arrowscore.error"]
    assert sorted(out) == sorted(set(keys) - {"m2", "m5"})
    for key, value in out.items():
        start = int(key[1:]) * 5
        np.testing.assert_allclose(pa.ipc.open_stream(value).read_all().column("prediction").to_numpy(),
                                   expected[start:start + 5], rtol=1e-6)
    assert (report.messages, report.rows, report.dead_lettered) == (8, 30, 2)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _stream_cli(model, bootstrap, topic, *extra):
    return [sys.executable, "-m", "engine", "stream", model, "--bootstrap-servers", bootstrap, "--input-topic", topic,
            "--output-topic", topic + "-out", "--group-id", f"g-{topic}", *extra]


def _one_error_line(err: str, bootstrap: str) -> None:
    """librdkafka's own lines (about 22 a second while brokers are down) stay out; one error line says it all."""
    assert "rdkafka" not in err and "FAIL" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"arrowscore: UnavailableError: the Kafka brokers at {bootstrap} could not be reached for "), last
    assert "--broker-timeout-s" in last and "Connection refused" in last, last
    assert err.count("UnavailableError") == 1 and "Traceback" not in err, err[-3000:]


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_unreachable_brokers_fail_after_the_broker_timeout(xgb_case, guarantee):
    """Once the stream retried forever, logging client errors and 'lag 0 messages'."""
    case, _, _ = xgb_case
    bootstrap = f"127.0.0.1:{_closed_port()}"
    proc = subprocess.Popen(_stream_cli(case.uris["path"], bootstrap, "nowhere", "--guarantee", guarantee,
                                        "--broker-timeout-s", "3", "--stats-every-s", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)  # 3 s plus start-up: generous
    finally:
        proc.kill()
    assert proc.returncode == 3 and out == "", err[-3000:]  # unavailable: worth a retry
    _one_error_line(err, bootstrap)
    assert "lag 0 messages" not in err


def _free_port_pair() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "kafka"))
    import broker

    for _ in range(50):
        port = _closed_port()
        if port < 65535 and broker._free(port) and broker._free(port + 1):
            return port
    raise RuntimeError("no two free neighbouring ports on 127.0.0.1 for a second broker in 50 tries")


def test_a_broker_gone_mid_stream_fails_after_the_broker_timeout(kafka, xgb_case, tmp_path):
    """A broker of this test's own (the session's one stays up): scored, then stopped under the stream."""
    import broker  # on sys.path through the kafka fixture

    case, rows, _ = xgb_case
    info = broker.start(tmp_path / "kafka", port=_free_port_pair())
    try:
        own, topic = info["bootstrap"], "gone"
        _topics(own, topic, topic + "-out")
        _produce(own, topic, [json.dumps(r).encode() for r in rows], [f"k{i}" for i in range(len(rows))])
        proc = subprocess.Popen(_stream_cli(case.uris["path"], own, topic, "--broker-timeout-s", "4"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline, done = time.time() + 120, -1
            while time.time() < deadline and done < len(rows):
                time.sleep(0.5)
                try:
                    done = _committed(own, f"g-{topic}", topic)
                except ck.KafkaException:  # the new broker's group coordinator is still loading
                    pass
            assert done == len(rows)
            broker.stop(Path(info["dir"]))
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    finally:
        broker.stop(Path(info["dir"]))
    assert proc.returncode == 3 and out == "", err[-3000:]  # unavailable: worth a retry
    _one_error_line(err, own)


def test_stopping_a_broker_this_process_started_does_not_wait_on_its_zombie(tmp_path):
    """The test broker is this process's child: once it exits it stays a zombie, which signal 0 still reaches,
    so stop() waited its whole timeout (30 s, twice a suite) on a broker long gone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "kafka"))
    import broker

    child = subprocess.Popen(["sleep", "600"], start_new_session=True)  # started as start() starts the broker
    (tmp_path / "broker.pid").write_text(str(child.pid))
    start = time.time()
    broker.stop(tmp_path, timeout_s=60)  # SIGTERM: the child exits at once and is left a zombie
    assert time.time() - start < 30, "stop() waited for its timeout on a process that had exited"
    assert not (tmp_path / "broker.pid").exists() and not Path(f"/proc/{child.pid}").exists()  # reaped


def _committed_total(kafka: str, group: str, topic: str, partitions: int) -> int:
    c = ck.Consumer({"bootstrap.servers": kafka, "group.id": group})
    try:
        tps = c.committed([ck.TopicPartition(topic, p) for p in range(partitions)], 5)
    except ck.KafkaException:  # offsets still pending in an open transaction
        return -1
    finally:
        c.close()
    return sum(max(tp.offset, 0) for tp in tps)


def test_exactly_once_replicas_share_a_group_through_sigkills(kafka, xgb_case, tmp_path):
    """Three replicas of one exactly-once stream on 6 partitions (issue 17 item 1): each is SIGKILLed in
    turn and restarted while input flows. No replica fences another, every key is in the committed
    output once, and more than one replica did the work."""
    case, rows, expected = xgb_case
    topic = f"replicas-{uuid.uuid4().hex[:6]}"
    _topics(kafka, topic, topic + "-out", partitions=6)
    total, group = 1200, f"g-{topic}"
    keys = [f"k{i}" for i in range(total)]

    def produce_slowly():
        p = ck.Producer({"bootstrap.servers": kafka, "linger.ms": 1})
        for i in range(total):
            p.produce(topic, key=keys[i], value=json.dumps(rows[i % len(rows)]).encode(), partition=i % 6)
            if i % 60 == 59:
                p.flush(10)
                time.sleep(1.0)  # input flows until after the last restart (about 20 s), so every replica gets some
        p.flush(30)

    cli = _cli(kafka, case.uris["path"], topic, group, "exactly-once") + [
        "-X", "consumer.session.timeout.ms=6000", "-X", "consumer.heartbeat.interval.ms=500"]

    def start(name):
        out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
        return subprocess.Popen(cli, stdout=out, stderr=err, text=True)

    feeder = threading.Thread(target=produce_slowly)
    feeder.start()
    replicas = {f"r{i}": start(f"r{i}") for i in range(3)}
    try:
        time.sleep(7)  # start-up, then some batches
        for i in range(3):
            for name, proc in replicas.items():
                assert proc.poll() is None, f"{name} died:\n{(tmp_path / f'{name}.err').read_text()[-3000:]}"
            replicas[f"r{i}"].kill()
            replicas[f"r{i}"].wait(30)
            replicas[f"r{i}"] = start(f"r{i}-again")
            time.sleep(3)
        feeder.join()
        deadline = time.time() + 60
        while time.time() < deadline and _committed_total(kafka, group, topic, 6) < total:
            time.sleep(0.5)
        for name, proc in replicas.items():
            assert proc.poll() is None, f"{name} died:\n{(tmp_path / f'{name}-again.err').read_text()[-3000:]}"
            proc.send_signal(signal.SIGTERM)
        for proc in replicas.values():
            proc.wait(60)
    finally:
        for proc in replicas.values():
            proc.kill()
    errs = {n: (tmp_path / f"{n}-again.err").read_text() for n in replicas}
    assert all(p.returncode == 0 for p in replicas.values()), errs
    assert not any("fenced" in e.lower() for e in errs.values()), errs
    out = _consume_all(kafka, topic + "-out", total)
    seen = [m.key().decode() for m in out]
    assert set(seen) == set(keys), f"{len(set(keys) - set(seen))} inputs lost"
    assert len(seen) == total, f"{len(seen) - total} duplicates seen by a read_committed reader"
    for m in out:
        i = int(m.key()[1:])
        np.testing.assert_allclose(json.loads(m.value())["prediction"], expected[i % len(rows)], rtol=1e-6)
    counts = [int(re.search(r"streamed ([\d,]+) messages", (tmp_path / f"{n}-again.out").read_text())[1].replace(",", ""))
              for n in replicas]
    assert sum(c > 0 for c in counts) >= 2, f"the restarted replicas streamed {counts}: the work was not spread"


@pytest.mark.parametrize("args, match", [
    (["-X", "enable.auto.commit=true"], r"enable\.auto\.commit.*offsets are committed by arrowscore"),
    (["-X", "consumer.enable.auto.commit=true"], r"enable\.auto\.commit"),
    (["--guarantee", "exactly-once", "-X", "consumer.isolation.level=read_uncommitted"],
     r"isolation\.level.*exactly-once.*read_committed"),
    (["--guarantee", "exactly-once", "-X", "producer.enable.idempotence=false"], r"enable\.idempotence.*exactly-once"),
    (["--guarantee", "exactly-once", "-X", "acks=1"], r"acks.*exactly-once"),
    (["-X", "transactional.id=mine"], r"transactional\.id.*--transactional-id"),
    (["-X", "group.id=other"], r"group\.id.*--group-id"),
    (["-X", "linger.ms"], r"-X takes KEY=VALUE"),
])
def test_kafka_settings_a_guarantee_depends_on_are_refused(args, match, capsys):
    from engine.cli import main

    code = main(["stream", "no/such/model", "--bootstrap-servers", "127.0.0.1:1", "--input-topic", "a",
                 "--output-topic", "b", "--group-id", "g", *args])
    err = capsys.readouterr().err
    assert code == 2 and re.search(match, err), err


def test_a_kafka_config_file_with_a_bad_line_is_refused(tmp_path, capsys):
    from engine.cli import main

    props = tmp_path / "client.properties"
    props.write_text("# SASL\nsasl.username=me\nnot a setting\n")
    code = main(["stream", "no/such/model", "--bootstrap-servers", "127.0.0.1:1", "--input-topic", "a",
                 "--output-topic", "b", "--group-id", "g", "--kafka-config", str(props)])
    err = capsys.readouterr().err
    assert code == 2 and f"{props}:3" in err and "KEY=VALUE" in err, err


def test_user_kafka_settings_win_over_the_defaults(kafka, xgb_case, tmp_path):
    """``consumer.auto.offset.reset=latest`` from a properties file, ``acks=1`` from -X (at-least-once):
    both take effect (the defaults are earliest and all, with idempotence)."""
    case, rows, _ = xgb_case
    topic = f"wins-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows[:10]], [f"early{i}" for i in range(10)])
    props = tmp_path / "client.properties"
    props.write_text("# read only what arrives from now on\n\nconsumer.auto.offset.reset = latest\n"
                     "client.id=arrowscore-test\n")
    err_path = tmp_path / "err"
    proc = subprocess.Popen(_stream_cli(case.uris["path"], kafka, topic, "--kafka-config", str(props), "-X", "acks=1"),
                            stdout=subprocess.PIPE, stderr=open(err_path, "w"), text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and "partitions assigned" not in err_path.read_text() and proc.poll() is None:
            time.sleep(0.3)
        assert "partitions assigned" in err_path.read_text(), err_path.read_text()[-3000:]
        # the reset to "latest" happens just after the assignment: produce until messages come out
        late, out = 0, []
        while not out and time.time() < deadline:
            _produce(kafka, topic, [json.dumps(rows[10 + late % 20]).encode()], [f"late{late}"])
            late += 1
            out = _consume_all(kafka, topic + "-out", 1, timeout_s=1)
        time.sleep(2)
        out = _consume_all(kafka, topic + "-out", late, timeout_s=10)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err_path.read_text()[-3000:]
    keys = [m.key().decode() for m in out]
    assert keys and all(k.startswith("late") for k in keys), keys  # nothing from before the stream started
    assert f"streamed {len(keys)} messages" in stdout


def test_cli_model_flags_json_report_and_stop_flags(kafka, logged_models, tmp_path):
    """--params, --flavor, --cache-dir with a runs:/ URI, --idle-timeout-s, --max-messages and --json, for real."""
    import mlflow

    case = logged_models["pyfunc_custom"]  # its expected predictions were made with params {"bias": 1.25}
    rows = case.arrow_input.to_pylist()
    topic = f"flags-{uuid.uuid4().hex[:8]}"
    _topics(kafka, topic, topic + "-out")
    keys = [f"k{i}" for i in range(len(rows))]
    _produce(kafka, topic, [json.dumps(r).encode() for r in rows], keys)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    cache = tmp_path / "cache"
    common = ["--params", json.dumps(case.params), "--flavor", "python_function", "--cache-dir", str(cache), "--json"]
    out = subprocess.run(_stream_cli(case.uris["runs"], kafka, topic, "--idle-timeout-s", "3", *common),
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert (report["messages"], report["rows"], report["dead_lettered"]) == (len(rows), len(rows), 0)
    got = {m.key().decode(): json.loads(m.value()) for m in _consume_all(kafka, topic + "-out", len(rows))}
    np.testing.assert_allclose([got[k]["a"] for k in keys], np.asarray(case.expected).reshape(-1), rtol=1e-6)
    assert [p.name for p in cache.iterdir() if (p / "MLmodel").is_file()]  # downloaded into --cache-dir
    # a fresh group reads from the start; --max-messages stops it early
    out = subprocess.run(_stream_cli(case.uris["runs"], kafka, topic, "--group-id", f"g2-{topic}", "--max-messages",
                                     "5", "--max-batch-rows", "5", *common),
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["messages"] == 5
