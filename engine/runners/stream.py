"""Streaming scoring over Kafka: micro-batches through the one scorer, at-least-once or exactly-once.

    arrowscore stream MODEL --bootstrap-servers 127.0.0.1:9092 --input-topic in --output-topic out \\
        --group-id scorer [--guarantee exactly-once] [--dead-letter-topic dead] [-X producer.linger.ms=20] \\
        [--kafka-config client.properties]

Each loop turn consumes up to ``max_batch_messages`` messages, and no more than ``max_batch_rows`` nor
about ``max_batch_bytes`` of values (waiting at most ``max_wait_ms``), decodes them to one Arrow table,
scores it with ``JobScorer`` -> ``Model.score_batch`` in calls of at most ``max_batch_rows`` rows (Arrow
IPC messages hold many rows each) and produces one output message per input message (same key, same headers). Then:
- at-least-once: commit the consumed offsets once the broker acknowledged every output of the batch; the
  acknowledgements come while the next batch is consumed and scored (``KafkaSink.settle``), and before a
  rebalance hands partitions over, at idle and at the end, the stream waits for them;
- exactly-once: outputs, dead letters and the consumed offsets go in one Kafka transaction, under a
  transactional id of this replica's own, with the consumer's group metadata (KIP-447): replicas in
  one group run side by side, and a replica the group has moved on from cannot commit.
Messages that cannot be decoded or fail the signature go to the dead-letter topic, each alone, with
the reason in the ``arrowscore.error`` header, and the others are scored; without a dead-letter topic
the stream stops on the first of them before producing anything of its batch, so nothing vanishes.
SIGTERM/SIGINT finish the current batch, commit, and close. Brokers that do not answer for
``broker_timeout_s`` (at start or later) stop the stream with one ConnectorError.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from connectors.kafka import PASS_THROUGH, KafkaSink, KafkaSource, decode, encode

from ..errors import ConfigError, ConnectorError, TransactionAborted
from ..jobs.options import StreamOptions, StreamReport
from ..jobs.scoring import JobScorer, Where

__all__ = ["stream"]

log = logging.getLogger("arrowscore.stream")


class _Loop:
    """One stream: the Kafka clients (connectors), the job's rules, and the report."""

    def __init__(self, model, opts: StreamOptions, stop: threading.Event):
        unknown = [c for c in opts.keep_columns if c.startswith("_") and c not in PASS_THROUGH]
        if unknown:
            raise ConfigError(f"keep_columns {unknown} are not pass-through columns {list(PASS_THROUGH)}")
        self.opts, self.stop = opts, stop
        # failing messages are isolated, then go to the dead-letter topic (or stop the stream)
        self.job = JobScorer(model, keep_columns=("_msg", *opts.keep_columns), params=opts.params, isolate_rejects=True)
        # the user's settings over the clients' defaults; those a guarantee needs were checked by StreamOptions
        common = {"log_level": 3, **opts.client_config, "bootstrap.servers": opts.bootstrap_servers}
        transactional = None
        if opts.guarantee == "exactly-once":
            # one id per replica, so replicas do not fence each other; the group metadata sent with the offsets
            # fences a replica whose partitions moved on (KIP-447)
            transactional = opts.transactional_id or (f"arrowscore-{opts.group_id}-{opts.input_topic}-"
                                                      f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            log.info("exactly-once, transactional.id %s", transactional)
        self.monitor = None
        if opts.metrics_port is not None:  # alive (not ready) while the source waits for the brokers
            from .streamhealth import StreamMonitor

            self.monitor = StreamMonitor(opts.metrics_host, opts.metrics_port, max(60.0, opts.broker_timeout_s))
            log.info("health and metrics on http://%s:%d/ (/health, /ready, /metrics)", opts.metrics_host,
                     self.monitor.port)
        try:
            # the source first: it waits for the brokers (broker_timeout_s) before anything else talks to them
            self.source = KafkaSource({**common, **opts.consumer_config, "group.id": opts.group_id}, opts.input_topic,
                                      opts.broker_timeout_s)
            try:
                self.sink = KafkaSink({**common, **opts.producer_config}, transactional, opts.broker_timeout_s)
            except BaseException:
                self.source.close()
                raise
        except BaseException:
            if self.monitor is not None:
                self.monitor.close()
            raise
        self.source.before_revoke = lambda: self.sink.settle(self.source)
        self.report = StreamReport()
        self.aborted = 0  # transactions aborted in a row
        self.taken = 0  # messages whose outputs were produced (the report counts them once committed)
        self.first_at = None
        self.latency = 0.0

    def _score(self, msgs: list) -> tuple[list, list, int]:
        """([(message index, output value)] in message order, [(message index, reason)], rows scored).
        A message with any rejected row is rejected whole; every other one gets one output value."""
        tables, bad = decode(msgs, self.opts.value_format, keep=self.opts.keep_columns)
        outputs, rows = [], 0
        step = self.opts.max_batch_rows
        for table in tables:  # one, unless the messages' values could not share one schema
            good, dead = [], {}
            for start in range(0, table.num_rows, step):
                # one call's rows made contiguous just before the call, while they fit in the CPU's cache
                batch = table.slice(start, step).combine_chunks().to_batches()[0]
                scored, rejected = self.job.score(batch, Where(self.opts.input_topic, 0))
                good.extend(scored)
                if rejected is not None:
                    for i, reason in zip(rejected.column("_msg").to_pylist(), rejected.column("_error").to_pylist()):
                        dead.setdefault(i, reason)
            bad.extend(dead.items())
            if not good:
                continue
            # calls of max_batch_rows and bisection may cut a message's rows (Arrow IPC values): join them again
            out = pa.concat_tables([pa.Table.from_batches([b]) for b in good], promote_options="permissive")
            if dead:
                out = out.filter(pc.invert(pc.is_in(out.column("_msg"), pa.array(list(dead), pa.int32()))))
            rows += out.num_rows
            outputs.extend(encode(out.combine_chunks(), self.opts.value_format))
        if len(tables) > 1:
            outputs.sort(key=lambda o: o[0])
        return outputs, sorted(bad), rows

    def _dead_letter(self, src, reason: str) -> None:
        headers = list(src.headers() or []) + [
            ("arrowscore.error", reason.encode()), ("arrowscore.source", f"{src.topic()}/{src.partition()}/{src.offset()}".encode())]
        self.sink.produce(self.opts.dead_letter_topic, src.value(), src.key(), headers)

    def turn(self) -> int:
        most = min(self.opts.max_batch_messages, self.opts.max_batch_rows)
        if self.opts.max_messages is not None:  # not a message more than asked for, nor a wait for one
            most = min(most, self.opts.max_messages - self.taken)
        msgs = self.source.consume(most, self.opts.max_wait_ms, self.stop, self.opts.max_batch_bytes)
        if not msgs:
            self.sink.settle(self.source)  # idle: the last batch's offsets are committed once acknowledged
            return 0
        if self.first_at is None:
            self.first_at = time.perf_counter()
        started = time.perf_counter()
        outputs, bad, rows = self._score(msgs)
        if bad and not self.opts.dead_letter_topic:  # before producing anything of this batch
            src, reason = msgs[bad[0][0]], bad[0][1]
            raise ConnectorError(
                f"message {src.topic()}/{src.partition()}/{src.offset()} cannot be scored ({reason}); no "
                "--dead-letter-topic is set, so the stream stops here with that message unconsumed")
        self.sink.begin()
        try:
            for i, value in outputs:
                self.sink.produce(self.opts.output_topic, value, msgs[i].key(), msgs[i].headers())
            for i, reason in bad:
                self._dead_letter(msgs[i], reason)
            self.latency = time.perf_counter() - started
            self.sink.commit(self.source, msgs, done=self._counter(len(msgs), rows, len(bad), self.latency))
        except TransactionAborted as exc:  # already aborted: consume the batch again (if still ours) and go on
            self.source.rewind(msgs)
            self.aborted += 1
            if self.aborted > 5:
                raise ConnectorError(f"{self.aborted} transactions in a row were aborted, the last: {exc}") from None
            log.warning("%s; its %d messages will be consumed again", exc, len(msgs))
            return 0
        except BaseException:
            if self.sink.transactional:
                try:
                    self.sink.abort()
                finally:
                    self.source.rewind(msgs)
            raise
        self.aborted = 0
        self.taken += len(msgs)
        return len(msgs)

    def _counter(self, messages: int, rows: int, dead: int, seconds: float):
        """What the report and the metrics count once the batch's offsets are committed."""
        def count() -> None:
            self.report.messages += messages
            self.report.rows += rows
            self.report.dead_lettered += dead
            self.report.batches += 1
            if self.monitor is not None:
                self.monitor.batch(messages, rows, dead, seconds)
        return count

    def run(self) -> StreamReport:
        start = last = time.perf_counter()
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                n = self.turn()
                now = time.perf_counter()
                if self.monitor is not None:
                    self.monitor.turned(self.source.reachable, self.source.lag)
                if n:
                    idle_since = time.monotonic()
                elif self.opts.idle_timeout_s is not None and time.monotonic() - idle_since > self.opts.idle_timeout_s:
                    break
                if self.opts.max_messages is not None and self.taken >= self.opts.max_messages:
                    break
                if now - last >= self.opts.stats_every_s and self.source.reachable:  # no lag to tell while down
                    last = now
                    log.info("%s msg/s over the run, lag %d messages, last batch %.1f ms",
                             f"{self.report.messages / (now - start):,.0f}", self.source.lag(), self.latency * 1000)
            self.sink.settle(self.source)  # the outputs still on their way acknowledged, their offsets committed
        except BaseException:
            # outputs produced before the failure and acknowledged by now: their offsets, so a restart does not
            # score them again (no waiting: the original error is the one to report, at once)
            try:
                self.sink.settle(self.source, wait=False)
            except Exception as exc:
                log.warning("offsets of batches scored before the failure not committed (%s): they will be "
                            "consumed again", exc)
            raise
        finally:
            self.source.before_revoke = None  # closing revokes the partitions: nothing more to settle then
            self.report.seconds = time.perf_counter() - start
            if self.first_at is not None:
                self.report.busy_seconds = time.perf_counter() - self.first_at
            self.sink.close()
            self.source.close()
            if self.monitor is not None:
                self.monitor.close()
        log.info("%s", self.report)
        return self.report


def stream(model_uri, *, stop: threading.Event | None = None, handle_signals: bool = False, **options) -> StreamReport:
    """Score a Kafka topic into another until stopped (``stop`` set, SIGTERM/SIGINT, or max_messages).

    options: see StreamOptions (bootstrap_servers, input_topic, output_topic, group_id, guarantee, ...).
    """
    from ..model import Model, load_model

    opts = StreamOptions(**options)
    stop = stop or threading.Event()
    # shared_cpu: the Kafka clients' threads fetch and deliver while the model scores
    model = model_uri if isinstance(model_uri, Model) else load_model(model_uri, shared_cpu=True, **opts.load_kwargs())
    loop = _Loop(model, opts, stop)
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return loop.run()
