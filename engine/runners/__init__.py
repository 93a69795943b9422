"""The modes that run a model over data: batch runners (local, ray, spark) and the Kafka stream.

Every runner takes a model, an input, an output, ``ScoreOptions`` and its own options dataclass,
calls ``JobScorer`` -> ``Model.score_batch`` for every batch and keeps one output contract: one part
file per input file (Spark: see docs/spark.md), rows in input order within a file, nothing visible
before commit, ``_SUCCESS``, modes, keep columns, and dead letters that name the input file and row.

Runners are listed in ``RUNNERS``; a runner module is imported only when a job asks for it.
"""

from __future__ import annotations

import importlib
import os

from ..errors import ConfigError
from ..jobs import options as _options
from ..jobs.options import ScoreOptions, ScoreReport

__all__ = ["RUNNERS", "score"]

# name -> "module:function"; run(model_uri, input, output, ScoreOptions, <Runner>Options) -> ScoreReport
RUNNERS = {
    "local": "engine.runners.local:run_local",
    "ray": "engine.runners.ray:run_ray",
    "spark": "engine.runners.spark:run_spark",
}


def score(model_uri, input: str | os.PathLike, output: str | os.PathLike, runner: str = "local", *,
          runner_options: dict | object | None = None, **options) -> ScoreReport:
    """Score a Parquet dataset with a model and write the predictions as Parquet.

    options: see ScoreOptions (keep_columns, batch_rows, mode, on_error, dead_letter, compression,
    row_group_rows, partition_by, rename, params, read_ahead, progress, feature_columns, model_config).
    runner_options: the runner's options (LocalOptions, RayOptions, SparkOptions) or a dict of them.
    model_uri may also be a loaded Model.
    """
    if runner not in RUNNERS:
        raise ConfigError(f"runner {runner!r} is not one of {sorted(RUNNERS)}")
    opts = ScoreOptions(**options)
    extra = _options.runner_options(runner, runner_options)
    module, _, function = RUNNERS[runner].partition(":")
    run = getattr(importlib.import_module(module), function)
    return run(model_uri, os.fspath(input), os.fspath(output), opts, extra)

