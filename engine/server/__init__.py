"""``arrowscore serve``: any logged model as a REST service in one command.

    arrowscore serve models:/fraud@champion --port 8080 [--workers 2] [--reload-every-s 30]
    arrowscore serve fraud=models:/fraud@champion churn=runs:/<id>/model     # several models

``engine.serve(models, **options)`` is the same from Python. Models are resolved once (registry,
cache) in the parent process, loaded once per worker, and every request goes through that model's
``Batcher`` into ``Model.score_batch``. The protocols are in ``app`` (MLflow's, Arrow, Parquet, Open
Inference v2), the platform contracts below:

- SageMaker: ``serve`` with no model serves ``/opt/ml/model`` (or ``ARROWSCORE_MODEL``) on
  ``SAGEMAKER_BIND_TO_PORT`` (default 8080), bound to 0.0.0.0; ``/ping`` and ``/invocations``.
- Vertex AI: with ``AIP_HTTP_PORT`` set, the port, ``AIP_HEALTH_ROUTE`` and ``AIP_PREDICT_ROUTE`` come
  from the environment, the model from ``AIP_STORAGE_URI`` when none is given; bound to 0.0.0.0.
- Elsewhere: 127.0.0.1:8080 unless ``--host`` / ``--port`` (or ``ARROWSCORE_HOST`` / ``ARROWSCORE_PORT``)
  say otherwise; the container image (``arrowscore generate-dockerfile``) sets 0.0.0.0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import asdict, replace

from ..errors import ConfigError, EngineError, ModelLoadError, require
from .contracts import Platform, Routes, ping, platform
from .options import ServeOptions

# the app (pyarrow, orjson, the model core) is imported where a server starts: `arrowscore ping`, the
# image's HEALTHCHECK every 30 s, needs only the contracts

__all__ = ["serve", "ServeOptions", "platform", "ping", "Platform", "Routes", "model_specs", "build_app"]

log = logging.getLogger("arrowscore.serve")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CONFIG = "ARROWSCORE_SERVE_CONFIG"  # how worker processes get their models and options


def _name_of(uri: str) -> str:
    if uri.startswith("models:/"):
        return re.split(r"[/@]", uri[len("models:/"):].strip("/"))[0]
    base = os.path.basename(os.path.normpath(uri)) if "://" not in uri else ""
    return base if base and _NAME.match(base) else "model"


def model_specs(models, where: Platform) -> list[tuple[str, str]]:
    """[(name, uri)] from a URI, ``NAME=URI`` strings, a list of them, or a {name: uri} dict."""
    if models is None or models == [] or models == ():
        if not where.model:
            raise ConfigError("name a model to serve: arrowscore serve MODEL_URI (or NAME=URI ...); under "
                              "SageMaker the model is /opt/ml/model, under Vertex AI AIP_STORAGE_URI")
        models = [where.model]
    if isinstance(models, (str, os.PathLike)):
        models = [os.fspath(models)]
    pairs = []
    if isinstance(models, dict):
        pairs = [(str(k), os.fspath(v)) for k, v in models.items()]
    else:
        for item in models:
            item = os.fspath(item)
            name, sep, uri = item.partition("=")
            if sep and _NAME.match(name) and uri:
                pairs.append((name, uri))
            else:
                pairs.append((_name_of(item), item))
    names = [n for n, _ in pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two models would be named {twice}; name them: arrowscore serve NAME=URI NAME2=URI2")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ConfigError(f"model names {bad} may hold only letters, digits, '_', '.' and '-'")
    return pairs


def _resolve(pairs, options: ServeOptions) -> list[tuple]:
    """(name, uri, local path, registry version): each model fetched once, before any worker starts."""
    from ..model import uris

    specs = []
    for name, uri in pairs:
        try:
            version = uris.registry_version(uri)
            # an alias moves: pin the version found now, so every worker loads the same one
            fetch = f"models:/{version.name}/{version.version}" if version is not None else uri
            path = uris.resolve(fetch, options.cache_dir)
        except EngineError as exc:
            raise type(exc)(f"model {name!r} ({uri}): {exc}") from exc
        specs.append((name, uri, str(path), None if version is None else str(version.version)))
    return specs


def build_app(specs: list[tuple], options: ServeOptions, routes: Routes = Routes(), auth_token: str | None = None):
    """The ASGI app for resolved models (what each worker runs)."""
    from .app import App, load_entries

    return App(lambda: load_entries(specs, options), options, routes, auth_token)


def _worker_app():
    """uvicorn's app factory in a worker process: the models and options the parent resolved."""
    from .app import App, load_entries

    config = json.loads(os.environ[_CONFIG])
    options = ServeOptions(**config["options"])
    specs = [tuple(s) for s in config["specs"]]

    def load():
        try:
            return load_entries(specs, options)
        except Exception as exc:  # the parent exits with this message once uvicorn has stopped the workers
            with contextlib.suppress(FileExistsError), open(config["failed"], "x") as fh:
                fh.write(str(exc))
            raise

    return App(load, options, Routes(**{k: tuple(v) for k, v in config["routes"].items()}), config.get("token"))


