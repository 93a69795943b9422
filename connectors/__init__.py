"""Sources and sinks: where batches come from and where scored batches go.

A Source yields RecordBatches; a Sink accepts them and commits once at the end, so nothing is
visible before the job succeeds. ``connectors.memory`` is the in-process seam tests use.

>>> from connectors.memory import MemorySource, MemorySink
>>> sink = MemorySink()
>>> for batch in MemorySource([pa.record_batch({"x": [1.0]})]):   # doctest: +SKIP
...     sink.write(batch)
>>> sink.commit()                                                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterator, Protocol

import pyarrow as pa

__all__ = ["Source", "Sink"]


class Source(Protocol):
    def __iter__(self) -> Iterator[pa.RecordBatch]: ...


class Sink(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...
