"""What a job can be told, and what it reports: frozen dataclasses, validated once, imported by every
runner and by the CLI (whose flags are built from these fields), importing no runner.

>>> ScoreOptions(keep_columns=["id"], on_error="dead-letter", dead_letter="rejected.parquet").keep_columns
('id',)
>>> RayOptions(actors=0)
Traceback (most recent call last):
...
engine.errors.ConfigError: actors must be at least 1, got 0

Field metadata ``help`` is the CLI's help text; ``cli=False`` keeps a field off the command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pyarrow as pa

from ..errors import ConfigError
from ..model.device import GPU_BATCH_ROWS, check_device, device_of, for_driver, is_gpu, with_device

__all__ = ["ModelOptions", "ScoreOptions", "ScoreReport", "LocalOptions", "RayOptions", "SparkOptions", "StreamOptions",
           "StreamReport", "ON_ERROR", "GUARANTEES", "runner_options"]

ON_ERROR = ("fail", "dead-letter")
GUARANTEES = ("at-least-once", "exactly-once")
CPU_BATCH_ROWS = 32_768


def _opt(default, help: str, cli: bool = True, repr: bool = True, **extra):
    """A dataclass field with its CLI help; mutable defaults become factories."""
    meta = {"help": help, "cli": cli, **extra}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, repr=repr)
    return field(default=default, metadata=meta, repr=repr)


def _names(value, what: str) -> tuple:
    """Column names as a tuple; one string is one name (not its characters)."""
    if isinstance(value, str):
        return (value,)
    try:
        names = tuple(value or ())
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{what} takes a column name or a list of them, got {value!r}")
    return names


def _codec_available(name: str) -> bool:
    if str(name).lower() in ("none", "uncompressed"):
        return True
    try:
        return pa.Codec.is_available(name)
    except (ValueError, pa.ArrowInvalid):  # not a codec name at all
        return False


def _at_least(obj, minimum, *names) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class ModelOptions:
    """How a mode loads and calls its model: the options batch jobs and streams share."""

    params: dict | None = _opt(None, "inference params for every batch, checked against the params schema")
    feature_columns: tuple | None = _opt(None, "scalar columns that make up a tensor input, in order")
    model_config: dict | None = _opt(None, "overrides for a python_function model's model_config")
    flavor: str | None = _opt(None, "load with this flavor instead of the native one")
    cache_dir: str | None = _opt(None, "where downloaded models are cached")
    device: str | None = _opt(None, "cpu, cuda or cuda:N: where the model runs (model_config's device); default: "
                                    "the model's own choice, else cuda when torch sees a GPU", metavar="DEVICE")

    def __post_init__(self):
        # --device wins over model_config's, as the command line over the file; either is the job's device
        object.__setattr__(self, "device", check_device(self.device) or device_of(self.model_config))
        if self.feature_columns is not None:
            object.__setattr__(self, "feature_columns", _names(self.feature_columns, "feature_columns") or None)
        if self.params is not None and not isinstance(self.params, dict):
            raise ConfigError(f"params must be a mapping of name to value, got {type(self.params).__name__} "
                              f"{self.params!r}; decode JSON with json.loads first")

    def load_kwargs(self, driver: bool = False) -> dict:
        """The ``load_model`` arguments these options imply. ``driver``: for a cluster job's driver, which
        only plans the job (schemas, columns): it loads the model on the CPU, the workers on the device."""
        config = with_device(self.model_config, self.device)
        return {"feature_columns": list(self.feature_columns) if self.feature_columns else None,
                "model_config": for_driver(config) if driver else config, "flavor": self.flavor,
                "cache_dir": self.cache_dir}


@dataclass(frozen=True)
class ScoreOptions(ModelOptions):
    """Everything a batch job can be told; validated once, passed to whichever runner runs it."""

    keep_columns: tuple = _opt((), "input columns to copy to the output (ids, ...)")
    # a batch of 16 doubles stays in cache between stages; 64k halved ONNX rows/s
    batch_rows: int | None = _opt(None, f"rows per scored batch (default {CPU_BATCH_ROWS:,}; {GPU_BATCH_ROWS:,} "
                                        "with a GPU --device)")
    mode: str = _opt("error", "what to do when OUTPUT is not empty")
    on_error: str = _opt("fail", "rows failing the signature: stop, or write them to a dead-letter file")
    dead_letter: str | None = _opt(None, "Parquet file for rejected rows (with on_error dead-letter)")
    compression: str = _opt("snappy", "Parquet compression")
    row_group_rows: int | None = _opt(None, "rows per output row group")
    partition_by: str | None = _opt(None, "write output partitioned by this (kept) column")
    rename: dict = _opt({}, "rename output columns {old: new}")
    read_ahead: int = _opt(4, "batches in flight between reading, scoring and writing")
    progress: bool | None = _opt(None, "None: a bar on a terminal, log lines otherwise")
    input_files: tuple | None = _opt(None, "score only these of the input's files (as list_files names them): "
                                           "scheduled jobs pass the new ones", cli=False)

    def __post_init__(self):
        from connectors.parquet import MODES

        object.__setattr__(self, "keep_columns", _names(self.keep_columns, "keep_columns"))
        super().__post_init__()
        if self.batch_rows is None:
            object.__setattr__(self, "batch_rows", GPU_BATCH_ROWS if is_gpu(self.device) else CPU_BATCH_ROWS)
        object.__setattr__(self, "rename", dict(self.rename or {}))
        if self.input_files is not None:
            object.__setattr__(self, "input_files", _names(self.input_files, "input_files"))
        _at_least(self, 1, "batch_rows", "read_ahead", "row_group_rows")
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {MODES}")
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"on_error {self.on_error!r} is not one of {ON_ERROR}")
        if self.on_error == "dead-letter" and not self.dead_letter:
            raise ConfigError("on_error 'dead-letter' needs a path for the rejected rows (dead_letter=PATH, "
                              "--dead-letter PATH)")
        if self.on_error == "fail" and self.dead_letter:
            raise ConfigError(f"dead_letter {self.dead_letter!r} is given but on_error is 'fail', which writes no "
                              "rejected rows; pass on_error='dead-letter' (--on-error dead-letter) or drop it")
        dupes = {c for c in self.keep_columns if list(self.keep_columns).count(c) > 1}
        if dupes:
            raise ConfigError(f"keep_columns names {sorted(dupes)} more than once")
        if not _codec_available(self.compression):
            raise ConfigError(f"compression {self.compression!r} is not one this pyarrow writes; use snappy, zstd, "
                              "gzip, brotli, lz4 or none")


@dataclass(frozen=True)
class LocalOptions:
    """The local runner's own options."""

    filesystem: object = _opt(None, "a pyarrow.fs.FileSystem for the input and output paths", cli=False)


