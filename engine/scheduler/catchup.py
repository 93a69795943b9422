"""One run of a job (``arrowscore run JOB.yaml --once``): catch up with the input, then stop.

    hold the output's lock -> finish or undo what a killed run left -> resolve the model once
    -> list the input -> the ledger says which files to score -> for each: the job's runner scores it
    into staging -> its outputs are moved into place under names derived from the file's identity and
    the model version -> the ledger records it

Each file is scored by ``engine.runners.score`` on its own (``input_files``), so its output is the
runner's own part file, renamed into the output directory (on an object store: copied whole, then
the staged copy deleted); a file's rows are visible all at once or not at all, and a kill at any moment followed by another run leaves every row scored exactly once
(see ``ledger``). A run holds the output's ``PathLock`` throughout: a second run of the job, or a
``score`` into its output, is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field

from ..errors import EngineError
from ..jobs.options import ScoreOptions
from .jobfile import JobSpec
from .ledger import FileRecord, RunRecord
from .objectledger import open_ledger

__all__ = ["run_once", "RunReport", "Planned", "plan", "file_key", "resolve_model", "Place"]

log = logging.getLogger("arrowscore.run")


@dataclass(frozen=True)
class Planned:
    """An input file a run scores, and why."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass
class RunReport:
    """What one run did (or, for a dry run, would do)."""

    job: str
    run_id: str | None
    model_version: str
    planned: list = field(default_factory=list)
    files: int = 0
    rows: int = 0
    rows_scored: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    status: str = "succeeded"
    changed: list = field(default_factory=list)  # files that changed while they were scored: left for the next run
    dry_run: bool = False
    input_files: int = 0
    rerun_into: str | None = None  # a rerun of run ``run_id``: where its files were scored again
    failed: list = field(default_factory=list)  # (path, error) of files that could not be scored: left for the next run

    def __str__(self) -> str:
        if self.rerun_into:
            return (f"rerun of run {self.run_id} of job {self.job!r}: scored its {self.files} input files again "
                    f"({self.rows_scored:,} of {self.rows:,} rows) with model version {self.model_version} into "
                    f"{self.rerun_into} in {self.seconds:.2f} s" +
                    (f"; {self.dead_lettered:,} rows rejected" if self.dead_lettered else ""))
        if self.dry_run:
            head = (f"job {self.job!r} (model version {self.model_version}) would score {len(self.planned)} of "
                    f"{self.input_files} input files")
            return "\n".join([head, *(f"  {p.path}  ({p.reason})" for p in self.planned)])
        text = (f"run {self.run_id} of job {self.job!r}: scored {self.files} of {self.input_files} input files "
                f"({self.rows_scored:,} of {self.rows:,} rows) with model version {self.model_version} in "
                f"{self.seconds:.2f} s")
        if self.dead_lettered:
            text += f"; {self.dead_lettered:,} rows rejected"
        if self.changed:
            text += f"; {len(self.changed)} files changed while being scored, left for the next run"
        if self.failed:
            text += f"; {len(self.failed)} files could not be scored, left for the next run"
        return text


# ---- the model, once per run ------------------------------------------------------------------
def resolve_model(uri: str, cache_dir=None) -> tuple[str, str]:
    """(the URI that names this version for good, its version): a registry alias becomes
    ``models:/name/N`` and N; any other model is versioned by a digest of its MLmodel file (which
    records when it was saved)."""
    from ..model import uris

    version = uris.registry_version(uri)
    if version is not None:
        return f"models:/{version.name}/{version.version}", str(version.version)
    path = uris.resolve(uri, cache_dir)
    digest = hashlib.sha256((path / "MLmodel").read_bytes()).hexdigest()[:12]
    return uri, f"mlmodel-{digest}"


def file_key(path: str, size: int, mtime_ns: int, model_version: str) -> str:
    """The name a file's outputs get: one input file, as it is now, scored by one model version."""
    return hashlib.sha256(f"{path}\n{size}\n{mtime_ns}\n{model_version}".encode()).hexdigest()[:20]


def plan(infos, identities, model_version: str, rescore: str) -> list[Planned]:
    """The listed input files (``pyarrow.fs.FileInfo``) a run scores, with the reason for each, from the
    ledger's ``identities()`` (path -> size, mtime_ns, model version scored with): no file is opened."""
    out = []
    for info in infos:
        had = identities.get(info.path)
        if had is None:
            reason = "new"
        elif (had[0], had[1]) != (info.size, info.mtime_ns):
            reason = f"replaced in place (size {had[0]} -> {info.size}, mtime changed)" \
                if had[0] != info.size else "replaced in place (mtime changed)"
        elif rescore == "all":
            reason = "rescore: all"
        elif rescore == "on-model-change" and had[2] != model_version:
            reason = f"model changed (version {had[2]} -> {model_version})"
        else:
            continue
        out.append(Planned(info.path, info.size, info.mtime_ns, reason))
    return out


