"""The Ray runner: Ray Data reads the Parquet input (our datasource), an actor pool scores it, the driver commits it.

    arrowscore score MODEL_URI INPUT OUTPUT --runner ray [--ray-address auto] [--ray-actors 2]
    ray job submit --address http://127.0.0.1:8265 -- arrowscore score MODEL_URI IN OUT --runner ray

Read blocks carry where each row came from (``POSITION``: input file and row in it), so actors name
the real file and row in dead letters and errors, and the driver writes one part file per input file,
in input order (Ray's ``preserve_order``): the local runner's output contract. Each ``ScoreActor``
loads the model once (from the path the driver resolved, or from the model
bytes the driver put in the object store when the actor runs on another machine) and calls
``JobScorer`` -> ``Model.score_batch``, the hot path every mode shares. Actors return their output
and rejected rows as Arrow IPC; the driver writes them with the same ``ParquetSink`` (staged, then
committed, then ``_SUCCESS``) and dead-letter file as the local runner, so the output contract is
identical. Ray restarts a dead actor and retries its batches; output is only taken from batches that
completed, so every input row is written exactly once. With ``keep_warm_s`` the job skips Ray Data:
a named pool of actors that outlives the job reads and scores the same pieces with the same code
(``raypool.py``), and later jobs of the model find it loaded.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import ConfigError, EngineError, ScoringError, UnavailableError, require
from ..jobs.options import RayOptions, ScoreOptions, ScoreReport
from ..jobs.progress import Progress
from ..model.device import is_gpu
from .rayactor import POSITION, ScoreActor, positions, read_with_positions  # noqa: F401  (tests reach them here)
from .reach import check_reachable, host_ports

__all__ = ["run_ray", "ScoreActor"]

log = logging.getLogger("arrowscore.ray")
READ_TASK_BYTES = 256 << 20  # a bigger file is read by several tasks, each a run of its row groups
ACTOR_RESTARTS = 2  # a dead actor is restarted and its batches retried this often, then the job fails


def _pack(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(path), arcname=".")
    return buf.getvalue()


def _unipc(value: pa.Scalar) -> list:
    return list(pa.ipc.open_stream(value.as_buffer())) if value.is_valid else []  # zero-copy from the block


def _runtime_env(runtime_env: dict | None, ship_code: bool) -> dict | None:
    """The runtime env for the workers; ship_code adds arrowscore's own packages (``py_modules``) so
    nodes that lack arrowscore, or have another version of it, import the driver's code."""
    env = dict(runtime_env or {})
    if ship_code:
        root = Path(__file__).resolve().parents[2]  # the directory holding engine/, flavors/, connectors/
        env["py_modules"] = [*env.get("py_modules", []), *(str(root / name) for name in ("engine", "flavors", "connectors"))]
    return env or None


def _gpus_per_actor(ray, ray_opts: RayOptions, device: str | None) -> float:
    """GPUs each actor asks Ray for: gpus_per_actor, else 1 with a GPU device (Ray then sets the actor's
    CUDA_VISIBLE_DEVICES, so ``cuda`` is its own GPU). A cluster without them fails now, not by waiting."""
    gpus = ray_opts.gpus_per_actor if ray_opts.gpus_per_actor is not None else (1.0 if is_gpu(device) else 0.0)
    if gpus:
        have = ray.cluster_resources().get("GPU", 0)
        if have < gpus:
            raise ConfigError(f"the actors ask for {gpus:g} GPU(s) each (--device {device or 'cpu'}, gpus_per_actor "
                              f"{ray_opts.gpus_per_actor}), but the Ray cluster has {have:g}: start Ray on GPU nodes, "
                              "or pass --device cpu")
    return gpus


def _check_cpus(ray, ray_opts: RayOptions, own: bool) -> None:
    """A Ray Data job needs its actors' CPUs and one more for a read task: short of that it waits forever,
    with no error. Refused on a Ray this job started; a cluster that may grow (autoscaling) gets a warning."""
    have = ray.cluster_resources().get("CPU", 0)
    need = ray_opts.actors * ray_opts.cpus_per_actor + 1
    if have >= need:
        return
    what = (f"{ray_opts.actors} actor(s) of {ray_opts.cpus_per_actor:g} CPU each and one read task (1 CPU) need "
            f"{need:g} CPUs, but the Ray cluster has {have:g}")
    if own:
        fewer = ", or fewer --ray-actors" if ray_opts.actors > 1 else ""
        raise ConfigError(f"{what}: pass --ray-num-cpus {math.ceil(need)} or more{fewer}")
    log.warning("%s: the job waits until the cluster has them", what)


