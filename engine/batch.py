"""Batch scoring of Parquet datasets: ``engine.score`` and the runner registry.

>>> report = engine.score("models:/fraud@champion", "in/", "out/", keep_columns=["id"])  # doctest: +SKIP
>>> report.rows, report.seconds, report.output_files                                      # doctest: +SKIP

Runners take the same options and keep the same output contract (part files, nothing visible
before commit, ``_SUCCESS``, modes, keep columns, dead letters): "local" is built in; other
runners (ray, spark) register themselves with ``register_runner``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError

__all__ = ["ScoreOptions", "ScoreReport", "score", "register_runner", "runners"]

ON_ERROR = ("fail", "dead-letter")


@dataclass(frozen=True)
class ScoreOptions:
    """Everything a batch job can be told; validated once, passed to whichever runner runs it."""

    keep_columns: tuple = ()
    batch_rows: int = 32_768  # a batch of 16 doubles stays in cache between stages; 64k halved ONNX rows/s
    mode: str = "error"
    on_error: str = "fail"
    dead_letter: str | None = None
    compression: str = "snappy"
    row_group_rows: int | None = None
    partition_by: str | None = None
    rename: dict = field(default_factory=dict)
    params: dict | None = None  # inference params for every batch, checked against the params schema
    read_ahead: int = 4
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise

    def __post_init__(self):
        from connectors.parquet import MODES

        object.__setattr__(self, "keep_columns", tuple(self.keep_columns or ()))
        object.__setattr__(self, "rename", dict(self.rename or {}))
        if self.batch_rows < 1:
            raise ConfigError(f"batch_rows must be at least 1, got {self.batch_rows}")
        if self.read_ahead < 1:
            raise ConfigError(f"read_ahead must be at least 1, got {self.read_ahead}")
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {MODES}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"on_error {self.on_error!r} is not one of {ON_ERROR}")
        if self.on_error == "dead-letter" and not self.dead_letter:
            raise ConfigError("on_error 'dead-letter' needs a path for the rejected rows (dead_letter=PATH, "
                              "--on-error dead-letter PATH)")
        if self.row_group_rows is not None and self.row_group_rows < 1:
            raise ConfigError(f"row_group_rows must be at least 1, got {self.row_group_rows}")
        dupes = {c for c in self.keep_columns if list(self.keep_columns).count(c) > 1}
        if dupes:
            raise ConfigError(f"keep_columns names {sorted(dupes)} more than once")


@dataclass
class ScoreReport:
    """What a batch job did: every input row is either scored or dead-lettered."""

    rows: int
    rows_scored: int
    dead_lettered: int
    seconds: float
    output_files: list
    input_files: int = 0
    dead_letter_path: str | None = None
    runner: str = "local"
    load_seconds: float = 0.0  # model loading, apart from ``seconds`` (reading, scoring, writing)
    startup_seconds: float = 0.0  # connecting to / starting a cluster, included in ``seconds``

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def _startup(self) -> str:
        return f", cluster start-up {self.startup_seconds:.2f} s of the total" if self.startup_seconds else ""

    def __str__(self) -> str:
        text = (f"scored {self.rows_scored:,} of {self.rows:,} rows from {self.input_files} files in "
                f"{self.seconds:.2f} s ({self.rows_per_s:,.0f} rows/s, runner {self.runner}; model loaded in "
                f"{self.load_seconds:.2f} s{self._startup()}); "
                f"{len(self.output_files)} output files")
        if self.dead_lettered:
            text += f"; {self.dead_lettered:,} rows rejected -> {self.dead_letter_path}"
        return text


_RUNNERS: dict[str, Callable] = {}


def register_runner(name: str, run: Callable) -> None:
    """``run(model_uri, input, output, options, **runner_options) -> ScoreReport``; a name registers once."""
    if name in _RUNNERS:
        raise ConfigError(f"runner {name!r} is already registered")
    _RUNNERS[name] = run


def runners() -> list[str]:
    _builtin()
    return sorted(_RUNNERS)


_OPTIONAL = {"spark": "engine.spark_job", "ray": "engine.ray_job"}  # modules that register their runner when imported


def _builtin(name: str | None = None) -> None:
    if "local" not in _RUNNERS:
        from .local import run_local

        register_runner("local", run_local)
    if name in _OPTIONAL and name not in _RUNNERS:
        import importlib

        try:
            importlib.import_module(_OPTIONAL[name])
        except ModuleNotFoundError as exc:
            if exc.name != _OPTIONAL[name]:
                raise


def score(model_uri, input: str | os.PathLike, output: str | os.PathLike, runner: str = "local", *,
          runner_options: dict | None = None, **options) -> ScoreReport:
    """Score a Parquet dataset with a model and write the predictions as Parquet.

    options: see ScoreOptions (keep_columns, batch_rows, mode, on_error, dead_letter, compression,
    row_group_rows, partition_by, rename, params, read_ahead, progress). model_uri may also be a loaded Model.
    """
    opts = ScoreOptions(**options)
    _builtin(runner)
    if runner not in _RUNNERS:
        raise ConfigError(f"runner {runner!r} is not available; available: {sorted(_RUNNERS)}")
    return _RUNNERS[runner](model_uri, os.fspath(input), os.fspath(output), opts, **(runner_options or {}))
