"""Kafka: messages <-> Arrow batches (``codec``) and the clients the stream mode drives (``client``)."""

from .client import KafkaSink, KafkaSource
from .codec import FORMATS, PASS_THROUGH, RESERVED, decode, encode

__all__ = ["decode", "encode", "FORMATS", "PASS_THROUGH", "RESERVED", "KafkaSource", "KafkaSink"]
