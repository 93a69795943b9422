"""arrowscore: score MLflow models fast, on Arrow batches, in every mode.

The packages, lowest layer first; a layer imports only the ones before it (tests/test_layout.py checks):

    engine.errors       the one error tree
    engine.model        MLmodel, signature, conversions, the scorer (the hot path), save_model
    flavors             one module per model library, loading a model directory into a predictor
    connectors          parquet (source, sink, dead letters) and kafka (codec, clients)
    engine.jobs         options and reports, JobScorer (per-batch rules), the ends of a Parquet job
    engine.runners      the modes over data: local, ray, spark, stream (Kafka); RUNNERS lists them
    engine.server       the HTTP mode: ``arrowscore serve`` (protocols, dynamic batching, metrics)
    engine.scheduler    scheduled, incremental jobs: ``arrowscore run`` (job files, the ledger, cron)
    engine.cli          the ``arrowscore`` command

A new flavor goes in ``flavors/``, a new source or sink in ``connectors/``, a new batch runner in
``engine/runners/`` (and ``RUNNERS``), a new mode (HTTP server, scheduled jobs) in its own package
beside ``runners``, using ``jobs`` and ``model``, with its command in ``engine.cli``.

>>> import engine
>>> engine.load_model("no/such/model")
Traceback (most recent call last):
...
engine.errors.ModelLoadError: ...
"""

from .errors import (ConfigError, ConnectorError, EngineError, FlavorNotFound, MissingDependency,
                     ModelLoadError, ModelUnavailable, SchemaError, SchemaMismatch, ScoringError, UnavailableError)
from .jobs.options import RayOptions, ScoreOptions, ScoreReport, SparkOptions, StreamOptions, StreamReport
from .model import Model, Signature, load_model, save_model
from .runners import score
from .server.options import ServeOptions


def stream(model_uri, **options) -> StreamReport:
    """Score a Kafka topic into another until stopped; options: see ``engine.StreamOptions``."""
    from .runners.stream import stream as run_stream

    return run_stream(model_uri, **options)


def serve(models=None, **options) -> None:
    """Serve models over HTTP until SIGTERM/SIGINT: a URI, ``NAME=URI`` strings, a list or a {name: uri}
    dict; options: see ``engine.ServeOptions``."""
    from .server import serve as run_server

    run_server(models, **options)


def run_job(job, once: bool = True, **options):
    """Run a scheduled job (a job file's path or a mapping of its keys): ``once`` scores what it has not
    scored yet and returns a ``RunReport``; else it runs on the job's schedule until stopped. options:
    dry_run, stop, handle_signals, max_runs (see ``engine.scheduler.run_job``)."""
    from .scheduler import run_job as run

    return run(job, once=once, **options)


__all__ = [
    "load_model", "run_job", "Model", "save_model", "Signature", "score", "stream", "serve", "ServeOptions", "ScoreOptions", "ScoreReport",
    "RayOptions", "SparkOptions", "StreamOptions", "StreamReport",
    "EngineError", "ConfigError", "ModelLoadError", "FlavorNotFound", "MissingDependency",
    "SchemaError", "SchemaMismatch", "ScoringError", "ConnectorError", "UnavailableError", "ModelUnavailable",
]
__version__ = "0.1.0"
