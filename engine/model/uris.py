"""Model URIs -> a local model directory, with a content cache for anything downloaded.

Local paths and ``file://`` URIs are used in place. ``runs:/``, ``models:/`` and remote artifact
URIs (``s3://`` ...) go through MLflow (``arrowscore[mlflow]``) and land in a cache keyed by what
identifies the model's content (its model id, or run and path), so a restart or a second worker
reuses the download. Aliases are resolved on every call; only the content is cached.

>>> resolve("file:///no/such/model")
Traceback (most recent call last):
...
engine.errors.ModelLoadError: model path '/no/such/model' does not exist; ...
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import ConfigError, ModelLoadError, require

__all__ = ["resolve", "default_cache_dir", "cache_key"]

_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "arrowscore" / "models"


def _safe(key: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:80]
    return f"{clean}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cache_key(uri: str) -> tuple[str, str]:
    """(content key, URI to download) for a remote model URI; resolves aliases and versions."""
    mlflow = require("mlflow", "mlflow", f"the model URI {uri!r}")
    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].strip("/"), uri
    if uri.startswith("models:/"):
        body = uri[len("models:/"):].strip("/")
        if _MODEL_ID.match(body):
            return body, uri
        client = mlflow.MlflowClient()
        try:
            if "@" in body:
                name, alias = body.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                parts = body.split("/")
                if len(parts) != 2:
                    raise ConfigError(f"model URI {uri!r} is not models:/<name>/<version>, models:/<name>@<alias> "
                                      "or models:/m-<id>")
                name, ver = parts
                if ver.isdigit():
                    version = client.get_model_version(name, ver)
                else:  # 'latest' or a (deprecated) stage
                    stages = None if ver.lower() == "latest" else [ver]
                    found = client.get_latest_versions(name, stages)
                    if not found:
                        raise ModelLoadError(f"registered model {name!r} has no version for {ver!r}")
                    version = max(found, key=lambda v: int(v.version))
        except mlflow.exceptions.MlflowException as exc:
            raise ModelLoadError(f"cannot resolve {uri!r} in the model registry: {exc.message}") from exc
        model_id = getattr(version, "model_id", None)
        key = model_id or f"{version.name}/{version.version}"
        return key, f"models:/{model_id}" if model_id else f"models:/{version.name}/{version.version}"
    return uri, uri


def _download(uri: str, key: str, cache_dir: Path) -> Path:
    mlflow = require("mlflow", "mlflow", f"the model URI {uri!r}")
    target = cache_dir / _safe(key)
    if (target / "MLmodel").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
        except mlflow.exceptions.MlflowException as exc:
            raise ModelLoadError(f"cannot download model {uri!r}: {exc.message}") from exc
        if not (local / "MLmodel").is_file():
            raise ModelLoadError(f"{uri!r} downloaded, but it holds no MLmodel file; point at the model's folder")
        try:
            os.rename(local, target)  # atomic: a concurrent worker either wins or finds ours
        except OSError:
            if not (target / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding the model that ``uri`` names."""
    text = os.fspath(uri)
    if not text:
        raise ConfigError("the model URI is empty; pass a path, file://, runs:/ or models:/ URI")
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(unquote(parsed.path) if parsed.scheme == "file" else text).expanduser()
        if not path.exists() and _MODEL_ID.match(text):
            raise ConfigError(f"{text!r} looks like a model id; write it as 'models:/{text}'")
        if not path.exists():
            raise ModelLoadError(f"model path {str(path)!r} does not exist; check the path or pass a runs:/ or models:/ URI")
        return path
    key, download_uri = cache_key(text)
    return _download(download_uri, key, Path(cache_dir) if cache_dir else default_cache_dir())