def _check_port(host: str, port: int) -> None:
    """ConfigError when the address cannot be listened on (another process has it), as uvicorn binds it."""
    if not port:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): another process has it, or "
                              "the address is not this machine's; stop it or pass another --port / --host") from None


def serve(models=None, options: ServeOptions | None = None, **kwargs) -> None:
    """Serve ``models`` (a URI, ``NAME=URI`` strings, a list, or a {name: uri} dict) until SIGTERM or
    SIGINT, which stop accepting, finish the requests in flight, then return."""
    uvicorn = require("uvicorn", "serve", "arrowscore serve")
    from .app import App, load_entries

    options = replace(options or ServeOptions(), **kwargs) if kwargs else (options or ServeOptions())
    where = platform()
    pairs = model_specs(models, where)
    host = options.host or where.host
    port = options.port if options.port is not None else where.port
    _check_port(host, port)  # before minutes of downloads and loading
    if options.reload_every_s:
        for name, uri in pairs:
            if not (uri.startswith("models:/") and "@" in uri):
                log.warning("--reload-every-s follows models:/NAME@ALIAS URIs; %s (%s) is not one and stays as "
                            "loaded", name, uri)
    specs = _resolve(pairs, options)
    # one worker: the models load here, so one that cannot load ends the command with its name (exit 2)
    entries = load_entries(specs, options) if options.workers == 1 else None
    token = options.auth_token or os.environ.get("ARROWSCORE_AUTH_TOKEN") or None
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("serving on %s without a token: anyone who can reach this port can score (set "
                    "ARROWSCORE_AUTH_TOKEN or --auth-token)", host)
    common = dict(host=host, port=port, lifespan="on", access_log=False, log_level="warning", proxy_headers=False,
                  timeout_graceful_shutdown=max(options.timeout_s, 1) + 5, loop="uvloop" if _has("uvloop") else "asyncio",
                  http=_http_layer(options.http))
    log.info("arrowscore serve: %s on http://%s:%d (%s, %d worker%s)", ", ".join(f"{n}={u}" for n, u in pairs),
             host, port, where.name, options.workers, "" if options.workers == 1 else "s")
    if entries is not None:
        with _term_returns():
            uvicorn.run(App(lambda: entries, options, where.routes, token), **common)
        return
    shared = tempfile.mkdtemp(prefix="arrowscore-serve-")
    failed = os.path.join(shared, "startup-error")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(shared, "metrics")
    os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    os.environ[_CONFIG] = json.dumps({"specs": specs, "options": asdict(options), "routes": asdict(where.routes),
                                      "token": token, "failed": failed})
    try:
        with _term_returns():
            uvicorn.run("engine.server:_worker_app", factory=True, workers=options.workers, **common)
        if os.path.exists(failed):  # uvicorn stopped because a worker could not load its models: say which
            with open(failed) as fh:
                raise ModelLoadError(fh.read())
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@contextlib.contextmanager
def _term_returns():
    """uvicorn drains on SIGTERM, then raises SIGTERM again under the handler it found: the default one
    kills the process (status -15) after a clean drain. With this one found, serve() returns (status 0)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _http_layer(name: str):
    """uvicorn's ``http``: our protocol (which needs httptools, as uvicorn's fast one does), else uvicorn's."""
    if not _has("httptools"):
        return "h11"
    if name == "uvicorn":
        return "httptools"
    from .http import Protocol

    return Protocol


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
