"""In-memory Source and Sink: the test seam, and the way to score batches you already hold."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

__all__ = ["MemorySource", "MemorySink"]


@dataclass
class MemorySource:
    batches: list

    def __iter__(self):
        return iter(self.batches)


@dataclass
class MemorySink:
    batches: list = field(default_factory=list)
    committed: bool = False

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def commit(self) -> None:
        self.committed = True

    def abort(self) -> None:
        self.batches.clear()

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches)
