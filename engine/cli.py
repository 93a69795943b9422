"""The ``arrowscore`` command. Only this module reads argv and environment variables."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

__all__ = ["main"]


def _fields(schema) -> list[str] | None:
    if schema is None:
        return None
    return [f"{f.name}: {f.type}{' (optional)' if f.nullable else ''}" for f in schema]


def _info(args) -> int:
    from . import load_model
    from .requirements import check_requirements

    model = load_model(args.model_uri, flavor=args.flavor, cache_dir=args.cache_dir)
    sig = model.signature
    doc = {
        "path": str(model.path),
        "flavors": sorted(model.meta.flavors),
        "flavor": model.flavor,
        "model_id": model.meta.model_id,
        "inputs": _fields(model.input_schema),
        "outputs": _fields(model.output_schema),
        "params": [p.to_dict() for p in sig.params] if sig.params else None,
        "requirements_mismatches": [str(m) for m in check_requirements(model.path)],
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


def _predict(args) -> int:
    from . import load_model, payload

    model = load_model(args.model_uri, flavor=args.flavor, cache_dir=args.cache_dir)
    names = [f.name for f in model.input_schema] if model.input_schema else None
    table, params = payload.read_input(args.input, names)
    if args.params:
        params = {**(params or {}), **json.loads(args.params)}
    result = model.predict(table, params=params)
    payload.write_output(result, args.output, sys.stdout)
    return 0


def _csv(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def _pairs(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"arrowscore: {flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _json_or_file(text: str | None, flag: str) -> dict | None:
    """A JSON object given inline, or the path of a JSON/YAML file holding one."""
    if not text:
        return None
    import yaml

    try:
        value = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(open(text))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SystemExit(f"arrowscore: {flag} takes a JSON object or a JSON/YAML file: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"arrowscore: {flag} must hold a JSON object (a mapping), got {type(value).__name__}")
    return value


def _score(args) -> int:
    from . import score

    on_error, dead_letter = args.on_error[0], None
    if on_error == "dead-letter":
        if len(args.on_error) != 2:
            raise SystemExit("arrowscore: --on-error dead-letter needs a PATH for the rejected rows")
        dead_letter = args.on_error[1]
    elif on_error != "fail" or len(args.on_error) != 1:
        raise SystemExit("arrowscore: --on-error takes 'fail' or 'dead-letter PATH'")
    runner_options = {}
    if args.feature_columns:
        runner_options["feature_columns"] = _csv(args.feature_columns)
    if args.runner == "ray":
        runner_options.update(address=args.ray_address, actors=args.ray_actors, cpus_per_actor=args.ray_cpus_per_actor,
                              runtime_env=_json_or_file(args.ray_runtime_env, "--ray-runtime-env"),
                              ship_code=args.ray_ship_code)
    elif args.ray_address or args.ray_actors != 1 or args.ray_runtime_env or args.ray_ship_code:
        raise SystemExit("arrowscore: the --ray-* options go with --runner ray")
    report = score(args.model_uri, args.input, args.output, runner=args.runner,
                   runner_options=runner_options, keep_columns=_csv(args.keep_columns),
                   batch_rows=args.batch_rows, mode=args.mode, on_error=on_error, dead_letter=dead_letter,
                   compression=args.compression, row_group_rows=args.row_group_rows,
                   partition_by=args.partition_by, rename=_pairs(args.rename, "--rename"),
                   params=json.loads(args.params) if args.params else None,
                   progress=False if args.no_progress else None)
    print(report)
    return 0


def _stream(args) -> int:
    from .stream import stream

    report = stream(args.model_uri, handle_signals=True, bootstrap_servers=args.bootstrap_servers,
                    input_topic=args.input_topic, output_topic=args.output_topic, group_id=args.group_id,
                    guarantee=args.guarantee, dead_letter_topic=args.dead_letter_topic, value_format=args.format,
                    keep_columns=_csv(args.keep_columns) if args.keep_columns is not None else ("_key",),
                    max_batch_rows=args.max_batch_rows, max_wait_ms=args.max_wait_ms,
                    client_config=_pairs(args.X, "-X"), stats_every_s=args.stats_every_s)
    print(report)
    return 0


def _parser() -> argparse.ArgumentParser:
    from connectors.kafka import FORMATS
    from connectors.parquet import MODES

    from .batch import ScoreOptions
    from .stream import GUARANTEES, StreamOptions

    p = argparse.ArgumentParser(prog="arrowscore", description="Score MLflow models fast, on Arrow batches.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = p.add_subparsers(dest="command", required=True)

    def model_cmd(name, help_text):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("model_uri", metavar="MODEL_URI", help="path, file://, runs:/, models:/ URI")
        s.add_argument("--flavor", help="load with this flavor instead of the native one")
        s.add_argument("--cache-dir", default=os.environ.get("ARROWSCORE_CACHE_DIR"),
                       help="where downloaded models are cached (env ARROWSCORE_CACHE_DIR)")
        return s

    info = model_cmd("info", "flavors, signature and requirements check of a model")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)

    pred = model_cmd("predict", "score one input file (json, csv, parquet), like `mlflow models predict`")
    pred.add_argument("-i", "--input", required=True, help="input .json (MLflow serving formats), .csv or .parquet")
    pred.add_argument("-o", "--output", help="output .json, .csv or .parquet (default: JSON on stdout)")
    pred.add_argument("--params", help="inference params as a JSON object")
    pred.set_defaults(run=_predict)

    sc = sub.add_parser("score", help="score a Parquet file, directory or glob into a Parquet directory")
    sc.add_argument("model_uri", metavar="MODEL_URI", help="path, file://, runs:/, models:/ URI")
    sc.add_argument("input", metavar="INPUT", help="Parquet file, directory (hive partitions too), glob, or s3://...")
    sc.add_argument("output", metavar="OUTPUT", help="output directory (local or s3://...)")
    sc.add_argument("--runner", default="local", help="local (default), ray or spark (with arrowscore[ray|spark])")
    sc.add_argument("--keep-columns", help="comma-separated input columns to copy to the output (ids, ...)")
    sc.add_argument("--batch-rows", type=int, default=ScoreOptions.batch_rows,
                    help=f"rows per scored batch (default {ScoreOptions.batch_rows})")
    sc.add_argument("--mode", choices=MODES, default=ScoreOptions.mode,
                    help=f"what to do when OUTPUT is not empty (default: {ScoreOptions.mode})")
    sc.add_argument("--on-error", nargs="+", default=["fail"], metavar="fail|dead-letter PATH",
                    help="rows failing the signature: stop (default) or write them to a Parquet file")
    sc.add_argument("--compression", default=ScoreOptions.compression,
                    help=f"Parquet compression (default {ScoreOptions.compression})")
    sc.add_argument("--row-group-rows", type=int, help="rows per output row group")
    sc.add_argument("--partition-by", help="write output partitioned by this (kept) column")
    sc.add_argument("--rename", action="append", metavar="OLD=NEW", help="rename an output column")
    sc.add_argument("--params", help="inference params as a JSON object, for every batch")
    sc.add_argument("--feature-columns", help="comma-separated scalar columns that make up a tensor input")
    sc.add_argument("--no-progress", action="store_true", help="no progress bar")
    sc.add_argument("--ray-address", help="Ray cluster to use (default: RAY_ADDRESS, else a local one)")
    sc.add_argument("--ray-actors", type=int, default=1, help="scoring actors in the Ray actor pool (default 1)")
    sc.add_argument("--ray-cpus-per-actor", type=float, default=0.5,
                    help="CPUs each actor reserves (default 0.5: reads must still get CPUs on small nodes)")
    sc.add_argument("--ray-runtime-env", metavar="JSON|FILE",
                    help="Ray runtime env for the workers, as JSON or a .json/.yaml file (pip, py_modules, env_vars)")
    sc.add_argument("--ray-ship-code", action="store_true",
                    help="send this arrowscore's code to the workers (py_modules), for nodes without it installed")
    sc.set_defaults(run=_score)

    st = sub.add_parser("stream", help="score a Kafka topic into another, continuously")
    st.add_argument("model_uri", metavar="MODEL_URI", help="path, file://, runs:/, models:/ URI")
    st.add_argument("--bootstrap-servers", required=True)
    st.add_argument("--input-topic", required=True)
    st.add_argument("--output-topic", required=True)
    st.add_argument("--group-id", required=True)
    st.add_argument("--guarantee", choices=GUARANTEES, default=StreamOptions.guarantee)
    st.add_argument("--dead-letter-topic", help="where undecodable or invalid messages go (else the stream stops)")
    st.add_argument("--format", choices=FORMATS, default=StreamOptions.value_format,
                    help="message values: one JSON object each, or an Arrow IPC stream each")
    st.add_argument("--keep-columns", help="input fields or pass-through columns (_key, _partition, _offset, "
                                           "_timestamp) to copy into each output (default _key)")
    st.add_argument("--max-batch-rows", type=int, default=StreamOptions.max_batch_rows,
                    help="messages per micro-batch at most")
    st.add_argument("--max-wait-ms", type=int, default=StreamOptions.max_wait_ms, help="longest wait to fill a micro-batch")
    st.add_argument("--stats-every-s", type=float, default=StreamOptions.stats_every_s,
                    help="seconds between progress log lines")
    st.add_argument("-X", action="append", metavar="KEY=VALUE", help="extra Kafka client setting (repeatable)")
    st.set_defaults(run=_stream)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .errors import EngineError

    try:
        return args.run(args)
    except EngineError as exc:
        print(f"arrowscore: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
