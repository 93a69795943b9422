"""Where ``serve`` runs, read from the environment (cloud contracts), and ``ping``, the image's
HEALTHCHECK: light on imports, since the health check runs it every 30 s.

>>> platform({"SAGEMAKER_BIND_TO_PORT": "8081", "ARROWSCORE_MODEL": "/m"})
Platform(name='sagemaker', host='0.0.0.0', port=8081, routes=Routes(health=(), predict=()), model='/m')
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Platform", "Routes", "platform", "ping", "SAGEMAKER_MODEL"]

SAGEMAKER_MODEL = "/opt/ml/model"


@dataclass(frozen=True)
class Routes:
    """Extra paths a cloud platform names (Vertex AI's AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE)."""

    health: tuple = ()
    predict: tuple = ()


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
        port = int(environ[key])
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(f"{key}={environ[key]!r} is not a port number (1-65535)")
    return port


def _baked() -> str | None:
    return SAGEMAKER_MODEL if os.path.isdir(SAGEMAKER_MODEL) else None


def platform(environ=None) -> Platform:
    """The platform contract the environment asks for (Vertex AI, SageMaker, or none).

    ``ARROWSCORE_PORT`` / ``ARROWSCORE_HOST`` / ``ARROWSCORE_MODEL`` set the defaults a platform's own
    variables do not (the image sets the host to 0.0.0.0). A model at /opt/ml/model (the image's) is
    served when neither the platform nor ``ARROWSCORE_MODEL`` names one.
    """
    environ = os.environ if environ is None else environ
    own_port = _port(environ, "ARROWSCORE_PORT") if environ.get("ARROWSCORE_PORT") else 8080
    baked = _baked()
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


def ping(environ=None, timeout_s: float = 4.0) -> str | None:
    """None when the server this environment describes answers ``GET /ping`` with 200, else why not
    (the image's HEALTHCHECK: the port comes from the variables ``serve`` reads, not from its flags)."""
    import http.client

    where = platform(environ)
    host = "127.0.0.1" if where.host in ("0.0.0.0", "") else ("::1" if where.host == "::" else where.host)
    url = f"http://{host}:{where.port}/ping"
    conn = http.client.HTTPConnection(host, where.port, timeout=timeout_s)
    try:
        conn.request("GET", "/ping")
        status = conn.getresponse().status
        return None if status == 200 else f"{url} answered {status}"
    except OSError as exc:
        return f"no answer from {url}: {exc.strerror or exc}"
    finally:
        conn.close()


