"""engine.model.uris: model URIs -> a local directory; downloads land in a cache keyed by content.

Local paths and file:// URIs need nothing else. runs:/ and models:/ URIs use the session's real MLflow
tracking store (``mlflow_store``), with a tiny model folder logged here as plain artifacts: resolving
never reads the model, so no library has to train or pickle one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import engine

from engine.errors import ConfigError, ModelLoadError
from engine.model import uris
from without import run_without

MODEL_ID = "m-" + "0123456789abcdef" * 2
# models:/<name>/latest goes through MlflowClient.get_latest_versions, which MLflow has deprecated
LATEST_IS_DEPRECATED = pytest.mark.filterwarnings("ignore:.*get_latest_versions.*:FutureWarning")


@pytest.fixture
def model_dir(tmp_path) -> Path:
    path = tmp_path / "my model #1"
    path.mkdir()
    (path / "MLmodel").write_text("flavors: {}\n")
    return path


def test_local_paths_are_used_in_place(model_dir, tmp_path):
    cache = tmp_path / "cache"
    assert uris.resolve(str(model_dir), cache) == model_dir
    assert uris.resolve(model_dir, cache) == model_dir  # os.PathLike too
    assert not cache.exists()  # nothing copied


@pytest.mark.parametrize("form", ["file://{}", "file:{}", "file://localhost{}"])
def test_file_uris_are_percent_decoded(model_dir, form):
    encoded = str(model_dir).replace(" ", "%20").replace("#", "%23")
    assert uris.resolve(form.format(encoded)) == model_dir
    assert uris.resolve(model_dir.as_uri()) == model_dir


def test_plain_paths_are_not_percent_decoded(model_dir):
    text = str(model_dir).replace(" ", "%20")
    with pytest.raises(ModelLoadError, match="does not exist"):
        uris.resolve(text)


def test_home_is_expanded(monkeypatch, tmp_path, model_dir):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert uris.resolve(f"~/{model_dir.name}") == model_dir
    assert uris.default_cache_dir() == tmp_path / ".cache" / "arrowscore" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the platform's place for caches, when set
    assert uris.default_cache_dir() == tmp_path / "xdg" / "arrowscore" / "models"


@pytest.mark.parametrize("uri, shown", [("/no/such/model", "/no/such/model"),
                                        ("file:///no/such/my%20model", "/no/such/my model")])
def test_missing_path_says_what_to_do(uri, shown):
    with pytest.raises(ModelLoadError, match=f"model path '{shown}' does not exist; check the path or pass a "
                                             r"runs:/ or models:/ URI"):
        uris.resolve(uri)


def test_empty_uri():
    with pytest.raises(ConfigError, match=r"the model URI is empty; pass a path, file://, runs:/ or models:/ URI"):
        uris.resolve("")


def test_a_bare_model_id_is_refused_unless_it_is_a_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"'{MODEL_ID}' looks like a model id; write it as 'models:/{MODEL_ID}'"):
        uris.resolve(MODEL_ID)
    (tmp_path / MODEL_ID).mkdir()
    assert uris.resolve(MODEL_ID) == Path(MODEL_ID)


@pytest.mark.parametrize("uri, key", [
    ("runs:/abc123/model", "abc123/model"),
    ("runs:/abc123/sub/model/", "abc123/sub/model"),
    (f"models:/{MODEL_ID}", MODEL_ID),  # a model id needs no registry look-up
    ("s3://bucket/models/m1", "s3://bucket/models/m1"),
])
def test_cache_key_without_the_registry(uri, key):
    assert uris.cache_key(uri) == (key, uri)


# ---- runs:/ and models:/ through the session's MLflow store -----------------------------------------
@pytest.fixture(scope="module")
def tiny(mlflow_store, tmp_path_factory):
    """A run holding 'model' (an MLmodel file) and 'notamodel' (no MLmodel at its top), registered twice
    as 'uris_tiny' (versions 1 and 2, alias 'champion' on 1)."""
    import mlflow

    src = tmp_path_factory.mktemp("tiny")
    (src / "MLmodel").write_text("flavors: {}\n")
    old = os.getcwd()
    os.chdir(mlflow_store)  # as conftest does: artifacts land next to the sqlite store
    try:
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(src), "model")
            mlflow.log_artifact(str(src / "MLmodel"), "notamodel/deeper")
        for _ in range(2):
            mlflow.register_model(f"runs:/{run.info.run_id}/model", "uris_tiny")
        mlflow.MlflowClient().set_registered_model_alias("uris_tiny", "champion", "1")
    finally:
        os.chdir(old)
    return run.info.run_id


def test_runs_uri_downloads_into_the_cache(tiny, tmp_path):
    path = uris.resolve(f"runs:/{tiny}/model", tmp_path)
    assert path.parent == tmp_path and path.name.startswith(f"{tiny}_model-")
    assert (path / "MLmodel").read_text() == "flavors: {}\n"


def test_a_second_resolve_reuses_the_cache(tiny, tmp_path, monkeypatch):
    import mlflow

    first = uris.resolve(f"runs:/{tiny}/model", tmp_path)

    def no_download(**kwargs):
        raise AssertionError(f"downloaded again: {kwargs}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    assert uris.resolve(f"runs:/{tiny}/model", tmp_path) == first
    assert uris.resolve(f"runs:/{tiny}/model/", tmp_path) == first  # same content key
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, first.name + ".json"]  # the entry, its record


@LATEST_IS_DEPRECATED
def test_version_and_alias_share_a_cache_entry_and_aliases_follow_moves(tiny, tmp_path):
    import mlflow

    alias_key, alias_uri = uris.cache_key("models:/uris_tiny@champion")
    assert alias_key.startswith("uris_tiny/1/") and alias_uri == "models:/uris_tiny/1"
    assert (alias_key, alias_uri) == uris.cache_key("models:/uris_tiny/1")
    latest_key, latest_uri = uris.cache_key("models:/uris_tiny/latest")
    assert latest_key.startswith("uris_tiny/2/") and latest_uri == "models:/uris_tiny/2"
    v1 = uris.resolve("models:/uris_tiny/1", tmp_path)
    assert uris.resolve("models:/uris_tiny@champion", tmp_path) == v1
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("uris_tiny", "champion", "2")
    try:
        v2 = uris.resolve("models:/uris_tiny@champion", tmp_path)
    finally:
        client.set_registered_model_alias("uris_tiny", "champion", "1")
    assert v2 != v1 and v2 == uris.resolve("models:/uris_tiny/2", tmp_path)


@LATEST_IS_DEPRECATED
@pytest.mark.parametrize("uri, error, message", [
    ("models:/uris_tiny", ConfigError, r"is not models:/<name>/<version>, models:/<name>@<alias> or models:/m-<id>"),
    ("models:/a/b/c", ConfigError, r"'models:/a/b/c' is not models:/<name>/<version>"),
    ("models:/no_such_model/1", ModelLoadError, r"cannot resolve 'models:/no_such_model/1' in the model registry"),
    ("models:/uris_tiny@nobody", ModelLoadError, r"cannot resolve 'models:/uris_tiny@nobody' in the model registry"),
    ("models:/uris_tiny/Production", ModelLoadError, r"registered model 'uris_tiny' has no version for 'Production'"),
])
def test_registry_errors(tiny, uri, error, message):
    with pytest.raises(error, match=message):
        uris.resolve(uri)


def test_download_errors_leave_no_staging_folder(tiny, tmp_path):
    with pytest.raises(ModelLoadError, match=r"cannot download model 'runs:/0{32}/model': Run .* not found"):
        uris.resolve("runs:/" + "0" * 32 + "/model", tmp_path)
    with pytest.raises(ModelLoadError, match=r"downloaded, but it holds no MLmodel file; point at the model's folder"):
        uris.resolve(f"runs:/{tiny}/notamodel", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no .download-* left, nothing cached


@pytest.mark.parametrize("path", ["../../..", "model/../../..", "model/%2E%2E/x"])
def test_dotdot_in_an_artifact_path_is_refused(tiny, tmp_path, path):
    with pytest.raises(ConfigError, match=r"has '\.\.' in its artifact path; name the model's folder inside the run"):
        uris.resolve(f"runs:/{tiny}/{path}", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded


# ---- the CLI, in a fresh interpreter: what a user meets ---------------------------------------------
def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def _one_line_exit_2(out) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("arrowscore: ")]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("uri", ["models:/fraud@champion", "runs:/0123456789abcdef/model"])
def test_registry_uris_without_a_tracking_uri_are_refused(tmp_path, uri):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    line = _one_line_exit_2(_cli("info", uri, "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path, env=env))
    assert f"ConfigError: the model URI '{uri}' needs an MLflow tracking store and none is set" in line
    assert "export MLFLOW_TRACKING_URI=" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no ./mlflow.db, no ./mlruns, no cache


def test_a_uri_whose_client_is_not_installed_is_one_line(tmp_path):
    code = ("from engine.cli import main\n"
            f"raise SystemExit(main(['info', 's3://bucket/models/m1', '--cache-dir', {str(tmp_path)!r}]))\n")
    line = _one_line_exit_2(run_without(["boto3", "botocore"], code))
    assert "MissingDependency: the model URI 's3://bucket/models/m1' needs the Python package" in line
    assert line.endswith("pip install boto3")


def test_a_plain_http_uri_is_one_line(tmp_path):
    line = _one_line_exit_2(_cli("info", "http://127.0.0.1:9/models/m1", "--cache-dir", str(tmp_path), cwd=tmp_path))
    assert ("ConfigError: 'http://127.0.0.1:9/models/m1' is a web address, not a model URI: MLflow downloads "
            "over http(s) only from an artifact server path") in line


@pytest.fixture
def fresh_store(tmp_path):
    """A new sqlite tracking store in tmp_path with its own client (the session's store stays set)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("swap", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment


def _register_v1(client, experiment, model: Path, name: str) -> str:
    """Log ``model`` as a run's artifacts, register it as ``name`` (it gets version 1) and point 'live' at it."""
    run = client.create_run(experiment).info.run_id
    client.log_artifacts(run, str(model), "model")
    client.set_terminated(run)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run}/model", run)
    assert str(version.version) == "1" and version.model_id is None  # the name/version fallback of the cache key
    client.set_registered_model_alias(name, "live", version.version)
    return run


def test_a_new_model_registered_under_an_old_name_and_version_is_not_served_from_the_cache(fresh_store, tmp_path):
    uri, client, experiment = fresh_store
    old = engine.save_model(tmp_path / "old", lambda df: df["old"], signature=pa.schema([("old", pa.float64())]))
    new = engine.save_model(tmp_path / "new", lambda df: df["new"], signature=pa.schema([("new", pa.float64())]))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cache = str(tmp_path / "cache")

    def inputs():
        out = _cli("info", "models:/swap@live", "--cache-dir", cache, "--json", cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["inputs"]

    _register_v1(client, experiment, old, "swap")
    assert inputs() == ["old: double"]
    client.delete_registered_model("swap")
    _register_v1(client, experiment, new, "swap")
    assert inputs() == ["new: double"]
