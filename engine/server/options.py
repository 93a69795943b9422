"""What a server can be told: one frozen dataclass, validated once; the CLI's flags come from its fields.

>>> ServeOptions(max_batch_rows=0)
Traceback (most recent call last):
...
engine.errors.ConfigError: max_batch_rows must be at least 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..jobs.options import _at_least, _opt
from ..model.device import check_device, with_device

__all__ = ["ServeOptions"]


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``arrowscore serve`` / ``engine.serve`` can be told."""

    host: str | None = _opt(None, "address to bind (default 127.0.0.1; 0.0.0.0 under SageMaker or Vertex AI)")
    port: int | None = _opt(None, "port (default 8080, or SAGEMAKER_BIND_TO_PORT / AIP_HTTP_PORT when set)")
    workers: int = _opt(1, "server processes sharing the port, each with its own model copy (for models "
                           "that hold the GIL: python_function, sklearn)")
    max_batch_rows: int = _opt(1024, "concurrent requests are merged into one model call of at most this "
                                     "many rows")
    max_delay_ms: float = _opt(0.0, "when requests are queued, how long a batch waits for more to join "
                                    "(default 0: the requests that queued while the model was busy go "
                                    "together; a request alone never waits)")
    max_queue: int = _opt(1024, "requests waiting per model; past it, 503 with Retry-After at once")
    timeout_s: float = _opt(30.0, "a request not answered within this gets 504")
    max_body_mb: float = _opt(100.0, "request bodies over this many MiB get 413")
    reload_every_s: float | None = _opt(None, "follow models:/name@alias: check the alias this often, load a "
                                              "new version in the background and swap when it scores a sample")
    auth_token: str | None = _opt(None, "require 'Authorization: Bearer TOKEN' on every route but health "
                                        "(better: the ARROWSCORE_AUTH_TOKEN environment variable)")
    access_log: bool = _opt(False, "log one line per request")
    http: str = _opt("arrowscore", "HTTP layer: arrowscore (whole requests to the app, one write per answer) or "
                                   "uvicorn (uvicorn's httptools protocol and the app's ASGI interface)",
                     metavar="{arrowscore,uvicorn}")
    flavor: str | None = _opt(None, "load this flavor of the model(s) instead of the best one", cli=False)
    cache_dir: str | None = _opt(None, "model cache directory", cli=False)
    model_config: dict | None = _opt(None, "model_config passed to the flavor", cli=False)
    device: str | None = _opt(None, "cpu, cuda or cuda:N: where the models run (model_config's device); default: "
                                    "each model's own choice, else cuda when torch sees a GPU", metavar="DEVICE")

    no_compiled_trees: bool = _opt(False, "answer tree models (XGBoost, LightGBM, scikit-learn) with the library alone: "
                                          "no compiled (ONNX Runtime) path for small batches")

    def __post_init__(self):
        object.__setattr__(self, "device", check_device(self.device))
        # the models load with it: model_config's device, as MLflow's load_model takes it
        config = with_device(self.model_config, self.device)
        if self.no_compiled_trees:
            config = {**(config or {}), "compiled": False}
        object.__setattr__(self, "model_config", config)
        _at_least(self, 1, "workers", "max_batch_rows", "max_queue")
        _at_least(self, 0, "max_delay_ms")
        for name in ("timeout_s", "max_body_mb", "reload_every_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be above 0, got {value}")
        if self.http not in ("arrowscore", "uvicorn"):
            raise ConfigError(f"http must be arrowscore or uvicorn, got {self.http!r}")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
