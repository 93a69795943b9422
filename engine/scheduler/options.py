"""What ``arrowscore run`` can be told beside its job file (the CLI's flags come from these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..jobs.options import _opt

__all__ = ["RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """``arrowscore run JOB.yaml`` / ``engine.run_job``."""

    once: bool = _opt(False, "score every input file the job has not scored yet, then exit (CronJobs, "
                             "ray job submit)")
    dry_run: bool = _opt(False, "list the files a run would score and why; score nothing")
    max_runs: int | None = _opt(None, "stop after this many scheduled runs (tests)", cli=False)
    rerun: str | None = _opt(None, "score the files of this run (its id, as `arrowscore runs` lists it) again with "
                                   "its model version, into --output", metavar="RUN_ID")
    output: str | None = _opt(None, "with --rerun: a new directory for the files scored again (the job's output is "
                                    "left as it is)", metavar="DIR")
    cache_dir: str | None = _opt(None, "where downloaded models are cached, for a job file that names no cache_dir",
                                 metavar="DIR")

    def __post_init__(self):
        if self.rerun and not self.output:
            raise ConfigError("--rerun RUN_ID needs --output DIR, a new directory for the files scored again (the "
                              "job's own output is left as it is)")
        if self.output and not self.rerun:
            raise ConfigError("--output is for --rerun RUN_ID; a job's runs write to the output its job file names")
        if self.rerun and self.dry_run:
            raise ConfigError("--rerun and --dry-run do not go together; `arrowscore runs JOB.yaml --json` shows "
                              "what a run scored")
        if self.max_runs is not None and self.max_runs < 1:
            raise ConfigError(f"max_runs must be at least 1, got {self.max_runs}")
