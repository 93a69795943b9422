"""The command line's building blocks: flags made from the option dataclasses' fields, arguments given
by position or by flag (MLflow's ``-m/-i/-o``), values parsed from flags (lists, KEY=VALUE pairs, JSON,
properties files), and the log flags every subcommand takes. ``engine.cli`` builds the commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

__all__ = ["LEVELS", "MODEL_CONVERT", "add_flags", "csv_list", "json_object", "json_or_file", "load_flags", "log_flags", "model_arg", "model_flags", "pairs", "place", "positional", "properties", "setup_logging", "values"]


# ---- flags from option dataclasses ------------------------------------------------------------
def _type_of(f: dataclasses.Field):
    hint = str(f.type)
    for name, kind in (("int", int), ("float", float), ("bool", bool), ("dict", dict), ("tuple", tuple)):
        if hint.startswith(name):
            return kind
    return str


def add_flags(parser, cls, prefix: str = "", skip=(), **overrides) -> None:
    """One ``--[prefix-]name`` flag per field of ``cls`` (help from its metadata); a flag not given is
    absent from the parsed args, so the class's own default applies. ``overrides`` replaces a flag's
    argparse arguments (``flag``: its name; ``default``: a default that is not the class's)."""
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or f.name in skip:
            continue
        kind = _type_of(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        name = f"--{prefix}{f.name.replace('_', '-')}"
        kwargs = {"dest": f"{prefix.replace('-', '_')}{f.name}", "help": f.metadata.get("help", ""),
                  "default": argparse.SUPPRESS}
        if kind is bool:
            kwargs.update(action="store_true")
        else:
            kwargs.update(type={int: int, float: float}.get(kind, str))
            if "metavar" in f.metadata:
                kwargs["metavar"] = f.metadata["metavar"]
            if default not in (None, "", ()) and not isinstance(default, tuple):
                kwargs["help"] += f" (default {default})"
        kwargs.update(overrides.get(f.name, {}))
        parser.add_argument(kwargs.pop("flag", name), **kwargs)


def values(args, cls, prefix: str = "", convert=None, skip=()) -> dict:
    """The values of ``cls``'s flags that were given (present and not None), converted by ``convert[name]``."""
    out = {}
    for f in dataclasses.fields(cls):
        dest = f"{prefix}{f.name}"
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        if hasattr(args, dest) and getattr(args, dest) is not None:
            value = getattr(args, dest)
            out[f.name] = (convert or {}).get(f.name, lambda v: v)(value)
    return out


def csv_list(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def pairs(items: list[str] | None, flag: str) -> dict:
    from .errors import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def json_or_file(text: str, flag: str) -> dict:
    """A JSON object given inline, or the path of a JSON/YAML file holding one."""
    import yaml

    from .errors import ConfigError

    try:
        value = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(open(text))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{flag} takes a JSON object or a JSON/YAML file: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must hold a JSON object (a mapping), got {type(value).__name__}")
    return value


def json_object(text: str) -> dict:
    from .errors import ConfigError

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--params takes a JSON object such as '{{\"k\": 1}}', got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--params takes a JSON object such as '{{\"k\": 1}}', got {type(value).__name__} {text!r}")
    return value


def model_arg(parser) -> None:
    """MODEL_URI as the first argument, or as ``-m/--model-uri`` (MLflow's flag); exactly one."""
    positional(parser, "model_uri", "MODEL_URI", "path, file://, runs:/, models:/ URI", "-m", "--model-uri")


def positional(parser, dest: str, metavar: str, help: str, *flags: str) -> None:
    """An argument given by position or by flag: the positional is optional here, and ``place`` fills
    the names not given by flag from the positionals, in order."""
    parser.add_argument(f"_pos_{dest}", nargs="?", metavar=metavar, help=f"{help} (or {'/'.join(flags)})")
    parser.add_argument(*flags, dest=dest, metavar=metavar, help=f"{metavar}, as a flag")
    parser.set_defaults(_places=[*(parser.get_default("_places") or []), (dest, metavar, flags)], _parser=parser)


def place(args, extra: list[str]) -> list[str]:
    """Each positional-or-flag argument from its flag, else from the next positional (argparse leaves
    the positionals that follow an option in ``extra``); returns what is left over. A usage error names
    the argument that is missing."""
    places = getattr(args, "_places", None) or []
    given = [getattr(args, f"_pos_{dest}") for dest, _, _ in places]
    given = [v for v in given if v is not None] + [x for x in extra if x == "-" or not x.startswith("-")]
    rest = [x for x in extra if not (x == "-" or not x.startswith("-"))]
    for dest, metavar, flags in places:
        if getattr(args, dest) is None:
            if not given:
                args._parser.error(f"{metavar} is missing; give it as an argument or with {'/'.join(flags)}")
            setattr(args, dest, given.pop(0))
    return given + rest


def load_flags(parser) -> None:
    parser.add_argument("--flavor", help="load with this flavor instead of the native one")
    parser.add_argument("--cache-dir", default=os.environ.get("ARROWSCORE_CACHE_DIR"),
                        help="where downloaded models are cached (env ARROWSCORE_CACHE_DIR)")


MODEL_CONVERT = {"feature_columns": csv_list, "params": json_object}  # ModelOptions' flags -> values


def model_flags() -> dict:
    """The flags of ModelOptions' fields, as score and stream share them."""
    return {"cache_dir": {"default": os.environ.get("ARROWSCORE_CACHE_DIR"),
                          "help": "where downloaded models are cached (env ARROWSCORE_CACHE_DIR)"},
            "feature_columns": {"metavar": "COL,COL",
                                "help": "comma-separated scalar columns that make up a tensor input, in order"},
            "params": {"metavar": "JSON", "help": "inference params as a JSON object, for every batch"}}


def properties(path: str) -> dict:
    """A Java-style properties file: KEY=VALUE lines, # or ! comments, blank lines."""
    from .errors import ConfigError

    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as exc:
        raise ConfigError(f"--kafka-config {path!r} cannot be read: {exc.strerror}") from None
    out = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():  # the line is not echoed: it may hold a secret
            raise ConfigError(f"{path}:{n} is not a KEY=VALUE line; --kafka-config takes KEY=VALUE lines and # comments")
        out[key.strip()] = value.strip()
    return out


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_flags(parser) -> None:
    # SUPPRESS: a subcommand that is not given the flag leaves the one given before it in place
    group = parser.add_argument_group("logging (arrowscore's own loggers; other libraries log warnings only)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug details")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="log warnings and errors only")
    group.add_argument("--log-level", type=str.upper, choices=LEVELS, default=argparse.SUPPRESS,
                       help="arrowscore's log level (over -v / -q; default INFO)")


def setup_logging(args) -> None:
    """Other libraries' loggers at WARNING, arrowscore's (``arrowscore.*``) at the level asked for."""
    level = getattr(args, "log_level", None) or ("DEBUG" if getattr(args, "verbose", False) else
                                                 "WARNING" if getattr(args, "quiet", False) else "INFO")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("arrowscore").setLevel(level)
