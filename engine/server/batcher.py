"""Dynamic batching: concurrent requests to one model merged by rows into one ``Model.score_batch``.

One task per model takes requests off a bounded queue in arrival order and scores them: on the event
loop itself while the model's calls are quick (under ``INLINE_S`` of CPU: handing a call to a thread
and back costs more than such a call), else on one scoring thread (the model libraries release the GIL;
the event loop keeps reading requests meanwhile). A request alone on an idle scorer goes at once;
requests that queued while the scorer was busy go together, up to ``max_rows`` rows, and with
``max_delay`` above 0 a batch of several waits that long for more. Only requests with equal params
and the same columns share a batch. A merged batch that fails is scored again request by request, so
one bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from ..model.payload import FloatRows

__all__ = ["Batcher", "Overloaded", "INLINE_S"]

log = logging.getLogger("arrowscore.serve")

# A model call that takes less than this runs on the event loop: a thread hop (submit, wake the
# thread, call_soon_threadsafe back) and the GIL passed back and forth with the loop cost more than
# such a call. Longer calls go to the thread, where they overlap with reading the next requests
# (measured with benchmarks/bench_serve.py: 10,000-row Arrow calls, 1-2.5 ms, did better on the
# thread; 1-row JSON to an ONNX MLP, merged into calls of 1-31 rows taking 0.15-0.35 ms on a slow
# 2-core machine, sent half its calls to the thread at 0.2 ms: 10-13k req/s, against 14-15k on the loop).
INLINE_S = 0.0005
# How long a call on the thread takes is its own CPU time: its wall time includes its waits for the GIL,
# which the loop holds while it reads requests (a 0.1 ms call measured 0.8 ms there, 3-15 ms beside a
# loop that stays busy, so a quick model stayed on the thread for good). Wall time over CPU time can
# also be a model waiting (sleep, I/O): only the loop tells the two apart. So a call quick on the CPU,
# whose wall time is under PROBE_WALL_S, makes the next call run on the loop; if that one waited (wall
# time well over CPU time there), the model stays on the thread for PROBE_EVERY calls before the next
# try (a model that waits costs the loop one call in that many, and one waiting longer, none).
PROBE_WALL_S = 0.05
PROBE_EVERY = 256


class Overloaded(Exception):
    """The queue is full: the caller answers 503 with Retry-After."""


class _Item:
    """One request waiting for its model (compared by identity: a timed-out item is removed from the
    queue, never an equal one)."""

    __slots__ = ("batch", "params", "key", "future", "rows")

    def __init__(self, batch: pa.RecordBatch | FloatRows, params: dict | None, key: tuple, future: asyncio.Future):
        self.batch, self.params, self.key, self.future, self.rows = batch, params, key, future, batch.num_rows


class Batcher:
    """Requests to one model, merged. ``entry.model`` is read per batch, so a reload swaps it between batches."""

    def __init__(self, entry, max_rows: int, max_delay_s: float, max_queue: int, metrics=None):
        self.entry, self.max_rows, self.max_delay, self.max_queue = entry, max_rows, max_delay_s, max_queue
        self.metrics = metrics
        self.items: collections.deque[_Item] = collections.deque()
        self._ready = asyncio.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"arrowscore-{entry.name}")
        self._task: asyncio.Task | None = None
        self._gauge = metrics.queue_depth.labels(entry.name) if metrics else None
        if self._gauge is not None and not metrics.multiprocess:  # read when scraped, not set per request
            self._gauge.set_function(lambda: len(self.items))
            self._gauge = None
        self._rows_hist = metrics.batch_rows.labels(entry.name) if metrics else None
        self._seconds_hist = metrics.batch_seconds.labels(entry.name) if metrics else None
        self._last = (float("inf"), 1)  # (seconds, rows) of the last call: the first call goes to the thread
        self._quick_rows = 0  # the most rows a call took under INLINE_S with (fewer always run on the loop)
        self._waits = False  # the last call on the loop spent INLINE_S / 2 or more off the CPU
        self._thread_calls = 0  # calls on the thread since the last call on the loop

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.entry.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False)

    async def submit(self, batch: pa.RecordBatch | FloatRows, params: dict | None, timeout: float) -> pa.RecordBatch:
        """The model's output for this batch; raises Overloaded, asyncio.TimeoutError or the scoring error."""
        if len(self.items) >= self.max_queue:
            raise Overloaded()
        loop = asyncio.get_running_loop()
        key = (json.dumps(params, sort_keys=True, default=str) if params else "", batch.schema)
        item = _Item(batch, params, key, loop.create_future())
        self.items.append(item)
        self._ready.set()
        self._depth()
        timer = loop.call_later(timeout, self._expire, item)  # (a timer handle: cheaper than wait_for's task)
        try:
            return await item.future
        finally:
            timer.cancel()
            if item.future.cancelled():  # its request was cancelled (client gone) while queued: free its place
                self._forget(item)

    def _expire(self, item: _Item) -> None:
        """A request not answered in time: 504 now, and its place in the queue is freed at once."""
        if not item.future.done():
            item.future.set_exception(asyncio.TimeoutError())
            self._forget(item)

    def _forget(self, item: _Item) -> None:
        try:
            self.items.remove(item)
        except ValueError:  # already taken into a batch, whose answer for it is dropped
            return
        self._depth()

    def _depth(self) -> None:
        if self._gauge is not None:
            self._gauge.set(len(self.items))

    def _inline(self, rows: int) -> bool:
        """Score on the event loop: a call of this many rows was quick, or the last call, scaled to these
        rows, was (a call's cost is mostly fixed: scaling a 1-row call to 31 rows sent every other call
        to the thread)."""
        last_seconds, last_rows = self._last
        if rows > self._quick_rows and last_seconds * max(1.0, rows / max(last_rows, 1)) >= INLINE_S:
            return False
        self._thread_calls = 0
        return True

    def _timed(self, seconds: float, rows: int) -> None:
        self._last = (seconds, rows)
        if seconds < INLINE_S:
            self._quick_rows = max(self._quick_rows, rows)
        elif rows <= self._quick_rows:  # no longer quick at this size (another model version, a slower machine)
            self._quick_rows = rows - 1

    def _take(self, group: list, rows: int) -> int:
        """Move the queued items that fit the group (same key, within max_rows) into it, keeping the rest in order."""
        key, rest = group[0].key, collections.deque()
        while self.items:
            item = self.items.popleft()
            if item.future.done():
                continue
            if item.key == key and rows + item.rows <= self.max_rows:
                group.append(item)
                rows += item.rows
            else:
                rest.append(item)
        self.items.extendleft(reversed(rest))
        return rows

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.items:
                self._ready.clear()
                await self._ready.wait()
            first = self.items.popleft()
            if first.future.done():  # timed out while queued
                continue
            group = [first]
            waiting = bool(self.items)
            rows = self._take(group, first.rows)
            if waiting and self.max_delay > 0 and rows < self.max_rows:
                await asyncio.sleep(self.max_delay)  # others are coming in: let them join
                rows = self._take(group, rows)
            self._depth()
            try:
                if self._inline(rows):
                    results, seconds, cpu = _score(self.entry.model, group)
                    self._waits = seconds - cpu >= INLINE_S / 2
                    self._timed(seconds if self._waits else cpu, rows)  # (not time the OS gave others)
                else:
                    results, seconds, cpu = await loop.run_in_executor(self._pool, _score, self.entry.model, group)
                    self._thread_calls += 1
                    quick = cpu < INLINE_S and seconds < PROBE_WALL_S \
                        and (not self._waits or self._thread_calls >= PROBE_EVERY)
                    self._timed(cpu if quick else seconds, rows)
            except Exception as exc:  # noqa: BLE001 - a bug here fails this group's requests, never the batcher
                log.error("model %s: the batcher failed a batch of %d requests: %s: %s", self.entry.name, len(group),
                          type(exc).__name__, exc, exc_info=True)
                results, seconds = [exc] * len(group), float("inf")
                self._timed(seconds, rows)
            if self._rows_hist is not None and seconds != float("inf"):
                self._rows_hist.observe(rows)
                self._seconds_hist.observe(seconds)
            for item, result in zip(group, results):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)


