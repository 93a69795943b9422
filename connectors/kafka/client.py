"""Kafka clients for the stream mode: a consumer that hands out micro-batches of messages and a
producer that delivers them, acknowledged (at-least-once) or in transactions (exactly-once).

    source = KafkaSource({"bootstrap.servers": "127.0.0.1:19092", "group.id": "scorer"}, "events")
    sink = KafkaSink({"bootstrap.servers": "127.0.0.1:19092"}, transactional_id="scorer-0")
    msgs = source.consume(10_000, max_wait_ms=100)
    sink.begin(); sink.produce("scores", b"...", msgs[0].key()); sink.commit(source, msgs)
"""

from __future__ import annotations

import time

from engine.errors import ConnectorError, require

__all__ = ["KafkaSource", "KafkaSink"]


class KafkaSource:
    """A consumer of one topic in a group; offsets are committed only when told."""

    def __init__(self, config: dict, topic: str):
        self.ck = require("confluent_kafka", "kafka", "streaming over Kafka")
        self.topic = topic
        self.consumer = self.ck.Consumer({"enable.auto.commit": False, "auto.offset.reset": "earliest",
                                          "isolation.level": "read_committed", **config})
        self.consumer.subscribe([topic])

    def consume(self, max_messages: int, max_wait_ms: int, stop=None) -> list:
        """Up to ``max_messages``: wait (up to 0.5 s) for the first, then at most ``max_wait_ms`` more."""
        msgs = self._checked(self.consumer.consume(1, 0.5))
        if not msgs:
            return []
        deadline = time.monotonic() + max_wait_ms / 1000
        while len(msgs) < max_messages and not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # consume(n, timeout) returns when n messages are in or the timeout passes, whichever is first
            msgs.extend(self._checked(self.consumer.consume(max_messages - len(msgs), left)))
        return msgs

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
        self.consumer.commit(offsets=self.offsets(msgs), asynchronous=False)

    def group_metadata(self):
        return self.consumer.consumer_group_metadata()

    def rewind(self, msgs: list) -> None:
        """Consume ``msgs`` again: seek their partitions back to the last committed offsets."""
        partitions = [self.ck.TopicPartition(t, p) for t, p in {(m.topic(), m.partition()) for m in msgs}]
        for tp in self.consumer.committed(partitions, 30):
            self.consumer.seek(self.ck.TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))

    def lag(self) -> int:
        lag = 0
        for tp in self.consumer.assignment():
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            pos = self.consumer.position([tp])[0].offset
            lag += max(high - (pos if pos >= 0 else low), 0)
        return lag

    def close(self) -> None:
        self.consumer.close()  # leaves the group: partitions move to the other members at once


class KafkaSink:
    """An idempotent producer; with ``transactional_id``, every batch is one transaction."""

    def __init__(self, config: dict, transactional_id: str | None = None):
        self.ck = require("confluent_kafka", "kafka", "streaming over Kafka")
        settings = {"acks": "all", "enable.idempotence": True, "linger.ms": 5, **config}
        if transactional_id:
            settings["transactional.id"] = transactional_id
        self.producer = self.ck.Producer(settings)
        self.transactional = bool(transactional_id)
        if self.transactional:
            self.producer.init_transactions(60)
        self._failed: list = []

    def _deliver(self, err, msg) -> None:
        if err is not None:
            self._failed.append(err)

    def begin(self) -> None:
        if self.transactional:
            self.producer.begin_transaction()

    def produce(self, topic: str, value: bytes, key, headers=None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._deliver)
                return
            except BufferError:  # the producer queue is full: let it drain, then retry
                self.producer.poll(0.05)

    def commit(self, source: KafkaSource, msgs: list) -> None:
        """Outputs delivered, then the consumed offsets: in the transaction, or acknowledged then committed."""
        if self.transactional:
            self.producer.send_offsets_to_transaction(source.offsets(msgs), source.group_metadata(), 60)
            self.producer.commit_transaction(60)
            return
        self.producer.flush(60)
        if self._failed or len(self.producer):
            raise ConnectorError(f"the broker did not acknowledge every output ({self._failed[:3]}); "
                                 "offsets were not committed, so the batch will be consumed again")
        source.commit(msgs)

    def abort(self) -> None:
        if self.transactional:
            self.producer.abort_transaction(60)

    def close(self) -> None:
        self.producer.flush(30)
