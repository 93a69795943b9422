"""Model URIs -> a local model directory, with a content cache for anything downloaded.

Local paths and ``file://`` URIs are used in place. ``runs:/``, ``models:/`` and remote artifact
URIs (``s3://`` ...) go through MLflow (``arrowscore[mlflow]``) and land in a cache keyed by what
identifies the model's content (its model id; run and path; or, for a registered version without a
model id, its name, version, source, run and a digest of its MLmodel file, since a deleted model's
name and version can come back holding another model), so a restart or a second worker reuses the
download. Aliases are resolved on every call; only the content is cached. ``runs:/`` and ``models:/``
need a tracking URI that was set (``MLFLOW_TRACKING_URI``): MLflow's default would create an empty
``./mlflow.db``.

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

from .cache import default_cache_dir, record_use
from ..errors import ConfigError, MissingDependency, ModelLoadError, ModelUnavailable, require, unreachable

__all__ = ["resolve", "default_cache_dir", "cache_key", "registry_version"]

_MODEL_ID = re.compile(r"^m-[0-9a-f]{32}$")
_TRACKED = ("runs:/", "models:/")
# the package each artifact store's MLflow client needs, for "pip install" hints
_CLIENTS = {"s3": "boto3", "r2": "boto3", "b2": "boto3", "gs": "google-cloud-storage",
            "wasbs": "azure-storage-blob azure-identity", "abfss": "azure-storage-file-datalake azure-identity",
            "sftp": "pysftp"}


def _safe(key: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:80]
    return f"{clean}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _check_path(uri: str, body: str) -> None:
    if ".." in unquote(body).split("/"):
        raise ConfigError(f"model URI {uri!r} has '..' in its artifact path; name the model's folder inside the run "
                          "or registry without '..'")


def _check_tracking(uri: str) -> None:
    from mlflow.tracking import is_tracking_uri_set

    if not is_tracking_uri_set():
        raise ConfigError(f"the model URI {uri!r} needs an MLflow tracking store and none is set (MLflow would "
                          "create an empty ./mlflow.db here); export MLFLOW_TRACKING_URI=http://<server>:5000 "
                          "(or sqlite:////path/to/mlflow.db) where the model was logged")


def _check_web(uri: str) -> None:
    if urlparse(uri).scheme in ("http", "https") and "/mlflow-artifacts/artifacts" not in uri:
        raise ConfigError(f"{uri!r} is a web address, not a model URI: MLflow downloads over http(s) only from an "
                          "artifact server path (.../api/2.0/mlflow-artifacts/artifacts/...); pass runs:/ or "
                          "models:/ with MLFLOW_TRACKING_URI set to the server, or download the model folder and "
                          "pass its path")


def _client(mlflow, uri: str):
    """``MlflowClient()``, or a ConfigError when this MLflow cannot open the tracking store named."""
    try:
        return mlflow.MlflowClient()
    except mlflow.exceptions.MlflowException as exc:
        if "unsupported URI" not in str(exc):
            raise
        tracking = mlflow.get_tracking_uri()
        raise ConfigError(f"the model URI {uri!r} needs the registry at {tracking!r}, which the installed MLflow "
                          "cannot open (mlflow-skinny has no SQL store): pip install mlflow, or reach the registry "
                          "through a tracking server (MLFLOW_TRACKING_URI=http://...)") from None


def _fetch(mlflow, uri: str, dst: Path, what: str) -> Path:
    """``mlflow.artifacts.download_artifacts`` with every failure as one EngineError line."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except mlflow.exceptions.MlflowException as exc:
        if unreachable(exc):
            raise ModelUnavailable(f"cannot download {what} {uri!r}: the store did not answer ({exc.message}); "
                                   "check the network and the store's address, or retry later") from exc
        raise ModelLoadError(f"cannot download {what} {uri!r}: {exc.message}") from exc
    except ImportError as exc:  # the artifact store's client (boto3, google-cloud-storage, ...) is missing
        scheme, package = urlparse(uri).scheme, (exc.name or "").split(".")[0]
        raise MissingDependency(f"the model URI {uri!r} needs the Python package {package!r}, which is not "
                                f"installed; pip install {_CLIENTS.get(scheme, package)}") from exc
    except Exception as exc:  # the store's own client failed (network, credentials, a path it cannot parse)
        if unreachable(exc):
            raise ModelUnavailable(f"cannot download {what} {uri!r}: the store did not answer ({type(exc).__name__}: "
                                   f"{exc}); check the network and the store's address, or retry later") from exc
        raise ModelLoadError(f"cannot download {what} {uri!r}: {type(exc).__name__}: {exc}; check the URI, the "
                             "network and the store's credentials") from exc


