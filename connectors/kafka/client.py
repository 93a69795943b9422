"""Kafka clients for the stream mode: a consumer that hands out micro-batches of messages and a
producer that delivers them, acknowledged (at-least-once) or in transactions (exactly-once).

    source = KafkaSource({"bootstrap.servers": "127.0.0.1:19092", "group.id": "scorer"}, "events")
    sink = KafkaSink({"bootstrap.servers": "127.0.0.1:19092"}, transactional_id="scorer-0")
    msgs = source.consume(10_000, max_wait_ms=100)
    sink.begin(); sink.produce("scores", b"...", msgs[0].key()); sink.commit(source, msgs)
    sink.settle(source)   # at-least-once: wait for the acknowledgements still due, commit their offsets

Brokers that do not answer for ``broker_timeout_s`` (at start, or once librdkafka reports them all
down) raise one UnavailableError (a ConnectorError); librdkafka's own log lines, which repeat many times a second while
brokers are down, go to the ``arrowscore.kafka`` logger at debug level.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import contextmanager

from engine.errors import ConnectorError, TransactionAborted, UnavailableError, require

__all__ = ["KafkaSource", "KafkaSink"]

log = logging.getLogger("arrowscore.kafka")
_COMMIT_FAILURES = 5  # asynchronous offset commits failing in a row that stop a stream


class _Quiet:
    """librdkafka's ``logger``: its lines at debug level (``-v`` shows them)."""

    def log(self, level, msg, *args):
        log.debug(msg, *args)


@contextmanager
def _failing(ck, what: str):
    """A KafkaException as one ConnectorError line."""
    try:
        yield
    except ck.KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        raise ConnectorError(f"{what} failed: {err.str() if hasattr(err, 'str') else err}") from None


class _Brokers:
    """Whether the brokers answer: librdkafka's error_cb says when all are down; a metadata request
    says they are back; past ``timeout_s`` down, ``check`` raises."""

    def __init__(self, ck, servers: str, timeout_s: float):
        self.ck, self.servers, self.timeout_s = ck, servers, timeout_s
        self.down_since: float | None = None
        self.reason = ""

    def on_error(self, err) -> None:  # error_cb: librdkafka calls it from consume/poll, on this thread
        if err.code() == self.ck.KafkaError._ALL_BROKERS_DOWN:
            self.down()
        else:  # the cause ("Connect to ... failed: Connection refused") comes as its own error
            self.reason = err.str()
        log.debug("Kafka client error: %s", err.str())

    def down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("the Kafka brokers at %s do not answer%s; retrying for up to %g s", self.servers,
                        f" ({self.reason})" if self.reason else "", self.timeout_s)

    def up(self) -> None:
        if self.down_since is not None:
            log.info("the Kafka brokers at %s answer again", self.servers)
        self.down_since = None

    def check(self, probe) -> None:
        """While brokers are down: ask them (``probe``, true when they answer); past the timeout, raise."""
        if self.down_since is None:
            return
        if probe(min(1.0, self.timeout_s)):
            self.up()
        elif time.monotonic() - self.down_since >= self.timeout_s:
            raise self.error()

    def error(self) -> UnavailableError:
        why = f" (last error: {self.reason})" if self.reason else ""
        return UnavailableError(f"the Kafka brokers at {self.servers} could not be reached for {self.timeout_s:g} s{why}; "
                              "check --bootstrap-servers and that the brokers are up, or wait longer with "
                              "--broker-timeout-s")


