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
from dataclasses import asdict, dataclass, replace

from ..errors import ConfigError, EngineError, ModelLoadError, require
from .app import App, Routes, load_entries
from .options import ServeOptions

__all__ = ["serve", "ServeOptions", "platform", "ping", "model_specs", "build_app"]

log = logging.getLogger("arrowscore.serve")
SAGEMAKER_MODEL = "/opt/ml/model"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_CONFIG = "ARROWSCORE_SERVE_CONFIG"  # how worker processes get their models and options


@dataclass(frozen=True)
class Platform:
    """Where the server runs, read from the environment: which host, port, extra routes and model."""

    name: str = "local"
    host: str = "127.0.0.1"
    port: int = 8080
    routes: Routes = Routes()
    model: str | None = None


def _port(environ, key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ConfigError(f"{key}={environ[key]!r} is not a port number") from None


def platform(environ=None) -> Platform:
    """The platform contract the environment asks for (Vertex AI, SageMaker, or none).

    ``ARROWSCORE_PORT`` / ``ARROWSCORE_HOST`` / ``ARROWSCORE_MODEL`` set the defaults a platform's own
    variables do not (the image sets the host to 0.0.0.0). A model at /opt/ml/model (the image's) is
    served when neither the platform nor ``ARROWSCORE_MODEL`` names one.
    """
    environ = os.environ if environ is None else environ
    own_port = _port(environ, "ARROWSCORE_PORT") if environ.get("ARROWSCORE_PORT") else 8080
    baked = SAGEMAKER_MODEL if os.path.isdir(SAGEMAKER_MODEL) else None
    if "AIP_HTTP_PORT" in environ or "AIP_PREDICT_ROUTE" in environ:
        routes = Routes(health=tuple(r for r in [environ.get("AIP_HEALTH_ROUTE")] if r),
                        predict=tuple(r for r in [environ.get("AIP_PREDICT_ROUTE")] if r))
        port = _port(environ, "AIP_HTTP_PORT") if "AIP_HTTP_PORT" in environ else own_port
        model = environ.get("AIP_STORAGE_URI") or environ.get("ARROWSCORE_MODEL") or baked
        return Platform("vertex", "0.0.0.0", port, routes, model)
    sagemaker_model = environ.get("ARROWSCORE_MODEL") or SAGEMAKER_MODEL
    if "SAGEMAKER_BIND_TO_PORT" in environ or (baked and "ARROWSCORE_MODEL" not in environ):
        port = _port(environ, "SAGEMAKER_BIND_TO_PORT") if "SAGEMAKER_BIND_TO_PORT" in environ else own_port
        return Platform("sagemaker", "0.0.0.0", port, Routes(), sagemaker_model)
    return Platform(host=environ.get("ARROWSCORE_HOST") or "127.0.0.1", port=own_port,
                    model=environ.get("ARROWSCORE_MODEL"))


def ping(environ=None, timeout_s: float = 4.0) -> bool:
    """Whether the server this environment describes answers ``GET /ping`` with 200 (the image's
    HEALTHCHECK: the port comes from the same variables ``serve`` reads)."""
    import http.client

    where = platform(environ)
    host = "127.0.0.1" if where.host in ("0.0.0.0", "") else ("::1" if where.host == "::" else where.host)
    conn = http.client.HTTPConnection(host, where.port, timeout=timeout_s)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


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


def build_app(specs: list[tuple], options: ServeOptions, routes: Routes = Routes(), auth_token: str | None = None) -> App:
    """The ASGI app for resolved models (what each worker runs)."""
    return App(lambda: load_entries(specs, options), options, routes, auth_token)


def _worker_app() -> App:
    """uvicorn's app factory in a worker process: the models and options the parent resolved."""
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
    speed = {"loop": "uvloop" if _has("uvloop") else "asyncio", "http": "httptools" if _has("httptools") else "h11"}
    common = dict(host=host, port=port, lifespan="on", access_log=False, log_level="warning",
                  timeout_graceful_shutdown=max(options.timeout_s, 1) + 5, **speed)
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


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