# ---- a run -------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _versions(model=None) -> dict:
    import importlib.metadata as meta

    import pyarrow

    out = {"python": platform.python_version(), "pyarrow": pyarrow.__version__}
    for dist in ("arrowscore", "mlflow-skinny", "mlflow"):
        try:
            out[dist] = meta.version(dist)
        except meta.PackageNotFoundError:
            pass
    if model is not None:
        out["flavor"] = model.flavor
    return out


class Place:
    """Where a run writes, on the output's filesystem: the output directory, the dead-letter directory,
    and the staging (a hidden sibling of a local output; ``OUTPUT/_temporary/<run id>/`` on an object
    store, the directory of the run's own lock, which the next run's lock removes if the run died)."""

    def __init__(self, spec: JobSpec, run_id: str = ""):
        from connectors.parquet.files import filesystem_for, is_local, staging_name

        self.fs, output = filesystem_for(spec.output)
        self.local = is_local(self.fs)
        real = os.path.realpath if self.local else (lambda p: p)
        self.output = real(output.rstrip("/"))
        dead = spec.options.dead_letter if spec.options.on_error == "dead-letter" else None
        self.dead = real(filesystem_for(dead)[1].rstrip("/")) if dead else None
        if self.local:
            parent, name = os.path.split(self.output)
            self.staging = os.path.join(parent, staging_name(name, "run"))
        else:
            self.staging = f"{self.output}/_temporary/{run_id}"
        base, sep, query = spec.output.partition("?")
        self._scheme, self._query = base.partition("://")[0], sep + query

    def uri(self, path: str) -> str:
        """A path on this filesystem as ``score`` opens it (an object store's URI keeps the output's options)."""
        return path if self.local else f"{self._scheme}://{path}{self._query}"

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type == pafs.FileType.File

    def delete(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass

    def make_dirs(self) -> None:
        if self.local:  # object stores have no directories to make
            for path in (self.output, self.dead):
                if path:
                    os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            self.fs.delete_dir(path)
        except OSError:
            pass


def recover(ledger, place: Place) -> None:
    """Finish or undo the files a killed run was moving into place (the caller holds the job's lock)."""
    for path, record in ledger.pending().items():
        if all(place.exists(p) for p in record.outputs):  # the part file, moved last, is visible
            ledger.finish(path, place.delete)
            log.warning("recorded %s, whose outputs a killed run had made visible", path)
        else:
            kept = set(ledger.outputs(path))
            for p in record.outputs:
                if p not in kept:
                    place.delete(p)
            ledger.abandon(path)
            log.warning("removed what a killed run had moved into place for %s; it is scored again", path)


def run_once(spec: JobSpec, *, dry_run: bool = False, scheduled_for: str | None = None) -> RunReport:
    """Score the input files this job has not scored (per ``rescore``), each committed on its own."""
    from connectors.parquet import list_files
    from connectors.parquet.lock import PathLock

    from ..jobs.parquet import check_paths

    check_paths(spec.input, spec.output, spec.options, model_path=spec.model_path, state=spec.ledger_path)
    start = time.perf_counter()
    if dry_run:
        ledger = open_ledger(spec.ledger_path, readonly=True)
        try:
            ledger.claim(spec.name)
            _, version = resolve_model(spec.model, spec.options.cache_dir)
            infos, _ = list_files(spec.input)
            todo = plan(infos, ledger.identities(), version, spec.rescore)
        finally:
            ledger.close()
        return RunReport(spec.name, None, version, todo, dry_run=True, input_files=len(infos),
                         seconds=time.perf_counter() - start)

    run_id = uuid.uuid4().hex[:12]
    place = Place(spec, run_id)
    lock = PathLock(spec.output, job=run_id, what=f"the output of job {spec.name!r}")
    lock.acquire()
    try:
        ledger = open_ledger(spec.ledger_path)
        try:
            ledger.claim(spec.name)
            killed = ledger.mark_killed()
            if killed:
                log.warning("runs %s were killed before they ended", ", ".join(killed))
            recover(ledger, place)
            if place.local:
                place.remove(place.staging)  # what killed runs staged (an object store's went with their locks)
            return _run(spec, ledger, run_id, place, scheduled_for, start)
        finally:
            ledger.close()
    finally:
        if place.local:
            place.remove(place.staging)
        lock.release()
        if not place.local:  # after the lock: its owner file lies in the staging
            place.remove(place.staging)


def _run(spec, ledger, run_id, place: Place, scheduled_for, start) -> RunReport:
    from connectors.parquet import list_files

    from ..model import load_model

    run = RunRecord(run_id, _now(), model_uri=spec.model, job_hash=spec.digest, scheduled_for=scheduled_for,
                    host=socket.gethostname(), pid=os.getpid(), versions=_versions())
    run.arrowscore_version = run.versions.get("arrowscore")
    ledger.start_run(run)
    report = RunReport(spec.name, run_id, "")
    try:
        pinned, version = resolve_model(spec.model, spec.options.cache_dir)
        report.model_version = version
        ledger.update_run(run_id, model_version=version)
        infos, _ = list_files(spec.input)
        report.input_files = len(infos)
        report.planned = plan(infos, ledger.identities(), version, spec.rescore)
        log.info("run %s of job %r: %d of %d input files to score with %s (version %s)", run_id, spec.name,
                 len(report.planned), len(infos), spec.model, version)
        if report.planned:
            model = load_model(pinned, shared_cpu=True, **spec.options.load_kwargs())
            ledger.update_run(run_id, versions=json.dumps(_versions(model)))
            place.make_dirs()
        for item in report.planned:
            try:
                done = _score_file(spec, ledger, model, item, version, run_id, place)
            except EngineError as exc:
                if not _file_error(exc):
                    raise
                # this file cannot be scored now (unreadable, half-written, rows the model refuses with
                # on_error fail): nothing of it was kept; the other files go on, it is tried again next run
                log.error("%s could not be scored; it is left for the next run: %s", item.path, exc)
                report.failed.append((item.path, exc))
                place.remove(f"{place.staging}/{file_key(item.path, item.size, item.mtime_ns, version)}")
                continue
            if done is None:
                report.changed.append(item.path)
                continue
            report.files += 1
            report.rows += done.rows
            report.rows_scored += done.rows_scored
            report.dead_lettered += done.dead_lettered
            ledger.update_run(run_id, files=report.files, rows=report.rows, dead_lettered=report.dead_lettered)
    except BaseException as exc:
        report.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        ledger.update_run(run_id, status=report.status, ended=_now(), error=error)
        raise
    report.seconds = time.perf_counter() - start
    if report.failed:
        report.status = "failed"
        path, first = report.failed[0]
        error = (f"{len(report.failed)} of {report.input_files} input files could not be scored and are left for the "
                 f"next run ({path}: {first}" + (f"; and {len(report.failed) - 1} more, in the log" if
                                                 len(report.failed) > 1 else "") +
                 f"); the other {report.files} files were scored")
        ledger.update_run(run_id, status="failed", ended=_now(), error=error)
        log.info("%s", report)
        failure = type(first)(error)
        failure.report = report
        raise failure
    ledger.update_run(run_id, status="succeeded", ended=_now())
    log.info("%s", report)
    return report


def _file_error(exc: EngineError) -> bool:
    """An error of one input file (its data, its rows), not of the run (the model, the output, the ledger)."""
    from ..errors import ConfigError, ConnectorError, ModelLoadError, SchemaError, ScoringError, UnavailableError

    if isinstance(exc, (ModelLoadError, UnavailableError)):  # the next files would fail the same way: stop
        return False
    return isinstance(exc, (ConnectorError, SchemaError, ScoringError, ConfigError))


def score_kwargs(options: ScoreOptions, **changes) -> dict:
    """The keyword arguments of ``engine.runners.score`` for the job's options with ``changes``, into a
    new output (mode error) without a progress bar."""
    options = dataclasses.replace(options, mode="error", progress=False, **changes)
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(ScoreOptions)}


