"""The job file of ``arrowscore run``: one YAML file naming everything a run needs, read once into a
frozen ``JobSpec``. Unknown keys and wrong types are refused with the key and its line.

The keys are the job's own (``JobSpec``'s fields: name, model, input, output, runner, schedule,
timezone, rescore, state, runner_options) and the batch options of ``score`` (``ScoreOptions``'s
fields: keep_columns, on_error, dead_letter, params, batch_rows, ...), except those a run decides
itself (mode, progress, input_files) and partition_by (not supported by runs yet). Relative local
paths are taken from the job file's directory, so a job runs the same from any working directory.

>>> spec = load_job({"name": "daily", "model": "m/", "input": "in/", "output": "out/", "keep_columns": ["id"]})
>>> spec.rescore, spec.options.keep_columns, spec.ledger_path.endswith(".out.arrowscore.ledger.sqlite")
('new-files', ('id',), True)
>>> load_job({"name": "daily", "model": "m/", "input": "in/", "output": "out/", "modle": "x"})
Traceback (most recent call last):
...
engine.errors.ConfigError: job: unknown key 'modle'; did you mean 'model'? ...
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..jobs import options as _options
from ..jobs.options import ScoreOptions

__all__ = ["JobSpec", "load_job", "RESCORE"]

RESCORE = ("new-files", "on-model-change", "all")
_NOT_KEYS = {"mode", "progress", "input_files", "partition_by"}  # ScoreOptions fields a run decides itself
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class JobSpec:
    """One scheduled, incremental scoring job (``arrowscore run JOB.yaml``)."""

    name: str = _options._opt("", "the job's name, recorded in its ledger (letters, digits, . _ -)")
    model: str = _options._opt("", "model URI; an alias (models:/fraud@champion) is resolved once per run")
    input: str = _options._opt("", "what score reads: a Parquet file, directory (hive partitions too), glob, or s3://...")
    output: str = _options._opt("", "output directory, local or s3://...; one part file per input file")
    runner: str = _options._opt("local", "the runner that scores a run's new files")
    schedule: str | None = _options._opt(None, "cron expression (5 fields, or 6 with seconds first) for `arrowscore run`")
    timezone: str = _options._opt("UTC", "the schedule's time zone (IANA name)")
    rescore: str = _options._opt("new-files", "new-files | on-model-change | all")
    state: str | None = _options._opt(None, "the ledger: a local SQLite file, or a prefix on an object store "
                                            "(default: beside the output)")
    runner_options: object = _options._opt(None, "the runner's options (a mapping)")
    # not keys: built from the file
    options: ScoreOptions = field(default_factory=ScoreOptions, metadata={"key": False})
    source: str = field(default="job", metadata={"key": False})  # where the spec came from, for messages
    digest: str = field(default="", metadata={"key": False})  # sha256 of the job file's bytes

    def __post_init__(self):
        for name in ("name", "model", "input", "output"):
            if not getattr(self, name):
                raise ConfigError(f"{self.source}: {name} is required")
        if not _NAME.match(self.name):
            raise ConfigError(f"{self.source}: name {self.name!r} must be letters, digits, '.', '_' or '-' (at most "
                              "128), starting with a letter or digit")
        if self.rescore not in RESCORE:
            raise ConfigError(f"{self.source}: rescore {self.rescore!r} is not one of {RESCORE}")
        from ..runners import RUNNERS

        if self.runner not in RUNNERS:
            raise ConfigError(f"{self.source}: runner {self.runner!r} is not one of {sorted(RUNNERS)}")
        object.__setattr__(self, "runner_options", _options.runner_options(self.runner, self.runner_options))
        dead = self.options.dead_letter
        if dead and _remote(dead) != _remote(self.output):
            raise ConfigError(f"{self.source}: dead_letter {dead!r} and output {self.output!r} must both be local or "
                              "both on the object store: a run moves each file's rejected rows from the output's "
                              "staging into place with one rename")
        if _remote(self.output) and not self.state and "/" not in _split(self.output)[0].split("://", 1)[1].strip("/"):
            raise ConfigError(f"{self.source}: output {self.output!r} is a bucket's root, so there is no place beside "
                              "it for the job's state; name one (state: s3://bucket/jobs/NAME-state/, or a local "
                              "path for SQLite)")
        _check_timezone(self.timezone, self.source)
        if self.schedule is not None:
            check_schedule(self.schedule, self.source)

    @property
    def model_path(self) -> str | None:
        """The model's directory when it is a local path (not a models:/, runs:/ or remote URI)."""
        if "://" in self.model or self.model.startswith(("models:/", "runs:/")):
            return None
        return _local(self.model)

    @property
    def ledger_path(self) -> str:
        """The job's ledger: ``state``, else beside the output: a hidden SQLite file for a local output, a
        hidden prefix of small objects for one on an object store (see ``ledger.open_ledger``)."""
        if self.state:
            return self.state if _remote(self.state) else _local(self.state)
        if _remote(self.output):
            base, query = _split(self.output)
            parent, name = base.rstrip("/").rsplit("/", 1)
            return f"{parent}/.{name}.arrowscore-state{query}"
        parent, name = os.path.split(_local(self.output).rstrip("/"))
        return os.path.join(parent, f".{name}.arrowscore.ledger.sqlite")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def _remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _split(uri: str) -> tuple[str, str]:
    """(an object-store URI without its query, '?query' or '')."""
    base, sep, query = uri.partition("?")
    return base, sep + query


