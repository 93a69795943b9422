"""The local runner: read, score and write overlap in three threads joined by bounded queues.

    reader thread --(read_ahead batches)--> scorer (this thread) --(read_ahead batches)--> writer thread

Memory stays flat: at most ``2 * read_ahead`` batches are in flight whatever the input size.
Parquet decoding and encoding release the GIL, and so do the model libraries, so the stages run
on different cores. Any failure stops all three stages, removes the staged output and re-raises;
so does Ctrl-C (KeyboardInterrupt), except during the commit, which finishes first.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time

from ..jobs.options import LocalOptions, ScoreOptions, ScoreReport
from ..jobs.parquet import commit_parquet_job, open_parquet_job
from ..jobs.progress import Progress
from ..jobs.scoring import JobScorer, Where

__all__ = ["run_local"]

log = logging.getLogger("arrowscore.local")
_DONE = object()


class _Stopped(Exception):
    """Another stage failed; this one stops quietly."""


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped() from None


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped() from None


def _reader(parts, q_in: queue.Queue, stop: threading.Event) -> None:
    try:
        for part in parts:
            first = part.first_row
            for batch in part.batches():
                _put(q_in, (part, first, batch), stop)
                first += batch.num_rows
            _put(q_in, (part, first, None), stop)  # end of this input file
        _put(q_in, _DONE, stop)
    except _Stopped:
        pass
    except BaseException as exc:  # handed to the scorer thread, which raises it
        try:
            _put(q_in, exc, stop)
        except _Stopped:
            pass


def _writer(sink, dead, q_out: queue.Queue, stop: threading.Event, errors: list) -> None:
    try:
        while True:
            item = _get(q_out, stop)
            if item is _DONE:
                return
            kind, part, payload = item
            if kind == "rows":
                sink.write(part, payload)
            elif kind == "end":
                sink.close_part(part)
            else:
                dead.write(payload)
    except _Stopped:
        pass
    except BaseException as exc:
        errors.append(exc)
        stop.set()


def run_local(model_uri, input: str, output: str, options: ScoreOptions,
              local: LocalOptions = LocalOptions()) -> ScoreReport:
    from ..model import Model, load_model

    filesystem = local.filesystem
    loading = time.perf_counter()
    model = model_uri if isinstance(model_uri, Model) else load_model(model_uri, shared_cpu=True,
                                                                      **options.load_kwargs())
    start = time.perf_counter()
    job = JobScorer.from_options(model, options)
    source, parts, total, sink, dead = open_parquet_job(model, input, output, options, filesystem)
    progress = Progress(total, options.progress)
    log.info("scoring %s rows from %d files with %s (flavor %s) into %s", f"{total:,}", len(parts),
             model.path, model.flavor, output)

    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=options.read_ahead)
    q_out: queue.Queue = queue.Queue(maxsize=options.read_ahead)
    errors: list = []
    reader = threading.Thread(target=_reader, args=(parts, q_in, stop), name="arrowscore-read", daemon=True)
    writer = threading.Thread(target=_writer, args=(sink, dead, q_out, stop, errors), name="arrowscore-write",
                              daemon=True)
    reader.start()
    writer.start()
    scored = 0
    try:
        while True:
            item = _get(q_in, stop)
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            part, first, batch = item
            if batch is None:
                _put(q_out, ("end", part.index, None), stop)
                continue
            outputs, rejected = job.score(batch, Where(part.path, first))
            for out in outputs:
                _put(q_out, ("rows", part.index, out), stop)
                scored += out.num_rows
            if rejected is not None:
                _put(q_out, ("dead", part.index, rejected), stop)
            progress.add(batch.num_rows)
        _put(q_out, _DONE, stop)
        writer.join()
        if errors:
            raise errors[0]
        with _sigint_deferred():
            files = commit_parquet_job(job, source.schema, sink, dead, scored, total)
    except _Stopped:
        _abort(stop, reader, writer, sink, dead)
        raise errors[0] if errors else RuntimeError("a scoring stage stopped without an error") from None
    except BaseException:
        _abort(stop, reader, writer, sink, dead)
        raise
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    report = ScoreReport(rows=total, rows_scored=scored, dead_lettered=dead.rows, seconds=seconds,
                         output_files=files, input_files=len(parts),
                         dead_letter_path=options.dead_letter if dead.rows else None, runner="local",
                         load_seconds=start - loading)
    log.info("%s", report)
    return report


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C (or a SIGTERM) until the block ends, then raise it: the commit moves the old output aside before the new
    one takes its place, and stopping between the two would leave neither. Only Python's own handler is held,
    and only in the main thread (the only one that gets signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGTERM too, where the CLI made it a KeyboardInterrupt as well
    held = [n for n in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(n) is signal.default_int_handler]
    caught = []
    previous = {n: signal.signal(n, lambda signum, frame: caught.append(signum)) for n in held}
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler)
    if caught:
        raise KeyboardInterrupt


def _abort(stop, reader, writer, sink, dead) -> None:
    stop.set()
    reader.join(timeout=10)
    writer.join(timeout=10)
    sink.abort()
    dead.abort()
