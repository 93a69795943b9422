"""Warm actor pools for the Ray runner (``keep_warm_s``): later jobs of the same model skip actor start-up.

    arrowscore score MODEL_URI in/ out/ --runner ray --ray-address auto --ray-keep-warm-s 600

A job's actors cost seconds to start (a Ray worker process, its imports, the model load), and Ray
Data starts new ones for every job. With ``keep_warm_s`` the job instead uses named, detached
``WarmActor``\\ s in the namespace ``arrowscore``, one pool per model version: the name holds a digest
of the model directory (every file's name, size and time), the load options, the actor's resources,
the runtime env and arrowscore's code, so a changed model or option gets a pool of its own and a
stale one is never used (an actor Ray restarts after a crash checks the directory against the digest).
The first job creates the pool (``get_if_exists``); later jobs on the same cluster find it loaded.
While a job runs its driver's heartbeat keeps the actors busy; an actor that no job has used for
``keep_warm_s`` seconds (the latest job's value) removes itself.

Without Ray Data the driver schedules the work itself: the input's pieces (files, or runs of row
groups of a big file) go to the actors in turn, a few in flight per actor, and the results are taken
in input order, so the output is the local runner's, file for file. Each actor reads its piece with
the local runner's reader and scores it with ``score_rows``, the Ray Data actors' code. Two calls run
at once in an actor (``max_concurrency``): one reads while the other scores. A crashed actor is
restarted by Ray once and its calls retried; an actor gone for good is started anew once; the driver
takes only completed calls, so no row is lost or written twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pickle
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import ConfigError, ScoringError, UnavailableError
from ..jobs.options import RayOptions, ScoreOptions

__all__ = ["WarmActor", "NAMESPACE", "pool_name", "warm_results"]

log = logging.getLogger("arrowscore.ray")
NAMESPACE = "arrowscore"
IN_FLIGHT = 2  # calls queued per actor: one reading while one scores (max_concurrency)
ATTEMPTS = 3  # to find or create an actor that is alive
RESTARTS = 1  # Ray restarts a crashed actor and retries its calls once; then the driver starts the pool once more
WAIT_NOTE_S = 15.0  # a pool not started by then gets a log line saying what it waits for


class WarmActor:
    """A pool member: the model loaded once, then one call per piece of input, for any job."""

    def __init__(self, location: str, packed, options: ScoreOptions, idle_s: float, load_log: str | None = None,
                 digest: str | None = None):
        from connectors.parquet import source  # noqa: F401  what a call's arguments need: >1 s of imports cold
        from .rayactor import load_in_actor

        if digest is not None and (Path(location) / "MLmodel").is_file() and _fingerprint(Path(location)) != digest:
            # Ray restarting this actor after a crash: the directory holds another model than the pool's name says
            raise ConfigError(f"the model at {location} changed since this actor pool was made; a new pool is made")
        self.model = load_in_actor(location, packed, options, load_log)
        self.jobs: dict[bytes, object] = {}  # a JobScorer per job's options (keep columns, renames, params)
        self.lock = threading.Lock()
        self.busy, self.last, self.closing, self.idle_s = 0, time.monotonic(), False, idle_s
        threading.Thread(target=self._expire, name="arrowscore-idle", daemon=True).start()

    def ready(self, idle_s: float | None = None) -> bool:
        """True while the actor takes work (it loaded its model); False once it is removing itself. A job
        sets the idle time (the latest job's keep_warm_s holds)."""
        with self.lock:
            self.last = time.monotonic()
            if idle_s:
                self.idle_s = idle_s
            return not self.closing

    def score(self, options: ScoreOptions, part) -> pa.Table:
        """One piece of input (a ``Part``), read here and scored: ``score_rows``'s result table."""
        with self.lock:  # first: while a call is under way the actor never removes itself
            self.busy += 1
        try:
            from ..jobs.scoring import JobScorer
            from .rayactor import POSITION, read_with_positions, score_rows

            key = pickle.dumps(options)
            with self.lock:
                job = self.jobs.get(key)
                if job is None:
                    while len(self.jobs) >= 16:  # options of past jobs: keep the latest few
                        self.jobs.pop(next(iter(self.jobs)))
                    job = self.jobs[key] = JobScorer.from_options(self.model, options)
            batches = [b for t in read_with_positions(part) for b in t.to_batches()]
            table = pa.Table.from_batches(batches) if batches else pa.table({POSITION: pa.array([], pa.int64())})
            return score_rows(job, {part.index: part.path}, options.batch_rows, table)
        finally:
            with self.lock:
                self.busy -= 1
                self.last = time.monotonic()

    def _expire(self) -> None:
        import ray

        while True:
            time.sleep(max(min(self.idle_s / 4, 5.0), 0.25))
            with self.lock:
                if self.busy == 0 and time.monotonic() - self.last > self.idle_s:
                    self.closing = True
                    break
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def _fingerprint(path: Path) -> str:
    """The model directory's files (name, size, modification time): a changed model is another pool."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        stat = f.stat()
        digest.update(f"{f.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """This arrowscore's code (every source file's name, size and time): a pool of older code is not used."""
    root = Path(__file__).resolve().parents[2]
    return hashlib.sha256("".join(_fingerprint(root / name) for name in ("engine", "flavors", "connectors")).encode()
                          ).hexdigest()


def pool_name(path: Path, digest: str, options: ScoreOptions, ray_opts: RayOptions, gpus: float) -> str:
    """The pool's name prefix: one per model version, load options, actor resources, env and code version."""
    key = json.dumps([str(path), digest, repr(options.load_kwargs()), ray_opts.cpus_per_actor, gpus,
                      ray_opts.runtime_env, ray_opts.ship_code, _code_digest()], sort_keys=True, default=str)
    return f"arrowscore-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _pool(ray, path: Path, packed, options: ScoreOptions, ray_opts: RayOptions, gpus: float) -> list:
    """The pool's actors, found or created, each answering ``ready`` (so loaded)."""
    digest = _fingerprint(path)
    name = pool_name(path, digest, options, ray_opts, gpus)
    actor = ray.remote(WarmActor)
    settings = dict(namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=ray_opts.cpus_per_actor,
                    num_gpus=gpus, max_restarts=RESTARTS, max_task_retries=RESTARTS, max_concurrency=IN_FLIGHT)
    handles: dict[int, object] = {}
    wanted = list(range(ray_opts.actors))
    error = None
    for _ in range(ATTEMPTS):
        made = {i: actor.options(name=f"{name}-{i}", **settings).remote(
            str(path), packed, options, ray_opts.keep_warm_s, ray_opts.load_log, digest) for i in wanted}
        checks = {i: h.ready.remote(ray_opts.keep_warm_s) for i, h in made.items()}
        if len(ray.wait(list(checks.values()), num_returns=len(checks), timeout=WAIT_NOTE_S)[0]) < len(checks):
            log.warning("waiting for Ray to start the actor pool %s (%d x %g CPU): is the cluster's CPU held by other "
                        "jobs or warm pools (they hold it until idle for their keep_warm_s)?", name, len(checks),
                        ray_opts.cpus_per_actor)
        wanted = []
        for i, check in checks.items():
            try:
                alive = ray.get(check)
            except ray.exceptions.RayActorError as exc:  # removed itself as we came, or could not load
                alive, error = False, exc
            if alive:
                handles[i] = made[i]
            else:
                wanted.append(i)
        if not wanted:
            log.info("warm actor pool %s (%d actors) ready", name, len(handles))
            return [handles[i] for i in sorted(handles)]
        time.sleep(0.5)  # an actor removing itself frees its name within moments
    reason = str(error).strip().splitlines()[-1] if error is not None else "it was removing itself"
    raise UnavailableError(f"the Ray actor pool {name} could not be started ({reason}); check that every node has the "
                           "model's libraries and arrowscore (`--ray-ship-code`, `--ray-runtime-env`)")