def _content_digest(mlflow, client, version) -> str:
    """What changes when a registered version's content does: its source, run and MLmodel file."""
    location = client.get_model_version_download_uri(version.name, version.version)
    with tempfile.TemporaryDirectory() as tmp:
        mlmodel = _fetch(mlflow, location.rstrip("/") + "/MLmodel", Path(tmp), "the MLmodel file of").read_bytes()
    text = f"{version.source}\n{version.run_id}\n".encode() + mlmodel
    return hashlib.sha256(text).hexdigest()[:16]


def registry_version(uri: str):
    """The registry's ModelVersion a ``models:/name/version`` or ``models:/name@alias`` URI names now
    (None for any other URI, ``models:/m-<id>`` included)."""
    if not uri.startswith("models:/"):
        return None
    mlflow = require("mlflow", "mlflow", f"the model URI {uri!r}")
    body = uri[len("models:/"):].strip("/")
    _check_path(uri, body)
    if _MODEL_ID.match(body):
        return None
    _check_tracking(uri)
    client = _client(mlflow, uri)
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        parts = body.split("/")
        if len(parts) != 2:
            raise ConfigError(f"model URI {uri!r} is not models:/<name>/<version>, models:/<name>@<alias> "
                              "or models:/m-<id>")
        name, ver = parts
        if ver.isdigit():
            return client.get_model_version(name, ver)
        stages = None if ver.lower() == "latest" else [ver]  # 'latest' or a (deprecated) stage
        found = client.get_latest_versions(name, stages)
        if not found:
            raise ModelLoadError(f"registered model {name!r} has no version for {ver!r}")
        return max(found, key=lambda v: int(v.version))
    except mlflow.exceptions.MlflowException as exc:
        if unreachable(exc):
            raise ModelUnavailable(f"cannot resolve {uri!r}: the model registry did not answer ({exc.message}); "
                                   "check MLFLOW_TRACKING_URI and the network, or retry later") from exc
        raise ModelLoadError(f"cannot resolve {uri!r} in the model registry: {exc.message}") from exc


def cache_key(uri: str) -> tuple[str, str]:
    """(content key, URI to download) for a remote model URI; resolves aliases and versions."""
    mlflow = require("mlflow", "mlflow", f"the model URI {uri!r}")
    if uri.startswith("runs:/"):
        _check_path(uri, uri[len("runs:/"):])
        return uri[len("runs:/"):].strip("/"), uri
    if uri.startswith("models:/"):
        version = registry_version(uri)
        if version is None:  # models:/m-<id>
            return uri[len("models:/"):].strip("/"), uri
        model_id = getattr(version, "model_id", None)
        if model_id:  # a logged model's id names one content for good
            return model_id, f"models:/{model_id}"
        # name/version alone comes back after the model is deleted and another registered under its name
        client = mlflow.MlflowClient()
        key = f"{version.name}/{version.version}/{_content_digest(mlflow, client, version)}"
        return key, f"models:/{version.name}/{version.version}"
    _check_web(uri)
    return uri, uri


def _download(uri: str, key: str, cache_dir: Path, given: str) -> Path:
    """The cache entry for ``key``, downloaded from ``uri`` unless it is there (``given``: the URI the user named)."""
    mlflow = require("mlflow", "mlflow", f"the model URI {uri!r}")
    target = cache_dir / _safe(key)
    if (target / "MLmodel").is_file():
        record_use(target, given, key)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        local = _fetch(mlflow, uri, staging, "model")
        if not (local / "MLmodel").is_file():
            raise ModelLoadError(f"{uri!r} downloaded, but it holds no MLmodel file; point at the model's folder")
        try:
            os.rename(local, target)  # atomic: a concurrent worker either wins or finds ours
        except OSError:
            if not (target / "MLmodel").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record_use(target, given, key)
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
    if text.startswith(_TRACKED):
        _check_tracking(text)
    return _download(download_uri, key, Path(cache_dir) if cache_dir else default_cache_dir(), text)