def _check_timezone(name: str, source: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{source}: timezone {name!r} is not an IANA time zone name (such as 'UTC' or "
                          "'Europe/Paris')") from None


def check_schedule(expr: str, source: str = "job") -> None:
    """Refuse a cron expression cronsim cannot read (checked when cronsim is installed; the scheduled
    mode needs it, ``--once`` does not)."""
    try:
        import cronsim
    except ImportError:
        return
    from datetime import datetime, timezone

    try:
        cronsim.CronSim(expr, datetime.now(timezone.utc))
    except cronsim.CronSimError as exc:
        raise ConfigError(f"{source}: schedule {expr!r} is not a cron expression ({exc}); write 5 fields "
                          "('*/15 * * * *') or 6 with seconds first ('*/10 * * * * *')") from None


# ---- reading --------------------------------------------------------------------------------
_KINDS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,),
          "tuple": (list, tuple, str), "None": (type(None),), "object": (dict, type(None))}
_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "dict": "a mapping",
          "tuple": "a list of names", "None": "null", "object": "a mapping"}


def _fields() -> dict[str, dataclasses.Field]:
    own = {f.name: f for f in dataclasses.fields(JobSpec) if f.metadata.get("key", True)}
    score = {f.name: f for f in dataclasses.fields(ScoreOptions) if f.name not in _NOT_KEYS}
    return {**own, **score}


def _check_type(key: str, value, hint: str, where: str) -> None:
    kinds = [k.strip() for k in str(hint).split("|")]
    ok = any(isinstance(value, _KINDS.get(k, (object,))) for k in kinds)
    if isinstance(value, bool) and "bool" not in kinds:
        ok = False  # YAML's true is no integer here
    if kinds[0] == "tuple" and isinstance(value, (list, tuple)) and not all(isinstance(v, str) for v in value):
        ok = False
    if not ok:
        expected = " or ".join(_WORDS.get(k, k) for k in kinds)
        raise ConfigError(f"{where}: {key} must be {expected}, got {type(value).__name__} {value!r}")


def _yaml(text: str, source: str) -> tuple[object, dict]:
    """The document and the line of each top-level key (and of each key of a top-level mapping, as
    'outer.inner'), from yaml's node marks; a key given twice is refused (yaml keeps the last quietly)."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            if name in lines:
                raise ConfigError(f"{source} line {key.start_mark.line + 1}: key {name!r} is given twice (also line "
                                  f"{lines[name]}); keep one")
            lines[name] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                for inner, _ in value.value:
                    lines[f"{name}.{inner.value}"] = inner.start_mark.line + 1
    return data, lines


def load_job(job, base_dir: str | os.PathLike | None = None) -> JobSpec:
    """A ``JobSpec`` from a job file's path, a mapping, or itself. Relative local paths in a file are
    taken from its directory; in a mapping, from ``base_dir`` (default: the working directory)."""
    if isinstance(job, JobSpec):
        return job
    if isinstance(job, dict):
        data, lines, source = job, {}, "job"
        digest = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()
        base = Path(base_dir or os.getcwd())
    else:
        path = Path(os.fspath(job))
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the job file {str(path)!r}: {exc.strerror}") from None
        source, digest, base = str(path), hashlib.sha256(raw).hexdigest(), path.resolve().parent
        data, lines = _yaml(raw.decode("utf-8", errors="replace"), source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a job file is a mapping of keys (name, model, input, output, ...), got "
                          f"{type(data).__name__}")

    def where(key: str) -> str:
        return f"{source} line {lines[key]}" if key in lines else source

    fields = _fields()
    given = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where(str(key))}: unknown key {key!r}; {hint}the keys are {sorted(fields)}")
        if value is None and key in ("name", "model", "input", "output"):
            raise ConfigError(f"{where(key)}: {key} is empty; give it a value")
        if value is not None or "None" in str(fields[key].type):
            _check_type(key, value, fields[key].type, where(key))
        given[key] = value
    for key in ("input", "output", "state", "dead_letter", "model"):
        if isinstance(given.get(key), str):
            given[key] = _from(base, given[key])
    own = {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(JobSpec)}}
    score = {k: v for k, v in given.items() if k not in own}
    try:
        options = ScoreOptions(progress=False, **score)
        return JobSpec(**own, options=options, source=source, digest=digest)
    except ConfigError as exc:
        text = str(exc)
        if text.startswith(source):
            text = text[len(source):].lstrip(": ")
        # name the line of the key the message is about, where one is
        key = next((k for k in sorted(given, key=len, reverse=True) if text.startswith(k)), None)
        if key is None and "runner has no options" in text:
            key = "runner_options"
        raise ConfigError(f"{where(key) if key else source}: {text}") from None


def _from(base: Path, value: str) -> str:
    """A relative local path taken from ``base``; URIs (runs:/, models:/, s3://, file://) and absolute
    paths as they are."""
    if "://" in value or value.startswith(("runs:/", "models:/")) or os.path.isabs(os.path.expanduser(value)):
        return os.path.expanduser(value) if "://" not in value and ":/" not in value else value
    return str(base / value)
