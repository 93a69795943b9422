"""Streaming scoring over Kafka: micro-batches through the one scorer, at-least-once or exactly-once.

    arrowscore stream MODEL --bootstrap-servers 127.0.0.1:9092 --input-topic in --output-topic out \\
        --group-id scorer [--guarantee exactly-once] [--dead-letter-topic dead] [-X linger.ms=5]

Each loop turn consumes up to ``max_batch_rows`` messages (waiting at most ``max_wait_ms``), decodes
them to one RecordBatch, scores it with ``JobScorer`` -> ``Model.score_batch`` and produces one output
message per input message (same key, same headers). Then:
- at-least-once: wait until the broker acknowledged every output, then commit the consumed offsets;
- exactly-once: outputs, dead letters and the consumed offsets go in one Kafka transaction.
Messages that cannot be decoded or fail the signature go to the dead-letter topic with the reason in
the ``arrowscore.error`` header; without a dead-letter topic the stream stops on them, so nothing
vanishes. SIGTERM/SIGINT finish the current batch, commit, and close.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from .errors import ConfigError, ConnectorError, require

__all__ = ["StreamOptions", "StreamReport", "stream"]

log = logging.getLogger("arrowscore.stream")
GUARANTEES = ("at-least-once", "exactly-once")


@dataclass(frozen=True)
class StreamOptions:
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    group_id: str
    guarantee: str = "at-least-once"
    dead_letter_topic: str | None = None
    value_format: str = "json"
    keep_columns: tuple = ("_key",)
    max_batch_rows: int = 10_000
    max_wait_ms: int = 100
    client_config: dict = field(default_factory=dict)
    transactional_id: str | None = None
    stats_every_s: float = 10.0
    max_messages: int | None = None  # stop after this many input messages (tests, backfills)
    idle_timeout_s: float | None = None  # stop after this long without messages

    def __post_init__(self):
        from connectors.kafka import FORMATS

        object.__setattr__(self, "keep_columns", tuple(self.keep_columns or ()))
        if self.guarantee not in GUARANTEES:
            raise ConfigError(f"guarantee {self.guarantee!r} is not one of {GUARANTEES}")
        if self.value_format not in FORMATS:
            raise ConfigError(f"value format {self.value_format!r} is not one of {FORMATS}")
        if self.max_batch_rows < 1 or self.max_wait_ms < 0:
            raise ConfigError("max_batch_rows must be >= 1 and max_wait_ms >= 0")
        for name in ("bootstrap_servers", "input_topic", "output_topic", "group_id"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required (--{name.replace('_', '-')})")


@dataclass
class StreamReport:
    messages: int = 0
    rows: int = 0
    dead_lettered: int = 0
    batches: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # from the first message consumed: throughput without start-up and idling

    def __str__(self) -> str:
        rate = self.messages / self.seconds if self.seconds else 0.0
        return (f"streamed {self.messages:,} messages ({self.rows:,} rows) in {self.batches:,} batches, "
                f"{self.dead_lettered:,} dead-lettered, {self.seconds:.1f} s ({rate:,.0f} msg/s)")


class _Stream:
    def __init__(self, model, opts: StreamOptions, stop: threading.Event):
        ck = require("confluent_kafka", "kafka", "streaming over Kafka")
        from .job import JobScorer

        from connectors.kafka import PASS_THROUGH

        self.ck, self.opts, self.stop, self.model = ck, opts, stop, model
        unknown = [c for c in opts.keep_columns if c.startswith("_") and c not in PASS_THROUGH]
        if unknown:
            raise ConfigError(f"keep_columns {unknown} are not pass-through columns {list(PASS_THROUGH)}")
        # failing messages are isolated, then go to the dead-letter topic (or stop the stream)
        self.job = JobScorer(model, keep_columns=("_msg", *opts.keep_columns), isolate_rejects=True)
        common = {"bootstrap.servers": opts.bootstrap_servers, "log_level": 3, **opts.client_config}
        self.consumer = ck.Consumer({**common, "group.id": opts.group_id, "enable.auto.commit": False,
                                     "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
        producer = {**common, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
        self.exactly_once = opts.guarantee == "exactly-once"
        if self.exactly_once:
            producer["transactional.id"] = opts.transactional_id or f"arrowscore-{opts.group_id}-{opts.input_topic}"
        self.producer = ck.Producer(producer)
        if self.exactly_once:
            self.producer.init_transactions(60)
        self.report = StreamReport()
        self._failed: list = []
        self._first_at = None

    # ---- one micro-batch ----------------------------------------------------------------------
    def _consume(self) -> list:
        """Up to max_batch_rows messages: wait (up to 0.5 s) for the first, then at most max_wait_ms more."""
        first = self._checked(self.consumer.consume(1, 0.5))
        if not first:
            return []
        msgs, deadline = first, time.monotonic() + self.opts.max_wait_ms / 1000
        while len(msgs) < self.opts.max_batch_rows and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # consume(n, timeout) returns when n messages are in or the timeout passes, whichever is first
            msgs.extend(self._checked(self.consumer.consume(self.opts.max_batch_rows - len(msgs), left)))
        if self._first_at is None:
            self._first_at = time.perf_counter()
        return msgs

    def _checked(self, got: list) -> list:
        out = []
        for m in got:
            if m.error():
                if m.error().code() == self.ck.KafkaError._PARTITION_EOF:
                    continue
                raise ConnectorError(f"consuming {self.opts.input_topic!r} failed: {m.error()}")
            out.append(m)
        return out

    def _score(self, msgs: list) -> tuple[list, list]:
        """([(message index, output value)], [(message index, reason)])."""
        from connectors.kafka import decode, encode

        from .job import Where

        batch, bad = decode(msgs, self.opts.value_format, keep=self.opts.keep_columns)
        outputs = []
        if batch is not None:
            good, rejected = self.job.score(batch, Where(self.opts.input_topic, 0))
            dead = {}
            if rejected is not None:
                for i, reason in zip(rejected.column("_msg").to_pylist(), rejected.column("_error").to_pylist()):
                    dead.setdefault(i, reason)
                bad.extend(dead.items())
            for out in good:
                outputs.extend((i, v) for i, v in encode(out, self.opts.value_format) if i not in dead)
        return outputs, bad

    def _deliver(self, err, msg) -> None:
        if err is not None:
            self._failed.append(err)

    def _produce(self, topic: str, value: bytes, src, headers=None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=src.key(), headers=headers, on_delivery=self._deliver)
                return
            except BufferError:  # the producer queue is full: let it drain, then retry
                self.producer.poll(0.05)

    def _dead_letter(self, src, reason: str) -> None:
        if not self.opts.dead_letter_topic:
            raise ConnectorError(
                f"message {src.topic()}/{src.partition()}/{src.offset()} cannot be scored ({reason}); no "
                "--dead-letter-topic is set, so the stream stops here with that message unconsumed")
        headers = list(src.headers() or []) + [
            ("arrowscore.error", reason.encode()), ("arrowscore.source", f"{src.topic()}/{src.partition()}/{src.offset()}".encode())]
        self._produce(self.opts.dead_letter_topic, src.value(), src, headers)

    def _offsets(self, msgs: list) -> list:
        last = {}
        for m in msgs:
            last[(m.topic(), m.partition())] = m.offset()
        return [self.ck.TopicPartition(t, p, o + 1) for (t, p), o in last.items()]

    def turn(self) -> int:
        msgs = self._consume()
        if not msgs:
            return 0
        started = time.perf_counter()
        outputs, bad = self._score(msgs)
        if self.exactly_once:
            self.producer.begin_transaction()
        try:
            for i, value in outputs:
                self._produce(self.opts.output_topic, value, msgs[i], msgs[i].headers())
            for i, reason in sorted(bad):
                self._dead_letter(msgs[i], reason)
            if self.exactly_once:
                self.producer.send_offsets_to_transaction(self._offsets(msgs), self.consumer.consumer_group_metadata(), 60)
                self.producer.commit_transaction(60)
            else:
                self.producer.flush(60)
                if self._failed or len(self.producer):
                    raise ConnectorError(f"the broker did not acknowledge every output ({self._failed[:3]}); "
                                         "offsets were not committed, so the batch will be consumed again")
                self.consumer.commit(offsets=self._offsets(msgs), asynchronous=False)
        except BaseException:
            if self.exactly_once:
                self._abort(msgs)
            raise
        self.report.messages += len(msgs)
        self.report.rows += len(outputs)
        self.report.dead_lettered += len(bad)
        self.report.batches += 1
        self._latency = time.perf_counter() - started
        return len(msgs)

    def _abort(self, msgs: list) -> None:
        try:
            self.producer.abort_transaction(60)
        finally:  # consume the batch again from the last committed offsets
            for tp in self.consumer.committed([self.ck.TopicPartition(t, p) for t, p in
                                               {(m.topic(), m.partition()) for m in msgs}], 30):
                self.consumer.seek(self.ck.TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    def _lag(self) -> int:
        lag = 0
        for tp in self.consumer.assignment():
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            pos = self.consumer.position([tp])[0].offset
            lag += max(high - (pos if pos >= 0 else low), 0)
        return lag

    def run(self) -> StreamReport:
        start = last = time.perf_counter()
        idle_since = time.monotonic()
        self.consumer.subscribe([self.opts.input_topic])
        self._latency = 0.0
        try:
            while not self.stop.is_set():
                n = self.turn()
                now = time.perf_counter()
                if n:
                    idle_since = time.monotonic()
                elif self.opts.idle_timeout_s is not None and time.monotonic() - idle_since > self.opts.idle_timeout_s:
                    break
                if self.opts.max_messages is not None and self.report.messages >= self.opts.max_messages:
                    break
                if now - last >= self.opts.stats_every_s:
                    last = now
                    log.info("%s msg/s over the run, lag %d messages, last batch %.1f ms",
                             f"{self.report.messages / (now - start):,.0f}", self._lag(), self._latency * 1000)
        finally:
            self.report.seconds = time.perf_counter() - start
            if self._first_at is not None:
                self.report.busy_seconds = time.perf_counter() - self._first_at
            self.producer.flush(30)
            self.consumer.close()  # leaves the group: partitions move to the other members at once
        log.info("%s", self.report)
        return self.report


def stream(model_uri, *, stop: threading.Event | None = None, handle_signals: bool = False, **options) -> StreamReport:
    """Score a Kafka topic into another until stopped (``stop`` set, SIGTERM/SIGINT, or max_messages)."""
    from . import load_model
    from .scorer import Model

    opts = StreamOptions(**options)
    stop = stop or threading.Event()
    model = model_uri if isinstance(model_uri, Model) else load_model(model_uri)
    runner = _Stream(model, opts, stop)
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return runner.run()