def _score_file(spec, ledger, model, item: Planned, version, run_id, place: Place):
    """Score one input file into staging with the job's runner, move its outputs into place, record it.
    None: the file changed while it was scored (nothing of it is kept)."""
    import pyarrow.fs as pafs

    from connectors.parquet import filesystem_for

    from ..runners import score

    key = file_key(item.path, item.size, item.mtime_ns, version)
    stage = f"{place.staging}/{key}"
    kwargs = score_kwargs(spec.options, input_files=(item.path,),
                          dead_letter=place.uri(f"{stage}/rejected.parquet") if place.dead else None)
    log.info("scoring %s (%s)", item.path, item.reason)
    done = score(model, spec.input, place.uri(f"{stage}/out"), runner=spec.runner,
                 runner_options=spec.runner_options, **kwargs)
    fs, _ = filesystem_for(spec.input)
    now = fs.get_file_info(item.path)
    if now.type != pafs.FileType.File or (now.size, now.mtime_ns) != (item.size, item.mtime_ns):
        log.warning("%s changed while it was scored; it is left for the next run", item.path)
        place.remove(stage)
        return None
    if len(done.output_files) > 1:
        raise RuntimeError(f"the {spec.runner} runner wrote {len(done.output_files)} output files for one input file; "
                           "a run expects one")
    moves = []  # dead letters first, the part file last: a visible part file means the file is done
    if done.dead_lettered:
        moves.append((f"{stage}/rejected.parquet", f"{place.dead}/rejected-{key}.parquet"))
    moves += [(staged, f"{place.output}/part-{key}.parquet") for staged in done.output_files]
    record = FileRecord(item.path, item.size, item.mtime_ns, spec.model, version, tuple(t for _, t in moves),
                        done.rows, done.rows_scored, done.dead_lettered, run_id, _now())
    ledger.begin(record)
    for staged, target in moves:
        place.fs.move(staged, target)  # a rename on a local disk; copy then delete on an object store
    ledger.finish(item.path, place.delete)
    place.remove(stage)
    return record
