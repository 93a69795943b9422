"""Connectors: where batches come from and where scored batches go.

- ``connectors.parquet``: ``ParquetSource`` (files -> ``Part``s -> RecordBatches, a row group at a
  time), ``ParquetSink`` (part files staged, committed together), ``DeadLetterFile``;
- ``connectors.kafka``: ``decode`` / ``encode`` (messages <-> RecordBatches) and the clients
  ``KafkaSource`` / ``KafkaSink`` (consume, produce, commit offsets or transactions).

A connector knows its system, not the model: runners in ``engine.runners`` drive a source, the
scorer and a sink. A new connector is a module here, used by a runner or mode.
"""