def warm_results(ray, path: Path, packed, options: ScoreOptions, ray_opts: RayOptions, gpus: float,
                 pieces: list) -> Iterator[pa.Table]:
    """Each piece's result table, in input order, scored by the warm pool."""
    pool = _pool(ray, path, packed, options, ray_opts, gpus)
    window = IN_FLIGHT * len(pool)
    queued: deque = deque()

    def submit(i: int):
        queued.append((i, pool[i % len(pool)].score.remote(options, pieces[i])))

    beating = threading.Event()  # while the job runs its actors never count as idle, however slow the driver is

    def heartbeat():
        while not beating.wait(max(ray_opts.keep_warm_s / 3, 0.2)):
            for handle in list(pool):
                handle.ready.remote(ray_opts.keep_warm_s)

    threading.Thread(target=heartbeat, name="arrowscore-pool-heartbeat", daemon=True).start()
    try:
        for i in range(min(window, len(pieces))):
            submit(i)
        for attempt in range(RESTARTS + 1):
            while queued:
                i, ref = queued[0]
                try:
                    table = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # gone for good (crashed past Ray's restarts, or
                    if attempt == RESTARTS:  # killed): that piece and the ones after it again, on a new pool
                        piece = pieces[i]
                        raise ScoringError(
                            f"{piece.path} rows {piece.first_row}-{piece.first_row + piece.num_rows - 1}: the Ray "
                            f"actor scoring them died, and again when started anew ({type(exc).__name__}); the model "
                            "may crash its process on these rows (look for a fatal error in the Ray worker logs)"
                        ) from None
                    break
                queued.popleft()
                if i + window < len(pieces):  # keep the window full while this result is written
                    submit(i + window)
                yield table
            else:
                return
            log.info("an actor of the warm pool ended; finding or starting the pool again")
            retry = [i for i, _ in queued]
            queued.clear()
            pool[:] = _pool(ray, path, packed, options, ray_opts, gpus)
            for i in retry:
                submit(i)
    finally:
        beating.set()