def _connect(ray, address: str | None, num_cpus: int | None, runtime_env: dict | None):
    if ray.is_initialized():
        if runtime_env:
            raise ConfigError("Ray is already initialized in this process, so arrowscore cannot set its runtime env; "
                              "give it where Ray starts: ray.init(runtime_env=...) or `ray job submit --runtime-env-json`")
        return
    extra = {"runtime_env": runtime_env} if runtime_env else {}
    given = address or os.environ.get("RAY_ADDRESS")  # set by `ray job submit` and by users of a running cluster
    if not given:  # "local": Ray's own default would join a cluster `ray start` runs on this machine
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING, **extra)
        return
    hint = (f"check {'--ray-address' if address else 'RAY_ADDRESS'} and that the cluster is up (`ray status`); "
            "a retry may work once it is")
    if given not in ("auto", "local"):
        check_reachable("the Ray cluster", host_ports(given, 10001 if given.startswith("ray://") else 6379), hint)
    try:
        ray.init(address=address, logging_level=logging.WARNING, **extra)
    except ConnectionError as exc:  # Ray's own word for a cluster it did not find or could not join
        raise UnavailableError(f"the Ray cluster at {given} could not be joined ({exc}); {hint}") from exc


def run_ray(model_uri, input: str, output: str, options: ScoreOptions, ray_opts: RayOptions = RayOptions()) -> ScoreReport:
    ray = require("ray", "ray", "the ray runner")
    from ..jobs.parquet import commit_parquet_job, open_parquet_job
    from ..jobs.scoring import JobScorer
    from ..model import Model, load_model, uris

    loading = time.perf_counter()
    # resolved once, in the driver: workers never touch the registry
    path = (model_uri.path if isinstance(model_uri, Model) else uris.resolve(model_uri, options.cache_dir)).resolve()
    model = load_model(path, **options.load_kwargs(driver=True))
    start = time.perf_counter()
    job = JobScorer.from_options(model, options)  # option errors (clashes, renames) surface here, before any cluster work
    # so do input, keep-column and output errors: the job opens before Ray starts
    source, parts, total, sink, dead = open_parquet_job(model, input, output, options)
    columns = source.columns
    scored = seen = 0
    progress = Progress(total, options.progress)
    try:
        connecting = time.perf_counter()
        own = not (ray.is_initialized() or ray_opts.address or os.environ.get("RAY_ADDRESS"))  # a local Ray of its own
        if ray_opts.keep_warm_s and own:
            log.warning("keep_warm_s: this job starts its own Ray, which ends with this process, and the warm "
                        "actors with it; for later jobs to find them, start Ray once (`ray start --head`) and "
                        "pass --ray-address (or RAY_ADDRESS)")
        _connect(ray, ray_opts.address, ray_opts.num_cpus, _runtime_env(ray_opts.runtime_env, ray_opts.ship_code))
        startup = time.perf_counter() - connecting
        gpus = _gpus_per_actor(ray, ray_opts, options.device)
        # a model directory only travels when some actor may run on another machine
        packed = ray.put(_pack(path)) if len(ray.nodes()) > 1 else None
        pieces, width = _pieces(parts, source.schema, columns, options.batch_rows)
        if ray_opts.keep_warm_s:  # a named pool that outlives the job: later jobs skip the start-up
            from .raypool import warm_results

            tables = warm_results(ray, path, packed, options, ray_opts, gpus, pieces)
        else:
            _check_cpus(ray, ray_opts, own)
            reads = _source(pieces, width)
            dataset = ray.data.read_datasource(reads, override_num_blocks=reads.tasks)
            dataset.context.enable_progress_bars = False  # the driver shows one bar, as the local runner does
            dataset.context.execution_options.preserve_order = True  # input order, file by file
            # restarts bounded: Ray Data's default (forever) hung on a model that kills its process on some rows
            tables = dataset.map_batches(
                ScoreActor, fn_constructor_args=(str(path), packed, options, [p.path for p in parts], ray_opts.load_log),
                batch_format="pyarrow", batch_size=None,  # one call per block (fewer Ray tasks); the actor slices it
                compute=ray.data.ActorPoolStrategy(size=ray_opts.actors), num_cpus=ray_opts.cpus_per_actor,
                num_gpus=gpus, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS,
            ).iter_batches(batch_format="pyarrow", batch_size=None)
        current = None
        for table in _checked(tables):
            outs, deads, indices = table.column("out"), table.column("dead"), table.column("part").to_pylist()
            for i, part in enumerate(indices):
                if part != current and current is not None:
                    sink.close_part(current)  # results come in input order: that file is done
                current = part
                for batch in _unipc(outs[i]):
                    sink.write(part, batch)
                    scored += batch.num_rows
                for batch in _unipc(deads[i]):
                    dead.write(batch)
            rows = sum(table.column("rows").to_pylist())
            seen += rows
            progress.add(rows)
        if seen != total:
            raise RuntimeError(f"row accounting failed: {total} input rows, {seen} came back from the actors")
        files = commit_parquet_job(job, source.schema, sink, dead, scored, total)
    except BaseException as exc:
        sink.abort()
        dead.abort()
        cause = getattr(exc, "cause", None)  # a RayTaskError around our own error (a read task's): raise ours
        if isinstance(cause, EngineError):  # (Ray Data appends its retry advice to the message: not ours)
            raise type(cause)(str(cause).splitlines()[0]) from None
        if isinstance(exc, ray.exceptions.RayActorError) or isinstance(cause, ray.exceptions.RayActorError):
            raise ScoringError(f"a Ray actor scoring this job died {ACTOR_RESTARTS + 1} times ({type(exc).__name__}); "
                               "the model may crash its process on some rows (look for a fatal error in the Ray "
                               "worker logs), or the node ran out of memory") from None
        raise
    finally:
        progress.close()
    report = ScoreReport(rows=total, rows_scored=scored, dead_lettered=dead.rows,
                         seconds=time.perf_counter() - start, output_files=files, input_files=len(parts),
                         dead_letter_path=options.dead_letter if dead.rows else None, runner="ray",
                         load_seconds=start - loading, startup_seconds=startup)
    log.info("%s", report)
    return report


