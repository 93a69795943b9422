"""The scheduled mode: ``arrowscore run JOB.yaml`` scores what is new in an input, once or on a cron
schedule, each input file exactly once (per model version, with ``rescore``).

- ``jobfile``: the job file -> ``JobSpec`` (keys and types checked, with lines);
- ``ledger``: the job's SQLite state: each input file's identity, model version and outputs; the runs;
- ``objectledger``: the same state as small objects, for jobs whose output is on an object store;
- ``catchup``: one run (``--once``): lock, recover, plan, score each new file with the job's runner,
  move its outputs into place (a local disk or an object store), record it;
- ``cron``: the loop on a schedule (cronsim), one run at a time.

>>> import engine.scheduler as scheduler
>>> scheduler.run_job({"name": "j", "model": "m/", "input": "in/", "output": "out/"}, once=False)
Traceback (most recent call last):
...
engine.errors.ConfigError: job: the job has no schedule; ...
"""

from __future__ import annotations

import dataclasses
import os
import threading

from .catchup import Planned, RunReport
from .jobfile import JobSpec, load_job
from .ledger import RunRecord
from .objectledger import open_ledger
from .options import RunOptions

__all__ = ["run_job", "run_history", "JobSpec", "load_job", "RunReport", "RunRecord", "RunOptions", "Planned"]


def run_job(job, once: bool = True, *, dry_run: bool = False, stop: threading.Event | None = None,
            handle_signals: bool = False, max_runs: int | None = None, rerun: str | None = None,
            output: str | None = None, cache_dir: str | None = None):
    """Run a job (a job file's path, a mapping of its keys, or a ``JobSpec``).

    once: score every input file the job has not scored yet, then return its ``RunReport``; else run
    on the job's schedule until ``stop`` is set (or SIGTERM with ``handle_signals``, or ``max_runs``
    runs) and return the runs' reports. dry_run: the report lists what would be scored and why.
    rerun, output: score the files run ``rerun`` committed again, with its model version, into the new
    directory ``output`` (see ``rerun``). cache_dir: the model cache, where the job names none.
    """
    from .catchup import run_once
    from .cron import run_scheduled
    from .rerun import rerun as rerun_run

    options = RunOptions(once=once, dry_run=dry_run, max_runs=max_runs, rerun=rerun,
                         output=None if output is None else os.fspath(output), cache_dir=cache_dir)
    spec = load_job(job)
    if options.cache_dir and spec.options.cache_dir is None:
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, cache_dir=options.cache_dir))
    if options.rerun:
        return rerun_run(spec, options.rerun, options.output)
    if options.once or options.dry_run:
        return run_once(spec, dry_run=dry_run)
    return run_scheduled(spec, stop=stop, handle_signals=handle_signals, max_runs=options.max_runs)


def run_history(job, limit: int | None = None) -> list[RunRecord]:
    """The job's runs, oldest first (the last ``limit``)."""
    spec = load_job(job)
    ledger = open_ledger(spec.ledger_path, readonly=True)
    try:
        ledger.claim(spec.name)
        return ledger.runs(limit)
    finally:
        ledger.close()