class KafkaSource:
    """A consumer of one topic in a group; offsets are committed only when told."""

    def __init__(self, config: dict, topic: str, broker_timeout_s: float = 60.0):
        self.ck = require("confluent_kafka", "kafka", "streaming over Kafka")
        self.topic = topic
        self.brokers = _Brokers(self.ck, config.get("bootstrap.servers", "?"), broker_timeout_s)
        # fetch.queue.backoff.ms: librdkafka stops fetching while its queue is full (64 MB by default, about 500
        # Arrow messages of 1,000 rows x 16 doubles) and by default waits 1 s before fetching again, which stalled
        # a stream scoring faster than that for most of a second; 10 ms resumes as soon as scoring drains it
        self.consumer = self.ck.Consumer({"enable.auto.commit": False, "auto.offset.reset": "earliest",
                                          "isolation.level": "read_committed", "fetch.queue.backoff.ms": 10,
                                          "logger": _Quiet(), **config, "error_cb": self.brokers.on_error,
                                          "on_commit": self._committed})
        self._wait_for_brokers()
        self._revoked: set = set()
        self._unsure: dict = {}  # (topic, partition) -> offset committed asynchronously, not yet confirmed
        self._commit_failures, self._commit_error = 0, ""  # asynchronous commits failed in a row
        self.before_revoke = None  # called before partitions go: the sink commits what it has delivered
        self.consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked_cb, on_lost=self._lost_cb)

    # Rebalance callbacks run inside consume(), which the stream calls only between transactions: no
    # transaction is open then. Messages already held from a revoked partition are dropped from the batch
    # being gathered: the partition's next owner (maybe this consumer again) starts at its committed offset.
    def _assigned(self, consumer, partitions) -> None:
        log.info("partitions assigned: %s [%s]", self.topic, ", ".join(str(tp.partition) for tp in partitions))

    def _revoked_cb(self, consumer, partitions) -> None:
        # outputs delivered and offsets still on their way land before the partitions go, so the next owner
        # starts after them
        if self.before_revoke is not None:
            try:
                self.before_revoke()
            except Exception as exc:  # raised again by the stream's next settle: the batch stays pending
                log.warning("outputs in flight not settled before partitions were revoked: %s", exc)
        self._settle_commits({(tp.topic, tp.partition) for tp in partitions})
        self._revoked.update((tp.topic, tp.partition) for tp in partitions)
        log.info("partitions revoked: %s [%s]", self.topic, ", ".join(str(tp.partition) for tp in partitions))

    def _lost_cb(self, consumer, partitions) -> None:  # no longer ours: too late to commit for them
        for tp in partitions:
            self._unsure.pop((tp.topic, tp.partition), None)
        self._revoked.update((tp.topic, tp.partition) for tp in partitions)
        log.info("partitions lost: %s [%s]", self.topic, ", ".join(str(tp.partition) for tp in partitions))

    def _wait_for_brokers(self) -> None:
        deadline = time.monotonic() + self.brokers.timeout_s
        while not self._answers(max(min(1.0, deadline - time.monotonic()), 0.01)):
            self.consumer.poll(0)  # serves error_cb (the reason); nothing to consume before subscribe
            self.brokers.down()
            if time.monotonic() >= deadline:
                self.consumer.close()
                raise self.brokers.error()
        self.brokers.up()

    def _answers(self, timeout_s: float) -> bool:
        try:
            self.consumer.list_topics(self.topic, timeout=timeout_s)
            return True
        except self.ck.KafkaException as exc:
            self.brokers.reason = self.brokers.reason or exc.args[0].str()
            return False

    @property
    def reachable(self) -> bool:
        return self.brokers.down_since is None

    def consume(self, max_messages: int, max_wait_ms: int, stop=None, max_bytes: int | None = None) -> list:
        """Up to ``max_messages`` holding about ``max_bytes`` of values at most (one message at least): wait
        (up to 0.5 s) for the first, then at most ``max_wait_ms`` more. Raises UnavailableError once the
        brokers have been down for ``broker_timeout_s``."""
        self._revoked.clear()
        msgs = self._settled(self._checked(self.consumer.consume(1, 0.5)))
        if not msgs:
            self.brokers.check(self._answers)
            return []
        self.brokers.up()
        deadline = time.monotonic() + max_wait_ms / 1000
        size = sum(len(m) for m in msgs)
        while len(msgs) < max_messages and not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            want = max_messages - len(msgs)
            if max_bytes is not None:  # as many more as fit, judged by the mean size so far
                want = min(want, (max_bytes - size) * len(msgs) // max(size, 1))
            if left <= 0 or want < 1:
                break
            # consume(n, timeout) returns when n messages are in or the timeout passes, whichever is first
            got = self._checked(self.consumer.consume(want, left))
            size += sum(len(m) for m in got)
            msgs = self._settled(msgs + got)
        return msgs

    def _settled(self, msgs: list) -> list:
        """After a rebalance inside consume(): without the messages of revoked partitions (one call may return
        some from before the rebalance and some from after), those of them assigned again read anew from
        their committed offsets."""
        if not self._revoked:
            return msgs
        revoked, self._revoked = self._revoked, set()
        dropped = [m for m in msgs if (m.topic(), m.partition()) in revoked]
        if dropped:
            self.rewind(dropped)
        return [m for m in msgs if (m.topic(), m.partition()) not in revoked]

    def _checked(self, got: list) -> list:
        out = []
        for m in got:
            if m.error():
                if m.error().code() == self.ck.KafkaError._PARTITION_EOF:
                    continue
                raise ConnectorError(f"consuming {self.topic!r} failed: {m.error()}")
            out.append(m)
        return out

    def offsets(self, msgs: list) -> list:
        """The offsets to commit once ``msgs`` are delivered: one past the last of each partition."""
        last = {}
        for m in msgs:
            last[(m.topic(), m.partition())] = m.offset()
        return [self.ck.TopicPartition(t, p, o + 1) for (t, p), o in last.items()]

    def commit(self, msgs: list) -> None:
        """Commit the offsets past ``msgs`` (their outputs are delivered) without waiting for the broker: a
        synchronous commit costs a round trip per micro-batch. Offsets not confirmed yet are committed again,
        waiting, before their partitions are revoked and at close(); a failed one is retried then (until then a
        crash re-reads those messages, which at-least-once allows)."""
        if self._commit_failures >= _COMMIT_FAILURES:
            raise ConnectorError(f"the last {self._commit_failures} offset commits of {self.topic!r} failed (last: "
                                 f"{self._commit_error}): the stream stops rather than score on without committing")
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}  # a lost partition is not ours
        offsets = [tp for tp in self.offsets(msgs) if (tp.topic, tp.partition) in owned]
        for tp in offsets:
            self._unsure[(tp.topic, tp.partition)] = tp.offset
        if offsets:
            with _failing(self.ck, f"committing the offsets consumed from {self.topic!r}"):
                self.consumer.commit(offsets=offsets, asynchronous=True)

    def _committed(self, err, partitions) -> None:  # on_commit: librdkafka calls it from consume(), on this thread
        if err is not None:
            self._commit_failures += 1
            self._commit_error = err.str() if hasattr(err, "str") else str(err)
            if self._commit_failures == 1:
                log.warning("committing offsets of %r failed (%s); the next commit carries them again", self.topic,
                            self._commit_error)
            return
        self._commit_failures = 0
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp.error is None and self._unsure.get(key, -1) <= tp.offset:
                self._unsure.pop(key, None)

    def _settle_commits(self, which=None) -> None:
        """Commit, waiting for the broker, the offsets not yet confirmed (of the partitions ``which``, or all)."""
        offsets = [self.ck.TopicPartition(t, p, o) for (t, p), o in self._unsure.items()
                   if which is None or (t, p) in which]
        if not offsets or not self.reachable:  # nobody to wait for: re-read after a restart, as after a crash
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except self.ck.KafkaException as exc:
            where = ", ".join(f"[{tp.partition}] {tp.offset}" for tp in offsets)
            log.warning("committing the offsets %s of %r failed (%s): those messages will be consumed again", where,
                        self.topic, exc.args[0] if exc.args else exc)
        for tp in offsets:
            self._unsure.pop((tp.topic, tp.partition), None)

    def group_metadata(self):
        return self.consumer.consumer_group_metadata()

    def rewind(self, msgs: list) -> None:
        """Consume ``msgs`` again: seek their partitions (those still assigned) back to the last committed offsets."""
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        partitions = [self.ck.TopicPartition(t, p) for t, p in {(m.topic(), m.partition()) for m in msgs} & owned]
        if not partitions:
            return
        with _failing(self.ck, f"rewinding {self.topic!r} to its committed offsets"):
            for tp in self.consumer.committed(partitions, min(30.0, self.brokers.timeout_s)):
                self.consumer.seek(self.ck.TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    def lag(self) -> int:
        lag = 0
        for tp in self.consumer.assignment():
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            pos = self.consumer.position([tp])[0].offset
            lag += max(high - (pos if pos >= 0 else low), 0)
        return lag

    def close(self) -> None:
        try:
            self._settle_commits()
        finally:
            self.consumer.close()  # leaves the group: partitions move to the other members at once


class _Batch:
    """One micro-batch's outputs on their way (at-least-once): its offsets are committed once the broker has
    acknowledged every one of them."""

    __slots__ = ("msgs", "left", "errors", "done")

    def __init__(self):
        self.msgs, self.left, self.errors, self.done = None, 0, [], None

    def delivered(self, err, msg) -> None:  # on_delivery: served by poll()/flush() on this thread
        self.left -= 1
        if err is not None:
            self.errors.append(err)


class KafkaSink:
    """An idempotent producer; with ``transactional_id``, every batch is one transaction.

    Each replica of a stream has its own transactional id; the consumer's group metadata goes with the
    offsets (KIP-447), so the group coordinator, not the id, fences a replica whose partitions moved on.
    At-least-once, a batch's acknowledgements are not waited for at once: the next batch is consumed and
    scored meanwhile, and a batch's offsets are committed, oldest first, once all its outputs are acknowledged
    (``settle``); at most ``in_flight`` batches are on their way.
    """

    in_flight = 1

    def __init__(self, config: dict, transactional_id: str | None = None, broker_timeout_s: float = 60.0):
        self.ck = require("confluent_kafka", "kafka", "streaming over Kafka")
        self.timeout_s = broker_timeout_s
        self.brokers = _Brokers(self.ck, config.get("bootstrap.servers", "?"), broker_timeout_s)
        defaults = {"acks": "all", "enable.idempotence": True, "linger.ms": 5}
        if str(config.get("acks", "all")).lower() not in ("all", "-1"):
            defaults["enable.idempotence"] = False  # idempotence needs acks=all; the user chose fewer acks
        if transactional_id:
            # a replica killed mid-transaction holds back read_committed readers of its output partitions until
            # the broker aborts it: 10 s as Kafka Streams does, not librdkafka's 60 s
            defaults["transaction.timeout.ms"] = 10_000
        settings = {**defaults, "logger": _Quiet(), **config, "error_cb": self.brokers.on_error}
        if transactional_id:
            settings["transactional.id"] = transactional_id
        self.producer = self.ck.Producer(settings)
        self.transactional = bool(transactional_id)
        if self.transactional:
            with _failing(self.ck, f"starting transactions as {transactional_id!r}"):
                self.producer.init_transactions(self.timeout_s)
        self._open: _Batch | None = None  # at-least-once: the batch being produced
        self._pending: deque[_Batch] = deque()  # at-least-once: produced, offsets not committed yet

    def begin(self) -> None:
        if self.transactional:
            with _failing(self.ck, "beginning a transaction"):
                self.producer.begin_transaction()
        else:
            self._open = _Batch()

    def produce(self, topic: str, value: bytes, key, headers=None) -> None:
        batch = self._open  # exactly-once: None, the transaction's commit says whether all were delivered
        callback = {} if batch is None else {"on_delivery": batch.delivered}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, **callback)
                if batch is not None:
                    batch.left += 1
                return
            except BufferError:  # the producer queue is full: let it drain, then retry
                self.producer.poll(0.05)

    def commit(self, source: KafkaSource, msgs: list, done=None) -> None:
        """Outputs delivered, then the consumed offsets: in the transaction, or acknowledged then committed
        (at-least-once: by this call or a later ``settle``). ``done()`` is called once the offsets are committed."""
        if self.transactional:
            what = "committing the transaction (outputs, dead letters and offsets)"
            try:
                self.producer.send_offsets_to_transaction(source.offsets(msgs), source.group_metadata(), self.timeout_s)
                self.producer.commit_transaction(self.timeout_s)
            except self.ck.KafkaException as exc:
                err = exc.args[0] if exc.args else None
                why = err.str() if hasattr(err, "str") else str(exc)
                if hasattr(err, "txn_requires_abort") and err.txn_requires_abort():
                    # e.g. the group rebalanced and this member's generation is gone: a zombie's commit never lands
                    self.abort()
                    raise TransactionAborted(f"{what} failed: {why}; the transaction was aborted") from None
                raise ConnectorError(f"{what} failed: {why}") from None
            if done is not None:
                done()
            return
        batch, self._open = self._open or _Batch(), None
        batch.msgs, batch.done = msgs, done
        self._pending.append(batch)
        self.settle(source, keep=self.in_flight)

    def settle(self, source: KafkaSource, keep: int = 0, wait: bool = True) -> None:
        """At-least-once: commit the offsets of the batches whose outputs are all acknowledged, oldest first,
        waiting (up to the broker timeout) until at most ``keep`` batches are left on their way; without
        ``wait``, only those acknowledged by now, stopping quietly at the first that is not (or failed)."""
        self.producer.poll(0)
        deadline = None
        while self._pending:
            head = self._pending[0]
            if head.errors and wait:
                raise ConnectorError(f"the broker did not acknowledge every output ({head.errors[:3]}); offsets were "
                                     "not committed, so the batch will be consumed again")
            if head.left <= 0 and not head.errors:
                source.commit(head.msgs)
                self._pending.popleft()
                if head.done is not None:
                    head.done()
                continue
            if len(self._pending) <= keep or not wait:
                return
            deadline = deadline or time.monotonic() + self.timeout_s
            if time.monotonic() >= deadline:
                raise ConnectorError(f"the broker did not acknowledge every output (none within {self.timeout_s:g} s, "
                                     f"last error: {self.brokers.reason or 'none'}); offsets were not committed, so "
                                     "the batch will be consumed again")
            self.producer.poll(0.05)

    def abort(self) -> None:
        if self.transactional:
            with _failing(self.ck, "aborting the transaction"):
                self.producer.abort_transaction(self.timeout_s)

    def close(self) -> None:
        self.producer.flush(min(30.0, self.timeout_s))
