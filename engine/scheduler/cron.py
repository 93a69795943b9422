"""The scheduled mode: ``arrowscore run JOB.yaml`` stays up and runs the job on its cron schedule.

- One run at a time: a run due while the previous one is still going is skipped, and logged.
- Runs missed while the scheduler was down (schedule times after the last run's, which the ledger
  keeps) coalesce into one run at start.
- A stop (SIGTERM or Ctrl-C with ``handle_signals``, or ``stop`` set) ends it after the current run;
  a second Ctrl-C interrupts that run (its staged output is removed, see ``catchup``).
- A run refused because another process runs the job (``--once`` from a CronJob, another scheduler)
  is skipped and logged; a failed run is logged and the schedule goes on.

Cron expressions are read by cronsim: 5 fields, or 6 with seconds first.
"""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import zoneinfo

from ..errors import ConfigError, ConnectorError, require
from .catchup import RunReport, run_once
from .jobfile import JobSpec
from .objectledger import open_ledger

__all__ = ["run_scheduled"]

log = logging.getLogger("arrowscore.schedule")
_COUNT_AT_MOST = 10_000  # missed or skipped schedule times counted for the log line


def _between(cronsim, expr: str, after: datetime.datetime, until: datetime.datetime) -> tuple[int, datetime.datetime | None]:
    """(how many schedule times fall in (after, until], the latest of them)."""
    latest = next(cronsim.CronSim(expr, until + datetime.timedelta(microseconds=1), reverse=True), None)
    if latest is None or latest <= after:
        return 0, None
    count = 0
    for when in cronsim.CronSim(expr, after):
        if when > until or count >= _COUNT_AT_MOST:
            break
        count += 1
    return count, latest


def run_scheduled(spec: JobSpec, *, stop: threading.Event | None = None, handle_signals: bool = False,
                  max_runs: int | None = None) -> list[RunReport]:
    """Run ``spec`` on its schedule until stopped (or after ``max_runs`` runs); returns the runs' reports."""
    cronsim = require("cronsim", "run", "a job's schedule")
    if not spec.schedule:
        raise ConfigError(f"{spec.source}: the job has no schedule; add one (schedule: '*/15 * * * *'), or run it "
                          "once with --once")
    tz = zoneinfo.ZoneInfo(spec.timezone)
    stop = stop or threading.Event()
    if handle_signals:
        def stopping(signum, frame):
            if stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop the run itself
            log.info("stopping after the current run (signal %d)", signum)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stopping)

    ledger = open_ledger(spec.ledger_path, readonly=True)
    try:
        last = ledger.last_scheduled()
    finally:
        ledger.close()
    now = datetime.datetime.now(tz)
    due = None
    if last:
        missed, due = _between(cronsim, spec.schedule, datetime.datetime.fromisoformat(last).astimezone(tz), now)
        if missed:
            log.warning("%s%d scheduled runs of job %r were missed while it was down (the last at %s); running once "
                        "for them", "at least " if missed >= _COUNT_AT_MOST else "", missed, spec.name, due.isoformat())
    log.info("job %r runs on %r (%s)", spec.name, spec.schedule, spec.timezone)
    reports: list[RunReport] = []
    while not stop.is_set():
        if due is None:
            due = next(cronsim.CronSim(spec.schedule, datetime.datetime.now(tz)))
            if stop.wait(max(0.0, (due - datetime.datetime.now(tz)).total_seconds())):
                break
        report = _run(spec, due)
        if report is not None:
            reports.append(report)
        if max_runs is not None and len(reports) >= max_runs:
            break
        skipped, _ = _between(cronsim, spec.schedule, due, datetime.datetime.now(tz))
        if skipped:
            log.warning("skipped %s%d runs of job %r due while the run for %s was going", "at least "
                        if skipped >= _COUNT_AT_MOST else "", skipped, spec.name, due.isoformat())
        due = None
    return reports


def _run(spec: JobSpec, due: datetime.datetime) -> RunReport | None:
    try:
        return run_once(spec, scheduled_for=due.isoformat())
    except ConnectorError as exc:
        if "is in use by" not in str(exc):
            log.error("the run for %s failed: %s", due.isoformat(), exc)
        else:
            log.warning("skipped the run for %s: %s", due.isoformat(), exc)
    except Exception:  # the schedule goes on; the ledger records the failed run
        log.exception("the run for %s failed", due.isoformat())
    return None