def _arrow(part) -> pa.RecordBatch:
    return part.to_batch() if isinstance(part, FloatRows) else part


def _merge(parts: list) -> pa.RecordBatch:
    """One batch of the parts' rows, in order (the group shares one schema)."""
    if all(isinstance(p, FloatRows) for p in parts):
        return FloatRows.concat(parts).to_batch()  # one numpy concatenate, one batch built
    merged = pa.Table.from_batches([_arrow(p) for p in parts]).combine_chunks()
    return merged.to_batches()[0] if merged.num_rows else _arrow(parts[0])


def _score(model, group: list[_Item]) -> tuple[list, float, float]:
    """(outputs or errors of the group's requests, seconds, this thread's CPU seconds): one model call, or
    one per request if that fails."""
    started, cpu = time.perf_counter(), time.thread_time()
    results = _results(model, group)
    return results, time.perf_counter() - started, time.thread_time() - cpu


def _results(model, group: list[_Item]) -> list:
    params = group[0].params
    if len(group) > 1:
        try:
            merged = _merge([i.batch for i in group])
            out = model.score_batch(merged, params)
            if out.num_rows != merged.num_rows:
                raise ValueError("the model's output does not have one row per input row")
            results, offset = [], 0
            for item in group:
                results.append(out.slice(offset, item.rows))
                offset += item.rows
            return results
        except Exception:  # someone's rows failed the batch: each request alone, so only theirs fail
            pass
    results = []
    for item in group:
        try:
            results.append(model.score_batch(_arrow(item.batch), params))
        except Exception as exc:
            results.append(exc)
    return results