def _pieces(parts, schema: pa.Schema, columns, batch_rows: int) -> tuple[list, int]:
    """(the input's pieces: one per file, or per run of row groups of about READ_TASK_BYTES in a bigger
    file; the bytes of a row of the needed columns, an estimate)."""
    wanted = pa.schema([schema.field(c) for c in (columns or schema.names)] + [pa.field(POSITION, pa.int64())])
    width = max(sum(_row_bytes(f.type) for f in wanted), 1)
    return [piece for part in parts for piece in part.split(max(batch_rows, READ_TASK_BYTES // width))], width


def _source(pieces: list, width: int):
    """The input's pieces as a Ray Data datasource: one read task each, reading it with the local
    runner's own reader (``Part.batches``: row group at a time, hive keys, each file with its own
    column types).

    The driver already listed the files and read their footers, so Ray's own Parquet reader would
    repeat that work (its footer scan starts 32 actors: 5-9 s on a 2-CPU node, measured).
    """
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def read(part):  # Ray gathers these into blocks of up to DataContext.target_max_block_size
        return lambda: read_with_positions(part)

    class PartsSource(Datasource):
        tasks = len(pieces)

        def estimate_inmemory_data_size(self):
            return sum(p.num_rows for p in pieces) * width

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            return [ReadTask(read(p), BlockMetadata(num_rows=p.num_rows, size_bytes=p.num_rows * width,
                                                    input_files=[p.path], exec_stats=None),
                             per_task_row_limit=per_task_row_limit) for p in pieces]  # files differ in types

        def get_name(self):
            return "ArrowscoreParquet"

    return PartsSource()


def _row_bytes(type_: pa.DataType) -> int:
    try:
        return max(type_.bit_width // 8, 1)
    except ValueError:  # strings, lists: no fixed width
        return 32



def _checked(tables) -> Iterator[pa.Table]:
    """The actors' results; an error an actor returned is raised here as the same error type."""
    from .. import errors

    for table in tables:
        failed = table.column("error").drop_null()
        if len(failed):
            kind, _, message = failed[0].as_py().partition(": ")
            error = getattr(errors, kind, None)
            raise (error if isinstance(error, type) and issubclass(error, errors.EngineError) else errors.ScoringError)(message)
        yield table
