"""``arrowscore run JOB.yaml --rerun RUN_ID --output DIR``: score the files a run committed again, with
the model version that run recorded, into DIR (a ``score`` output: part files in input order, then
``_SUCCESS``; rejected rows in ``DIR.rejected.parquet`` beside it). The job's output and ledger are
left as they are; this is no run of the job.

What a run records for repeating it is checked: a file changed or gone since the run is refused (it
would not be the run's input), and so is a local model whose MLmodel file changed (its version is
that file's digest); a job file or library versions that differ from the run's are logged.
"""

from __future__ import annotations

import logging
import time

from ..errors import ConfigError
from .catchup import RunReport, _versions, resolve_model, score_kwargs
from .jobfile import JobSpec
from .objectledger import open_ledger

__all__ = ["rerun"]

log = logging.getLogger("arrowscore.run")


def _pinned(spec: JobSpec, run) -> str:
    """The URI of the model version the run scored with."""
    version = run.model_version
    if not version:
        raise ConfigError(f"run {run.run_id} of job {spec.name!r} ended ({run.status}) before it resolved its model; "
                          "there is nothing to repeat")
    if version.startswith("mlmodel-"):
        uri, now = resolve_model(run.model_uri, spec.options.cache_dir)
        if now != version:
            raise ConfigError(f"the model {run.model_uri!r} has changed since run {run.run_id} (version {version}, now "
                              f"{now}); a local model is repeatable only while unchanged: register models in MLflow "
                              "to keep every version")
        return uri
    body = run.model_uri[len("models:/"):].strip("/")
    name = body.split("@", 1)[0] if "@" in body else body.split("/", 1)[0]
    return f"models:/{name}/{version}"


def rerun(spec: JobSpec, run_id: str, output: str) -> RunReport:
    """Score run ``run_id``'s files again with its model version into ``output`` (see the module doc)."""
    import pyarrow.fs as pafs

    from connectors.parquet import filesystem_for

    from ..runners import score

    start = time.perf_counter()
    out_fs, out_path = filesystem_for(output)
    found = out_fs.get_file_info(out_path.rstrip("/"))
    if found.type == pafs.FileType.File or (found.type == pafs.FileType.Directory and out_fs.get_file_info(
            pafs.FileSelector(out_path.rstrip("/"), recursive=False))):
        raise ConfigError(f"--output {output} exists; a rerun writes a new directory: name one that does not exist "
                          "(or is empty), or remove it")
    ledger = open_ledger(spec.ledger_path, readonly=True)
    try:
        run = next((r for r in ledger.runs() if r.run_id == run_id), None)
        if run is None:
            raise ConfigError(f"job {spec.name!r} has no run {run_id!r} in its ledger {spec.ledger_path!r}; "
                              f"`arrowscore runs {spec.source}` lists its runs")
        files = ledger.scored(run_id)
    finally:
        ledger.close()
    if not files:
        raise ConfigError(f"run {run_id} of job {spec.name!r} committed no files (status {run.status}); there is "
                          "nothing to score again")
    fs, _ = filesystem_for(spec.input)
    infos = fs.get_file_info([f["path"] for f in files])
    changed = [f["path"] for f, i in zip(files, infos)
               if i.type != pafs.FileType.File or (i.size, i.mtime_ns) != (f["size"], f["mtime_ns"])]
    if changed:
        raise ConfigError(f"{len(changed)} of the {len(files)} files run {run_id} scored changed or are gone since "
                          f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); a rerun scores a run's "
                          "input as it was: restore them, or run the job to score them as they are now")
    if run.job_hash and run.job_hash != spec.digest:
        log.warning("the job file has changed since run %s (sha256 %s..., now %s...); its current options are used",
                    run_id, run.job_hash[:12], spec.digest[:12])
    now = _versions()
    moved = {k: (v, now[k]) for k, v in (run.versions or {}).items() if k in now and now[k] != v}
    if moved:
        log.warning("library versions differ from run %s's: %s", run_id,
                    ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(moved.items())))
    pinned = _pinned(spec, run)
    base, sep, query = output.partition("?") if "://" in output else (output, "", "")
    dead = f"{base.rstrip('/')}.rejected.parquet{sep}{query}" if spec.options.on_error == "dead-letter" else None
    options = score_kwargs(spec.options, dead_letter=dead, input_files=tuple(f["path"] for f in files))
    done = score(pinned, spec.input, output, runner=spec.runner, runner_options=spec.runner_options, **options)
    report = RunReport(spec.name, run_id, run.model_version, files=len(files), rows=done.rows,
                       rows_scored=done.rows_scored, dead_lettered=done.dead_lettered, input_files=len(files),
                       seconds=time.perf_counter() - start, rerun_into=output)
    log.info("%s", report)
    return report
