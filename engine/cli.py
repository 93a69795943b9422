"""The ``arrowscore`` command: one parser builder per subcommand, flags built from the option dataclasses.

Reads argv and the ``ARROWSCORE_*`` environment variables; below it, only the Ray and Spark
runners read the variables their own tools set (``RAY_ADDRESS``; ``PYSPARK_PYTHON`` and
spark-submit's conf), and the model cache the platform's ``XDG_CACHE_HOME``. Errors are one line on
stderr; the exit status says whose move it is (``EXIT``). Flag helpers live in ``engine.cliflags``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .cliflags import (MODEL_CONVERT, add_flags, csv_list, json_object, json_or_file, load_flags, log_flags,
                       model_arg, model_flags, pairs, place, positional, properties, setup_logging, values)
from .deploycommands import IN_MODEL_ENV, add_env_manager, add_parsers, in_model_env

__all__ = ["main"]

EXIT = """exit status (for scripts and retry policies):
  0    done
  1    the job failed while running: the model raised (ScoringError), another I/O error, or a bug (a traceback);
       look before retrying
  2    refused: the command, options, model, input data or paths must be fixed first; a retry fails alike
       (usage, ConfigError, SchemaError, ModelLoadError, ConnectorError, a path that does not exist or cannot be opened)
  3    unavailable: a Kafka broker, Ray cluster, Spark master, object store or model store did not answer
       (UnavailableError, a network error or timeout); a retry later may work
  130  interrupted (Ctrl-C / SIGINT, or SIGTERM); a local score job removes its staged output first and leaves a previous
       output as it was. `serve` and a scheduled `run` stop cleanly on SIGTERM (after draining / their current run): 0"""


# ---- info ----------------------------------------------------------------------------------------
def _fields(schema) -> list[str] | None:
    if schema is None:
        return None
    return [f"{f.name}: {f.type}{' (optional)' if f.nullable else ''}" for f in schema]


def _info(args) -> int:
    import flavors

    from .model import uris
    from .model.mlmodel import read_mlmodel
    from .model.requirements import check_requirements, warn_once

    # the MLmodel file and requirements only: loading the model could run code in its files (pickles)
    path = uris.resolve(args.model_uri, args.cache_dir)
    meta = read_mlmodel(path)
    flavor, _ = flavors.choose(meta, args.flavor)
    warn_once(path, flavor)
    sig = meta.signature
    doc = {
        "path": str(path),
        "flavors": sorted(meta.flavors),
        "flavor": flavor,
        "model_id": meta.model_id,
        "inputs": _fields(sig.input_schema()),
        "outputs": _fields(sig.output_schema()),
        "params": [p.to_dict() for p in sig.params] if sig.params else None,
        "requirements_mismatches": [str(m) for m in check_requirements(path, flavor)],
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for key, value in doc.items():
        if isinstance(value, list):
            print(f"{key}:" if value else f"{key}: (none)")
            for item in value:
                print(f"  {item if not isinstance(item, dict) else json.dumps(item)}")
        else:
            print(f"{key}: {value if value is not None else '(none)'}")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="flavors, signature and requirements check of a model (read, not loaded)")
    model_arg(p)
    load_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_info)


# ---- predict -------------------------------------------------------------------------------------
def _predict(args) -> int:
    from .errors import ConfigError
    from .model import load_model, payload
    from .model.device import check_device, with_device

    extra = json_object(args.params) if args.params else {}
    output = None if args.output in (None, "-") else args.output
    if output:
        payload.check_output(output)  # before the model runs, not after
        if args.input != "-" and os.path.realpath(output) == os.path.realpath(args.input):
            raise ConfigError(f"output {args.output!r} is the input; write the predictions to another file")
    model = load_model(args.model_uri, flavor=args.flavor, cache_dir=args.cache_dir,
                       model_config=with_device(None, check_device(args.device)))
    names = [f.name for f in model.input_schema] if model.input_schema else None
    table, params = payload.read_input(args.input, names, args.content_type, sys.stdin.buffer)
    if extra:
        params = {**(params or {}), **extra}
    result = model.predict(table, params=params)
    payload.write_output(result, output, sys.stdout)
    return 0


def _add_predict(sub) -> None:
    from .model import payload

    p = sub.add_parser("predict", help="score one input file (json, csv, parquet), like `mlflow models predict`")
    model_arg(p)
    load_flags(p)
    p.add_argument("-i", "--input-path", "--input", dest="input", default="-",
                   help="input .json (MLflow serving formats), .csv or .parquet; - or none: stdin")
    p.add_argument("-t", "--content-type", choices=payload.FORMATS,
                   help="the input's format (default: its extension; json for stdin)")
    p.add_argument("-o", "--output-path", "--output", dest="output",
                   help="output .json, .csv or .parquet (default, or -: JSON on stdout)")
    p.add_argument("--params", help="inference params as a JSON object")
    p.add_argument("--device", metavar="DEVICE", help="cpu, cuda or cuda:N: where the model runs (model_config's "
                                                      "device); default: the model's own, else cuda when torch sees a GPU")
    p.set_defaults(run=_predict)


# ---- score ---------------------------------------------------------------------------------------
_SCORE_SKIP = ("progress", "read_ahead", "model_config")  # flags of their own, or none


def _score(args) -> int:
    from .errors import ConfigError
    from .jobs.options import RayOptions, ScoreOptions, SparkOptions
    from .runners import score

    given = {"ray": values(args, RayOptions, "ray_", {"runtime_env": lambda v: json_or_file(v, "--ray-runtime-env")}),
             "spark": values(args, SparkOptions, "spark_", {"conf": lambda v: pairs(v, "--spark-conf")})}
    for runner, opts in given.items():
        if opts and args.runner != runner:
            raise ConfigError(f"the --{runner}-* options go with --runner {runner}; add --runner {runner} or drop them")
    options = values(args, ScoreOptions, skip=_SCORE_SKIP, convert={**MODEL_CONVERT, "keep_columns": csv_list,
                                                                     "rename": lambda v: pairs(v, "--rename")})
    if args.dry_run:
        return _dry_run(args, options)
    report = score(args.model_uri, args.input, args.output, runner=args.runner,
                   runner_options=given.get(args.runner), progress=False if args.no_progress else None, **options)
    _print_report(report, args.json)
    return 0


def _dry_run(args, options: dict) -> int:
    """The plan of a score job: checked as the job checks it, nothing scored or written."""
    from .jobs.options import ScoreOptions
    from .jobs.parquet import plan_parquet_job
    from .model import load_model

    opts = ScoreOptions(**options)
    model = load_model(args.model_uri, **opts.load_kwargs())
    plan = {"runner": args.runner, **plan_parquet_job(model, args.input, args.output, opts)}
    if args.json:
        print(json.dumps(plan, indent=2))
        return 0
    out = plan["output"]
    print(f"would score {plan['rows']:,} rows from {len(plan['files'])} files with {plan['model']} "
          f"(flavor {plan['flavor']}, runner {plan['runner']})")
    for f in plan["files"]:
        print(f"  {f['path']}  {f['rows']:,} rows")
    print(f"columns read: {', '.join(plan['columns_read'])}")
    print(f"output: {out['path']} (mode {out['mode']}, {out['part_files']} part files, {out['files_there_now']} "
          f"files there now), columns {', '.join(out['columns']) if out['columns'] else '(from the first batch)'}"
          + (f", partitioned by {out['partition_by']}" if out["partition_by"] else ""))
    if plan["dead_letter"]:
        print(f"rejected rows: {plan['dead_letter']}")
    return 0


def _print_report(report, as_json: bool) -> None:
    """The report as the human line, or as one JSON object (its fields, and rows_per_s where it has one)."""
    if not as_json:
        print(report)
        return
    doc = dataclasses.asdict(report)
    if hasattr(report, "rows_per_s"):
        doc["rows_per_s"] = report.rows_per_s
    print(json.dumps(doc, default=str))


def _add_score(sub) -> None:
    from connectors.parquet import MODES

    from .jobs.options import ON_ERROR, RayOptions, ScoreOptions, SparkOptions
    from .runners import RUNNERS

    p = sub.add_parser("score", help="score a Parquet file, directory or glob into a Parquet directory")
    model_arg(p)
    positional(p, "input", "INPUT", "Parquet file, directory (hive partitions too), glob, or s3://...",
                "-i", "--input-path")
    positional(p, "output", "OUTPUT", "output directory (local or s3://...)", "-o", "--output-path")
    p.add_argument("--runner", choices=sorted(RUNNERS), default="local",
                   help="local (default), ray or spark (with arrowscore[ray|spark])")
    add_flags(p, ScoreOptions, skip=_SCORE_SKIP, **model_flags(),
              keep_columns={"metavar": "COL,COL", "help": "comma-separated input columns to copy to the output"},
              mode={"choices": MODES}, rename={"action": "append", "metavar": "OLD=NEW",
                                               "help": "rename an output column (repeatable)"},
              # one value each, so that they may come before the positionals too
              on_error={"choices": ON_ERROR, "help": "rows failing the signature: stop (fail, the default) or "
                                                     "write them to --dead-letter PATH (dead-letter)"},
              dead_letter={"metavar": "PATH", "help": "Parquet file for the rejected rows (with --on-error dead-letter)"})
    p.add_argument("--no-progress", action="store_true", help="no progress bar; long jobs still log a progress line every 10 s")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--dry-run", action="store_true",
                   help="check the job and print its plan (files, rows from the footers, columns read, output), "
                        "without scoring or writing anything")
    add_flags(p, RayOptions, prefix="ray-")
    add_flags(p, SparkOptions, prefix="spark-", conf={"action": "append", "metavar": "KEY=VALUE",
                                                      "help": "a Spark setting for the session arrowscore starts "
                                                              "(repeatable), as spark-submit's --conf"})
    p.set_defaults(run=_score)


# ---- stream --------------------------------------------------------------------------------------
def _kafka_settings(args) -> dict:
    """client_config, consumer_config, producer_config from --kafka-config then -X (the command line wins);
    a ``consumer.`` or ``producer.`` prefix sends a setting to that client alone."""
    given = {**(properties(args.kafka_config) if args.kafka_config else {}), **pairs(args.X, "-X")}
    out = {"client_config": {}, "consumer_config": {}, "producer_config": {}}
    for key, value in given.items():
        role, _, rest = key.partition(".")
        if role in ("consumer", "producer") and rest:
            out[f"{role}_config"][rest] = value
        else:
            out["client_config"][key] = value
    return out


def _stream(args) -> int:
    from .jobs.options import StreamOptions
    from .runners.stream import stream

    options = values(args, StreamOptions, convert={**MODEL_CONVERT, "keep_columns": csv_list}, skip=("model_config",))
    report = stream(args.model_uri, handle_signals=True, **_kafka_settings(args), **options)
    _print_report(report, args.json)
    return 0


def _add_stream(sub) -> None:
    from connectors.kafka import FORMATS

    from .jobs.options import GUARANTEES, StreamOptions

    p = sub.add_parser("stream", help="score a Kafka topic into another, continuously")
    model_arg(p)
    required = {n: {"required": True} for n in ("bootstrap_servers", "input_topic", "output_topic", "group_id")}
    add_flags(p, StreamOptions, skip=("model_config",), **model_flags(), guarantee={"choices": GUARANTEES},
              value_format={"choices": FORMATS, "flag": "--format"},
              keep_columns={"metavar": "COL,COL", "default": None,
                            "help": "comma-separated input fields or pass-through columns (_key, _partition, "
                                    "_offset, _timestamp) to copy into each output (default _key)"},
              **required)
    p.add_argument("-X", action="append", metavar="KEY=VALUE",
                   help="a librdkafka setting (repeatable), over arrowscore's defaults; consumer.KEY=VALUE or "
                        "producer.KEY=VALUE for one client only; settings a guarantee depends on are refused")
    p.add_argument("--kafka-config", metavar="FILE",
                   help="a properties file of such settings (KEY=VALUE lines, # comments), read before -X: "
                        "keeps SASL secrets out of the command line")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=_stream)


# ---- serve ---------------------------------------------------------------------------------------
def _serve(args) -> int:
    from .server import ServeOptions, serve

    options = values(args, ServeOptions)
    serve(args.models, ServeOptions(flavor=args.flavor, cache_dir=args.cache_dir, **options))
    return 0


def _add_serve(sub) -> None:
    from .server import ServeOptions

    p = sub.add_parser("serve", help="serve models over HTTP (MLflow's protocol, Arrow, Parquet, Open Inference v2)")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model URI, or NAME=URI (several allowed); none: /opt/ml/model under SageMaker, "
                        "AIP_STORAGE_URI under Vertex AI, else ARROWSCORE_MODEL")
    load_flags(p)
    add_flags(p, ServeOptions)
    p.set_defaults(run=_serve)


# ---- run / runs ----------------------------------------------------------------------------------
def _run(args) -> int:
    from .scheduler import RunOptions, run_job

    options = RunOptions(**values(args, RunOptions))
    # the scheduled mode stops after its current run on SIGTERM; --once stops at once, like score
    result = run_job(args.job, once=options.once, dry_run=options.dry_run, rerun=options.rerun, output=options.output,
                     cache_dir=options.cache_dir,
                     handle_signals=not (options.once or options.dry_run or options.rerun))
    if isinstance(result, list) and args.json:  # a scheduled job's runs, in one object
        print(json.dumps({"runs": [dataclasses.asdict(r) for r in result]}, default=str))
        return 0
    for report in result if isinstance(result, list) else [result]:
        _print_report(report, args.json)
    return 0


def _add_run(sub) -> None:
    from .scheduler import RunOptions

    p = sub.add_parser("run", help="run a job file: score the input files it has not scored, on its schedule or once")
    p.add_argument("job", metavar="JOB.yaml", help="the job file (name, model, input, output, schedule, ...)")
    add_flags(p, RunOptions, cache_dir={"default": os.environ.get("ARROWSCORE_CACHE_DIR"),
                                        "help": "where downloaded models are cached, for a job file that names no "
                                                "cache_dir (env ARROWSCORE_CACHE_DIR)"})
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(run=_run)


def _runs(args) -> int:
    from .scheduler import run_history

    history = run_history(args.job, args.limit)
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in history], indent=2))
        return 0
    columns = ("run_id", "started", "ended", "model_version", "files", "rows", "dead_lettered", "status", "job_hash",
               "versions")

    def cell(run, column: str) -> str:
        value = getattr(run, column)
        if column == "job_hash":  # what repeating the run needs: the job file, the libraries
            return (value or "")[:12]
        if column == "versions":
            return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        return "" if value is None else str(value)

    table = [columns] + [tuple(cell(r, c) for c in columns) for r in history]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="the run history of a job file")
    p.add_argument("job", metavar="JOB.yaml", help="the job file")
    p.add_argument("--limit", type=int, help="only the last N runs")
    p.add_argument("--json", action="store_true", help="print JSON (every recorded field)")
    p.set_defaults(run=_runs)


# ---- cache ---------------------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _cache(args) -> int:
    import datetime

    from .deploy.env import env_entries, prune_envs
    from .errors import ConfigError
    from .model import cache

    root = args.cache_dir or str(cache.default_cache_dir())
    if args.action == "prune":
        if args.all == (args.older_than_days is not None):
            raise ConfigError("cache prune needs exactly one of --older-than-days N (entries not used for N days) "
                               "or --all")
        if args.older_than_days is not None and args.older_than_days < 0:
            raise ConfigError(f"--older-than-days must be 0 or more, got {args.older_than_days:g}")
        found = cache.prune(root, None if args.all else args.older_than_days)
        found += prune_envs(args.cache_dir, None if args.all else args.older_than_days)
    else:
        found = cache.entries(root) + env_entries(args.cache_dir)
    if args.json:
        print(json.dumps({"cache_dir": root, "entries": [dataclasses.asdict(e) for e in found]}))
        return 0
    if args.action == "prune":
        print(f"removed {len(found)} cached models and environments ({_size(sum(e.bytes for e in found))}) from {root}")
    elif not found:
        print(f"no cached models or environments in {root}")
    for e in found:
        used = datetime.datetime.fromtimestamp(e.last_used).isoformat(" ", "seconds")
        print(f"{e.uri or '(unknown URI)'}  {_size(e.bytes)}  last used {used}  {e.path}")
    return 0


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="the downloaded-model cache and the models' environments (--env-manager uv): list or prune them")
    p.add_argument("action", choices=("list", "prune"), help="list: URI, size, last used (least recent first); "
                                                              "prune: remove entries")
    p.add_argument("--cache-dir", default=os.environ.get("ARROWSCORE_CACHE_DIR"),
                   help="the cache (env ARROWSCORE_CACHE_DIR; default $XDG_CACHE_HOME/arrowscore/models, "
                        "else ~/.cache/arrowscore/models)")
    p.add_argument("--older-than-days", type=float, metavar="N", help="prune: entries not used for N days")
    p.add_argument("--all", action="store_true", help="prune: every entry")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cache)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arrowscore", description="Score MLflow models fast, on Arrow batches.",
                                epilog=EXIT, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"arrowscore {__version__}")
    log_flags(p)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_predict, _add_score, _add_stream, _add_serve, _add_run, _add_runs, _add_cache):
        add(sub)
    add_parsers(sub)
    for name in ("predict", "score", "serve", "run"):
        add_env_manager(sub.choices[name])
    for command in sub.choices.values():  # before or after the subcommand alike
        log_flags(command)
    return p


# a path given that does not exist or cannot be opened: the command's fault; other I/O errors are the run's
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["ping"]:  # the image's HEALTHCHECK, every 30 s: without building every parser
        from .deploycommands import ping_main

        return ping_main(args_list[1:])
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    flagged = ["/".join(f) for d, _, f in getattr(args, "_places", None) or [] if getattr(args, d) is not None]
    extra = place(args, extra)
    if extra:
        hint = ""
        if getattr(args, "on_error", None) == "dead-letter" and getattr(args, "dead_letter", None) is None:
            hint = " (--on-error takes one value; give the rejected rows' path with --dead-letter PATH)"
        if flagged and not hint:
            hint = f" ({', '.join(flagged)} given as a flag: give each argument once, by position or by flag)"
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    setup_logging(args)
    from .errors import EngineError, ScoringError, UnavailableError, unreachable

    if args.command in ("score", "predict") or (args.command == "run" and any(
            getattr(args, flag, None) for flag in ("once", "dry_run", "rerun"))):
        import signal

        # SIGTERM (a scheduler's stop) cleans up as Ctrl-C does, instead of leaving staging behind
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if getattr(args, "env_manager", "local") == "uv" and not os.environ.get(IN_MODEL_ENV):
            return in_model_env(args, args_list)
        return args.run(args)
    except KeyboardInterrupt:  # the job has cleaned up on its way out
        print("arrowscore: interrupted", file=sys.stderr)
        return 130
    except EngineError as exc:
        print(f"arrowscore: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, UnavailableError) else 1 if isinstance(exc, ScoringError) else 2
    except OSError as exc:  # the system's own words say which path or host
        print(f"arrowscore: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3 if unreachable(exc) else 2 if isinstance(exc, _PATH_ERRORS) else 1

