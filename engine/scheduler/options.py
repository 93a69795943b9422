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

    def __post_init__(self):
        if self.max_runs is not None and self.max_runs < 1:
            raise ConfigError(f"max_runs must be at least 1, got {self.max_runs}")