@dataclass(frozen=True)
class RayOptions:
    """The Ray runner's options (``--ray-*`` on the command line)."""

    address: str | None = _opt(None, "Ray cluster to use (default: RAY_ADDRESS, else a local one)")
    actors: int = _opt(1, "scoring actors in the Ray actor pool")
    cpus_per_actor: float = _opt(0.5, "CPUs each actor reserves (below 1: reads must still get CPUs on small nodes)")
    num_cpus: int | None = _opt(None, "CPUs of a local Ray started by arrowscore (default: all)")
    runtime_env: dict | None = _opt(None, "Ray runtime env for the workers (pip, py_modules, env_vars)",
                                    metavar="JSON|FILE")
    ship_code: bool = _opt(False, "send this arrowscore's code to the workers (py_modules), for nodes without it")
    gpus_per_actor: float | None = _opt(None, "GPUs each actor reserves (default 1 with a GPU --device, else 0)")
    keep_warm_s: float = _opt(0.0, "keep the actors, model loaded, for later jobs of this model on this cluster until "
                                   "idle this many seconds (0: they end with the job)", metavar="SECONDS")
    load_log: str | None = _opt(None, "append one line per model load in an actor (tests count loads)", cli=False)

    def __post_init__(self):
        _at_least(self, 1, "actors", "num_cpus")
        _at_least(self, 0, "gpus_per_actor")
        warm = self.keep_warm_s
        if isinstance(warm, bool) or not isinstance(warm, (int, float)) or not (warm == 0 or 1 <= warm < float("inf")):
            raise ConfigError(f"keep_warm_s takes seconds: 0 (actors end with the job) or a number from 1 on, "
                              f"got {warm!r}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"cpus_per_actor must be above 0, got {self.cpus_per_actor}")
        if self.runtime_env is not None and not isinstance(self.runtime_env, dict):
            raise ConfigError(f"runtime_env must be a mapping, got {type(self.runtime_env).__name__}")


@dataclass(frozen=True)
class SparkOptions:
    """The Spark runner's options (``--spark-*``)."""

    master: str | None = _opt(None, "Spark master (default: spark-submit's, else local[*])")
    conf: dict = _opt({}, "Spark settings for the session arrowscore starts (spark.executor.memory, ...)",
                      metavar="KEY=VALUE")
    load_log: str | None = _opt(None, "append one line per model load in a worker (tests count loads)", cli=False)

    def __post_init__(self):
        if not isinstance(self.conf, dict):
            raise ConfigError(f"conf must be a mapping of Spark setting to value, got {type(self.conf).__name__}")
        object.__setattr__(self, "conf", {str(k): str(v) for k, v in self.conf.items()})


RUNNER_OPTIONS = {"local": LocalOptions, "ray": RayOptions, "spark": SparkOptions}


def runner_options(runner: str, given) -> object:
    """The runner's options object from a dict (checked: unknown keys are refused) or itself."""
    cls = RUNNER_OPTIONS.get(runner)
    if cls is None:
        raise ConfigError(f"runner {runner!r} is not one of {sorted(RUNNER_OPTIONS)}")
    if isinstance(given, cls):
        return given
    if dataclasses.is_dataclass(given):
        raise ConfigError(f"runner_options for the {runner} runner are {cls.__name__} or a dict, "
                          f"not {type(given).__name__}")
    given = dict(given or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"the {runner} runner has no options {unknown}; it takes {sorted(known)}")
    return cls(**given)


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


@dataclass(frozen=True)
class StreamOptions(ModelOptions):
    """A Kafka stream: where from, where to, with which guarantee (``arrowscore stream``)."""

    bootstrap_servers: str = _opt("", "Kafka bootstrap servers, host:port[,...]")
    input_topic: str = _opt("", "topic to score")
    output_topic: str = _opt("", "topic the predictions go to")
    group_id: str = _opt("", "consumer group (replicas of one stream share it)")
    guarantee: str = _opt("at-least-once", "delivery guarantee")
    dead_letter_topic: str | None = _opt(None, "where undecodable or invalid messages go (else the stream stops)")
    value_format: str = _opt("json", "message values: one JSON object each, or an Arrow IPC stream each")
    keep_columns: tuple = _opt(("_key",), "input fields or pass-through columns (_key, _partition, _offset, "
                                          "_timestamp) to copy into each output")
    max_batch_messages: int = _opt(10_000, "messages per micro-batch at most")
    max_batch_rows: int = _opt(10_000, "rows per model call at most: a micro-batch holds at most this many messages, "
                                       "and Arrow IPC messages holding more rows are scored in calls of this many")
    max_batch_bytes: int = _opt(64 << 20, "message value bytes per micro-batch at most (about; at least one message): "
                                          "bounds memory when each message holds many rows")
    max_wait_ms: int = _opt(100, "longest wait to fill a micro-batch once its first message arrived")
    # librdkafka settings, applied over arrowscore's defaults; not in repr: they may hold SASL secrets
    client_config: dict = _opt({}, "Kafka settings for the consumer and the producer", cli=False, repr=False)
    consumer_config: dict = _opt({}, "Kafka settings for the consumer only", cli=False, repr=False)
    producer_config: dict = _opt({}, "Kafka settings for the producer only", cli=False, repr=False)
    transactional_id: str | None = _opt(None, "exactly-once: this replica's transactional.id, unique per replica "
                                              "(default arrowscore-GROUP-TOPIC-HOST-PID-RANDOM)")
    stats_every_s: float = _opt(10.0, "seconds between progress log lines")
    max_messages: int | None = _opt(None, "stop after this many input messages (tests, backfills)")
    idle_timeout_s: float | None = _opt(None, "stop after this many seconds without messages (backfills)")
    broker_timeout_s: float = _opt(60.0, "fail when no Kafka broker has answered for this long, at start or later")
    metrics_port: int | None = _opt(None, "serve GET /health, /ready and /metrics (Prometheus) on this port")
    metrics_host: str = _opt("127.0.0.1", "the address --metrics-port listens on (0.0.0.0 for probes from outside)")

    def __post_init__(self):
        from connectors.kafka import FORMATS

        super().__post_init__()
        object.__setattr__(self, "keep_columns", _names(self.keep_columns, "keep_columns"))
        if self.guarantee not in GUARANTEES:
            raise ConfigError(f"guarantee {self.guarantee!r} is not one of {GUARANTEES}")
        if self.value_format not in FORMATS:
            raise ConfigError(f"value format {self.value_format!r} is not one of {FORMATS}")
        if self.max_batch_rows < 1 or self.max_batch_messages < 1 or self.max_wait_ms < 0:
            raise ConfigError("max_batch_rows and max_batch_messages must be >= 1 and max_wait_ms >= 0")
        if self.max_batch_bytes < 1:
            raise ConfigError(f"max_batch_bytes must be >= 1, got {self.max_batch_bytes}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ConfigError(f"max_messages must be >= 1 (or unset: no limit), got {self.max_messages}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics_port {self.metrics_port} is not a port number (0: any free port)")
        if not self.broker_timeout_s > 0:
            raise ConfigError(f"broker_timeout_s must be above 0, got {self.broker_timeout_s}")
        for name in ("bootstrap_servers", "input_topic", "output_topic", "group_id"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required (--{name.replace('_', '-')})")
        _check_kafka_settings(self.guarantee, {**self.client_config, **self.consumer_config},
                              {**self.client_config, **self.producer_config})


# settings that have a flag of their own, or that arrowscore sets per replica
_OWN = {"bootstrap.servers": "--bootstrap-servers", "group.id": "--group-id", "transactional.id": "--transactional-id"}


def _check_kafka_settings(guarantee: str, consumer: dict, producer: dict) -> None:
    """Refuse the user's Kafka settings that would break the stream's guarantee, saying why."""
    for key, flag in _OWN.items():
        if key in consumer or key in producer:
            raise ConfigError(f"Kafka setting {key} is refused: arrowscore sets it from {flag}"
                              f"{' (default: one per replica)' if key == 'transactional.id' else ''}; use that flag")
    exactly = guarantee == "exactly-once"
    rules = [  # (settings, key, allowed values, why)
        (consumer, "enable.auto.commit", ("false",), "offsets are committed by arrowscore once a batch's outputs are "
         "delivered (or in its transaction); auto-commit would commit messages not scored yet, and a crash would lose them"),
        (consumer, "isolation.level", ("read_committed",) if exactly else None,
         "exactly-once reads with read_committed, so that aborted upstream transactions are never scored"),
        (producer, "enable.idempotence", ("true",) if exactly else None,
         "exactly-once writes in transactions, which need the idempotent producer"),
        (producer, "acks", ("all", "-1") if exactly else ("all", "-1", "1"),
         "exactly-once writes in transactions, which need acks=all" if exactly else
         "acks=0 means no acknowledgement, so offsets would be committed for outputs that may be lost"),
    ]
    for settings, key, allowed, why in rules:
        if allowed and key in settings and str(settings[key]).strip().lower() not in allowed:
            raise ConfigError(f"Kafka setting {key}={settings[key]} is refused under {guarantee}: {why}; "
                              f"drop it from -X / --kafka-config")


@dataclass
class StreamReport:
    """What a stream did: input messages, rows scored (an Arrow IPC message holds many), messages
    dead-lettered (each whole: a message with one rejected row is dead-lettered, not partly scored)."""

    messages: int = 0
    rows: int = 0
    dead_lettered: int = 0
    batches: int = 0
    seconds: float = 0.0
    busy_seconds: float = 0.0  # from the first message consumed: throughput without start-up and idling

    def __str__(self) -> str:
        rate = self.messages / self.seconds if self.seconds else 0.0
        return (f"streamed {self.messages:,} messages in {self.batches:,} batches: {self.rows:,} rows scored, "
                f"{self.dead_lettered:,} messages dead-lettered; {self.seconds:.1f} s ({rate:,.0f} msg/s)")
