"""Deployment: the generated build context (hadolint, contents), the image's exact entrypoint under the
SageMaker and Vertex AI contracts, the model's own environment (--env-manager uv), and the builders."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from compare import columns_of_expected

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def arrowscore(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _wait_ping(proc, port, path="/ping", timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if _call(port, "GET", path)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no 200 on {path} within {timeout_s} s"
        time.sleep(0.1)


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def generate(uri, tmp_path, *flags) -> Path:
    out = tmp_path / "context"
    done = arrowscore("generate-dockerfile", uri, "-d", out, *flags)
    assert done.returncode == 0, done.stderr
    return out


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def entrypoint(dockerfile: Path) -> tuple[list[str], dict[str, str]]:
    """The argv `docker run IMAGE` starts (ENTRYPOINT + CMD) and the image's ENV."""
    steps = instructions(dockerfile)
    argv = [*json.loads(dict(steps)["ENTRYPOINT"]), *json.loads(dict(steps)["CMD"])]
    env = {}
    for word, rest in steps:
        if word == "ENV":
            for pair in rest.split(" "):
                key, _, value = pair.partition("=")
                env[key] = value
    return argv, env


def hadolint(dockerfile: Path) -> list[dict]:
    done = subprocess.run([str(HADOLINT), "-f", "json", "--no-fail", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# ---- the build context ---------------------------------------------------------------------------
def test_hadolint_finds_problems_in_a_careless_dockerfile(tmp_path):
    """The check below can fail: hadolint flags an untagged base and unpinned pip installs."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\nCMD python app.py\n")
    codes = {f["code"] for f in hadolint(bad) if f["level"] in ("warning", "error")}
    assert {"DL3006", "DL3013"} <= codes, codes


@pytest.mark.parametrize("key", ["sklearn_skops", "onnx", "pyfunc_custom"])
def test_generated_dockerfile_passes_hadolint(key, logged_models, tmp_path):
    context = generate(logged_models[key].uris["path"], tmp_path)
    above_info = [f for f in hadolint(context / "Dockerfile") if f["level"] not in ("info", "style")]
    assert above_info == [], above_info


def test_context_holds_the_model_the_wheel_and_a_small_secure_image(logged_models, tmp_path):
    case = logged_models["sklearn_skops"]
    context = generate(case.uris["path"], tmp_path)
    steps = instructions(context / "Dockerfile")
    args = dict(steps)
    python = ".".join(map(str, sys.version_info[:2]))  # the tests log models with this Python
    assert args["ARG"] == f"BASE_IMAGE=python:{python}-slim" and args["FROM"] == "${BASE_IMAGE}"
    assert args["USER"] == "10001" and args["EXPOSE"] == "8080"
    assert args["HEALTHCHECK"].endswith('CMD ["arrowscore", "ping"]')
    assert entrypoint(context / "Dockerfile")[0] == ["arrowscore", "serve"]  # SageMaker's `serve` argument too
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in args["LABEL"]
    assert [w for w, _ in steps].index("USER") > [w for w, _ in steps].index("RUN")  # installs as root, runs as not
    assert not any("apt-get" in rest or "openjdk" in rest.lower() for _, rest in steps)
    assert sorted(p.name for p in (context / "model").iterdir()) == sorted(p.name for p in Path(case.uris["path"]).iterdir())
    assert [p.name for p in (context / "wheels").iterdir()] == ["arrowscore-0.1.0-py3-none-any.whl"]
    reqs = (context / "requirements.txt").read_text().splitlines()
    ours = next(r for r in reqs if r.startswith("arrowscore["))
    assert ours.startswith("arrowscore[sklearn,pandas,serve,run] @ file:///opt/arrowscore/wheels/"), ours
    installed = [r for r in reqs if r and not r.startswith("#")]
    assert not any(r.split("=")[0].strip() in ("mlflow", "mlflow-skinny", "onnxruntime", "xgboost", "lightgbm",
                                               "pyspark", "ray") for r in installed), installed
    from importlib import metadata

    assert f"scikit-learn=={metadata.version('scikit-learn')}" in installed  # pinned to what runs here


def test_python_function_models_get_mlflow_skinny_and_extra_packages(logged_models, tmp_path):
    context = generate(logged_models["pyfunc_custom"].uris["path"], tmp_path, "--pip-package", "humanize==4.17.0",
                       "--port", "9000", "--base-image", "registry.example.com/py:3.11")
    reqs = (context / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("arrowscore[mlflow,pandas,serve,run] @ ") for r in reqs), reqs
    assert "mlflow-skinny" in reqs and "mlflow" not in reqs and "humanize==4.17.0" in reqs
    args = dict(instructions(context / "Dockerfile"))
    assert args["ARG"] == "BASE_IMAGE=registry.example.com/py:3.11" and args["EXPOSE"] == "9000"
    assert entrypoint(context / "Dockerfile")[1]["ARROWSCORE_PORT"] == "9000"


def test_model_requirements_constrain_pins_versions_without_installing_more(tmp_path):
    import mlflow
    from sklearn.linear_model import LinearRegression

    path = tmp_path / "model"
    mlflow.sklearn.save_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0]), path, serialization_format="pickle",
                              pip_requirements=["mlflow==3.17.2", "scikit-learn==1.5.2", "pytest==8.0.0",
                                                "pandas[performance]==2.2.0"])
    context = generate(path, tmp_path, "--model-requirements", "constrain")
    reqs = (context / "requirements.txt").read_text().splitlines()
    installs = [r for r in reqs if r and not r.startswith(("#", "-c"))]
    assert "-c /opt/arrowscore/constraints.txt" in reqs
    assert not any(r.startswith(("pytest", "pandas", "scikit-learn", "mlflow")) for r in installs), installs
    constraints = (context / "constraints.txt").read_text().splitlines()[1:]
    assert constraints == ["scikit-learn==1.5.2", "pytest==8.0.0", "pandas==2.2.0"]  # pip refuses extras there
    assert "COPY requirements.txt constraints.txt /opt/arrowscore/" in (context / "Dockerfile").read_text()
    assert any(r.startswith("arrowscore[sklearn,pandas,") for r in reqs)  # a DataFrame-fitted model needs pandas
    assert [f for f in hadolint(context / "Dockerfile") if f["level"] not in ("info", "style")] == []


def test_generate_refuses_a_directory_with_files_and_a_bad_port(logged_models, tmp_path):
    uri = logged_models["onnx"].uris["path"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    done = arrowscore("generate-dockerfile", uri, "-d", tmp_path / "busy")
    assert done.returncode == 2 and "not an empty directory" in done.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    done = arrowscore("generate-dockerfile", uri, "-d", tmp_path / "new", "--port", "70000")
    assert done.returncode == 2 and "not a port number" in done.stderr and not (tmp_path / "new").exists()
    done = arrowscore("generate-dockerfile", tmp_path / "nothing-here", "-d", tmp_path / "new")
    assert done.returncode == 2 and "does not exist" in done.stderr and not (tmp_path / "new").exists()


def _sk_model(path, **save):
    import mlflow
    from sklearn.linear_model import LinearRegression

    mlflow.sklearn.save_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0]), path, serialization_format="pickle",
                              pip_requirements=save.pop("pip_requirements", ["mlflow"]), **save)
    return path


def test_values_that_would_change_the_dockerfile_are_refused_or_escaped(tmp_path):
    model = _sk_model(tmp_path / 'we ird"$HOME')
    context = generate(model, tmp_path)
    label = dict(instructions(context / "Dockerfile"))["LABEL"]
    assert f'io.arrowscore.model-uri="{tmp_path}/we ird\\"\\$HOME"' in label, label
    assert [f for f in hadolint(context / "Dockerfile") if f["level"] not in ("info", "style")] == []

    done = arrowscore("generate-dockerfile", model, "-d", tmp_path / "b", "--base-image", "python:3.11\nRUN id")
    assert done.returncode == 2 and "not an image reference" in done.stderr
    for bad in ("not a req!!", "-e .", "--index-url=http://example.com"):
        done = arrowscore("generate-dockerfile", model, "-d", tmp_path / "b", f"--pip-package={bad}")
        assert done.returncode == 2 and "is not a requirement" in done.stderr, (bad, done.stderr)
    (model / "python_env.yaml").write_text('python: "3.11\\nRUN echo pwned"\n')
    done = arrowscore("generate-dockerfile", model, "-d", tmp_path / "b")
    assert done.returncode == 2 and "is not a Python version" in done.stderr
    (model / "python_env.yaml").write_text("python: 3.8.18\n")
    done = arrowscore("generate-dockerfile", model, "-d", tmp_path / "b")
    assert done.returncode == 2 and "arrowscore needs Python 3.10 or newer" in done.stderr
    assert not (tmp_path / "b").exists()


def test_model_pins_are_checked_and_requirement_files_go_along(tmp_path):
    model = _sk_model(tmp_path / "m", pip_requirements=["mlflow", "pyarrow==15.0.0"])
    done = arrowscore("generate-dockerfile", model, "-d", tmp_path / "a")
    assert done.returncode == 2 and "the model pins 'pyarrow==15.0.0', but arrowscore needs pyarrow>=" in done.stderr
    (model / "requirements.txt").write_text("mlflow\n-r extra.txt\n")
    (model / "extra.txt").write_text("humanize==4.17.0\n")
    context = generate(model, tmp_path)
    assert "-r /opt/arrowscore/requirements.d/0-extra.txt" in (context / "requirements.txt").read_text()
    assert (context / "requirements.d" / "0-extra.txt").read_text() == "humanize==4.17.0\n"
    assert "COPY requirements.d/ /opt/arrowscore/requirements.d/" in (context / "Dockerfile").read_text()
    (model / "requirements.txt").write_text("-r ../elsewhere.txt\n")
    done = arrowscore("generate-dockerfile", model, "-d", tmp_path / "c")
    assert done.returncode == 2 and "not a file in the model's directory" in done.stderr
    done = arrowscore("generate-dockerfile", model, "-d", model / "ctx")
    assert done.returncode == 2 and "inside the model's directory" in done.stderr and not (model / "ctx").exists()


def test_ping_says_why_it_fails_and_never_exits_2(tmp_path):
    port = _free_port()
    done = arrowscore("ping", "--timeout-s", "1", env={"ARROWSCORE_PORT": str(port)})
    assert done.returncode == 1 and f"no answer from http://127.0.0.1:{port}/ping" in done.stderr
    done = arrowscore("ping", env={"AIP_HTTP_PORT": "99999"})
    assert done.returncode == 1 and "AIP_HTTP_PORT='99999' is not a port number" in done.stderr
    done = arrowscore("ping", "--timeout-s", "-5")
    assert done.returncode == 1 and "--timeout-s must be above 0" in done.stderr


def test_the_wheel_is_the_running_code_and_the_same_bytes_each_time(tmp_path):
    import zipfile

    from engine.deploy.wheel import build_wheel

    first, second = build_wheel(tmp_path / "a"), build_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    for package in ("engine", "flavors", "connectors"):
        ours = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert ours <= set(names), ours - set(names)
    meta = zipfile.ZipFile(first).read("arrowscore-0.1.0.dist-info/METADATA").decode()
    assert "Name: arrowscore" in meta and 'extra == "serve"' in meta


# ---- the image's entrypoint, outside a container -------------------------------------------------
def _run_entrypoint(context: Path, tmp_path: Path, platform_env: dict, ping_path: str):
    """Start ENTRYPOINT + CMD exactly as the image would, with the image's ENV and the platform's, the
    model copied to a directory standing in for /opt/ml/model."""
    argv, image_env = entrypoint(context / "Dockerfile")
    stand_in = tmp_path / "opt-ml-model"
    shutil.copytree(context / "model", stand_in)
    env = {**ENV, **{k: v for k, v in image_env.items() if k != "PATH"}, **platform_env,
           "ARROWSCORE_MODEL": str(stand_in), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("SAGEMAKER_BIND_TO_PORT", "AIP_HTTP_PORT", "AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE", "AIP_STORAGE_URI"):
        if key not in platform_env:
            env.pop(key, None)
    assert shutil.which(argv[0], path=env["PATH"]) == str(BIN / "arrowscore")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = int(platform_env.get("SAGEMAKER_BIND_TO_PORT") or platform_env["AIP_HTTP_PORT"])
    _wait_ping(proc, port, ping_path)
    return proc, port, env


def _same(got, expected, what):
    (want,) = columns_of_expected(expected).values()
    np.testing.assert_allclose(np.asarray(got, dtype=float).ravel(), np.asarray(want, dtype=float).ravel(),
                               rtol=1e-6, err_msg=what)


def test_entrypoint_meets_the_sagemaker_contract(logged_models, tmp_path):
    case = logged_models["sklearn_skops"]
    context = generate(case.uris["path"], tmp_path)
    port = _free_port()
    proc, port, env = _run_entrypoint(context, tmp_path, {"SAGEMAKER_BIND_TO_PORT": str(port)}, "/ping")
    try:
        status, body = _call(port, "GET", "/ping")
        assert status == 200
        frame = case.mlflow_input
        csv = frame.to_csv(index=False).encode()
        status, body = _call(port, "POST", "/invocations", csv, {"Content-Type": "text/csv"})
        assert status == 200, body
        _same(json.loads(body)["predictions"], case.expected, "sagemaker csv")
        split = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
        status, body = _call(port, "POST", "/invocations", split, {"Content-Type": "application/json"})
        _same(json.loads(body)["predictions"], case.expected, "sagemaker json")
        # the image's HEALTHCHECK command, with the image's environment
        health = subprocess.run([str(BIN / "arrowscore"), "ping"], env=env, capture_output=True, text=True)
        assert health.returncode == 0, health.stderr
    finally:
        _stop(proc)
    assert proc.returncode == 0, proc.stdout.read()  # SIGTERM drains and exits cleanly (SageMaker stops with it)
    health = subprocess.run([str(BIN / "arrowscore"), "ping", "--timeout-s", "1"], env=env, capture_output=True)
    assert health.returncode == 1


def test_entrypoint_meets_the_vertex_contract(logged_models, tmp_path):
    case = logged_models["onnx"]
    context = generate(case.uris["path"], tmp_path)
    port = _free_port()
    vertex = {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/v1/endpoints/7/deployedModels/8",
              "AIP_PREDICT_ROUTE": "/v1/endpoints/7/deployedModels/8:predict"}
    proc, port, _ = _run_entrypoint(context, tmp_path, vertex, vertex["AIP_HEALTH_ROUTE"])
    try:
        doc = {"instances": case.mlflow_input.tolist(), "parameters": {}}
        status, body = _call(port, "POST", vertex["AIP_PREDICT_ROUTE"], json.dumps(doc).encode(),
                             {"Content-Type": "application/json"})
        assert status == 200, body
        answer = json.loads(body)
        assert list(answer) == ["predictions"]
        _same(answer["predictions"], case.expected, "vertex")
    finally:
        _stop(proc)


def test_platform_reads_arrowscore_port_host_and_the_baked_model(monkeypatch, tmp_path):
    import engine.server as server
    import engine.server.contracts as contracts

    baked = tmp_path / "opt-ml-model"
    baked.mkdir()
    monkeypatch.setattr(contracts, "SAGEMAKER_MODEL", str(baked))
    # docker run IMAGE: the image's model, on 0.0.0.0, at ARROWSCORE_PORT when the image set one
    assert server.platform({"ARROWSCORE_PORT": "9000"}) == server.Platform("sagemaker", "0.0.0.0", 9000,
                                                                           server.Routes(), str(baked))
    assert server.platform({"SAGEMAKER_BIND_TO_PORT": "8123", "ARROWSCORE_PORT": "9000"}).port == 8123
    vertex = server.platform({"AIP_HTTP_PORT": "8081"})
    assert (vertex.name, vertex.port, vertex.model) == ("vertex", 8081, str(baked))
    # docker run -e ARROWSCORE_MODEL=models:/x@prod IMAGE: that model, still on the image's host
    other = server.platform({"ARROWSCORE_MODEL": "models:/x@prod", "ARROWSCORE_HOST": "0.0.0.0"})
    assert (other.name, other.host, other.port, other.model) == ("local", "0.0.0.0", 8080, "models:/x@prod")
    with pytest.raises(Exception, match="ARROWSCORE_PORT='http' is not a port number"):
        server.platform({"ARROWSCORE_PORT": "http"})


# ---- builders ------------------------------------------------------------------------------------
def test_build_docker_names_the_builders_when_none_is_there(logged_models, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = arrowscore("build-docker", logged_models["onnx"].uris["path"], "-t", "Scorer:1", env={"PATH": str(empty)})
    assert done.returncode == 2 and "image name 'Scorer:1' is not valid" in done.stderr
    done = arrowscore("build-docker", logged_models["onnx"].uris["path"], "-t", "scorer:1", env={"PATH": str(empty)})
    assert done.returncode == 2, done.stderr
    for name in ("docker", "podman", "buildah"):
        assert f"{name}: not installed" in done.stderr
    assert "arrowscore generate-dockerfile" in done.stderr


def test_build_command_keeps_the_healthcheck_with_podman_and_buildah(tmp_path):
    from engine.deploy.builder import build_command

    assert build_command("buildah", "/b", tmp_path, "x:1", {"BASE_IMAGE": "b:1"}) == [
        "/b", "bud", "--format", "docker", "-t", "x:1", "--build-arg", "BASE_IMAGE=b:1", str(tmp_path)]
    assert build_command("podman", "/p", tmp_path, "x:1", {})[:4] == ["/p", "build", "--format", "docker"]
    assert build_command("docker", "/d", tmp_path, "x:1", {}) == ["/d", "build", "-t", "x:1", str(tmp_path)]


# ---- the model's own environment -----------------------------------------------------------------
MODEL_CODE = '''
import mlflow
from mlflow.models import set_model


class Spelled(mlflow.pyfunc.PythonModel):
    """A prediction only humanize==4.17.0 gives: the length of the number written with commas."""

    def predict(self, context, model_input, params=None):
        import humanize  # here, not at the top: MLflow runs this file when it saves the model

        return [float(len(humanize.intcomma(int(v)))) for v in model_input["x"] * 1000]


set_model(Spelled())
'''


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory):
    """A models-from-code pyfunc whose code imports a package this environment lacks."""
    import mlflow
    from mlflow.models import infer_signature

    if importlib.util.find_spec("humanize") is not None:
        pytest.fail("humanize is installed here, so this test cannot show --env-manager uv installing it; "
                    "uninstall it from the test environment")
    root = tmp_path_factory.mktemp("foreign")
    code = root / "spelled.py"
    code.write_text(textwrap.dedent(MODEL_CODE))
    frame = pd.DataFrame({"x": [1.5, 12.25, 1234.5, 98765.4321, 3.0]})
    path = root / "model"
    mlflow.pyfunc.save_model(path, python_model=str(code), pip_requirements=["mlflow", "humanize==4.17.0"],
                             signature=infer_signature(frame, [1.0] * len(frame)))
    # the pin through a -r line, a form MLflow's requirements.txt may hold: the file goes along
    (path / "requirements.txt").write_text("mlflow\n-r extra-requirements.txt\n")
    (path / "extra-requirements.txt").write_text("humanize==4.17.0\n")
    return path, frame


def test_env_manager_uv_predicts_what_mlflow_predicts_in_the_models_environment(foreign_model, tmp_path):
    path, frame = foreign_model
    cache = tmp_path / "cache"
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}))

    local = arrowscore("predict", path, "-i", data, "--cache-dir", cache)
    assert local.returncode == 1 and "No module named 'humanize'" in local.stderr, local.stderr  # not here

    done = arrowscore("predict", path, "-i", data, "-o", tmp_path / "out.json", "--env-manager", "uv",
                      "--cache-dir", cache)
    assert done.returncode == 0, done.stderr
    assert "creating the model's environment" in done.stderr
    ours = json.loads((tmp_path / "out.json").read_text())["predictions"]

    made = arrowscore("env", path, "--cache-dir", cache, "--python")
    assert made.returncode == 0, made.stderr
    python = made.stdout.strip()
    assert Path(python).is_relative_to(cache / "envs") and "creating" not in made.stderr  # made once, found again
    mlflow_says = subprocess.run(
        [python, "-c", "import json, sys, mlflow.pyfunc, pandas as pd; "
                       "doc = json.loads(sys.argv[2]); frame = pd.DataFrame(doc['data'], columns=doc['columns']); "
                       "print(json.dumps(list(mlflow.pyfunc.load_model(sys.argv[1]).predict(frame))))",
         str(path), json.dumps(json.loads(frame.to_json(orient="split", index=False)))],
        capture_output=True, text=True)
    assert mlflow_says.returncode == 0, mlflow_says.stderr
    expected = json.loads(mlflow_says.stdout.strip().splitlines()[-1])
    assert ours == expected and expected == [5.0, 6.0, 9.0, 10.0, 5.0]

    # score (Parquet) through the same environment, made once
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet")
    done = arrowscore("score", path, tmp_path / "in.parquet", tmp_path / "scored", "--env-manager", "uv",
                      "--cache-dir", cache)
    assert done.returncode == 0, done.stderr
    assert "creating" not in done.stderr
    assert pq.read_table(tmp_path / "scored").column("prediction").to_pylist() == expected
    assert len([p for p in (cache / "envs").iterdir() if p.is_dir()]) == 1


def test_env_manager_takes_a_registry_uri_and_an_abbreviated_flag(logged_models, mlflow_store, tmp_path):
    """The command run inside resolves models:/ again, so the environment of a native flavor holds
    MLflow too; --env-man (argparse's abbreviation) runs once, inside, instead of looping."""
    case = logged_models["sklearn_skops"]
    data = tmp_path / "in.json"
    data.write_text(json.dumps({"dataframe_split": json.loads(case.mlflow_input.to_json(orient="split", index=False))}))
    tracking = {"MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_store / 'mlflow.db'}"}
    cache = tmp_path / "cache"
    done = arrowscore("predict", case.uris["alias"], "-i", data, "--env-man", "uv", "--cache-dir", cache, env=tracking,
                      timeout=300)
    assert done.returncode == 0, done.stderr
    _same(json.loads(done.stdout)["predictions"], case.expected, "models:/ through uv")
    assert done.stderr.count("creating the model's environment") == 1
    assert len([p for p in (cache / "envs").iterdir() if p.is_dir()]) == 1

    # the environment is a cache entry: listed, and pruned with the models
    listed = arrowscore("cache", "list", "--cache-dir", cache)
    assert listed.returncode == 0 and "environment sklearn-" in listed.stdout, listed.stdout
    pruned = arrowscore("cache", "prune", "--all", "--cache-dir", cache)
    assert pruned.returncode == 0 and not [p for p in (cache / "envs").iterdir() if p.is_dir()], pruned.stdout


def test_serve_with_env_manager_uv(foreign_model, tmp_path):
    path, frame = foreign_model
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(path), "--port", str(port),
                             "--env-manager", "uv", "--cache-dir", str(tmp_path / "cache")],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ping(proc, port)
        body = json.dumps({"dataframe_records": frame.to_dict(orient="records")}).encode()
        status, out = _call(port, "POST", "/invocations", body, {"Content-Type": "application/json"})
        assert status == 200, out
        assert json.loads(out)["predictions"] == [5.0, 6.0, 9.0, 10.0, 5.0]
    finally:
        _stop(proc)
    assert proc.returncode == 0  # SIGTERM reached the server itself: the command was replaced, not wrapped


def test_env_manager_refuses_cluster_runners_and_several_models(foreign_model, tmp_path):
    path, _ = foreign_model
    done = arrowscore("score", path, tmp_path / "in.parquet", tmp_path / "out", "--runner", "ray",
                      "--env-manager", "uv")
    assert done.returncode == 2 and "cluster's environment" in done.stderr
    done = arrowscore("serve", f"a={path}", f"b={path}", "--env-manager", "uv")
    assert done.returncode == 2 and "one model" in done.stderr


# ---- a real image, built without a daemon and scored through ------------------------------------
TEST_BASE = "localhost/arrowscore-test-base:bookworm"


@pytest.fixture(scope="module")
def image_builder():
    """buildah + a local base image standing in for python:3.11-slim (no registry is reachable here):
    scripts/container-base.sh installs the tools from Debian and builds the base once."""
    from needs import STRICT

    done = subprocess.run(["bash", str(ROOT / "scripts" / "container-base.sh")], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        message = f"scripts/container-base.sh failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        if STRICT or done.returncode != 3:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return {**ENV, "BUILDAH_ISOLATION": "chroot"}


def test_an_image_built_by_buildah_serves_the_model(image_builder, logged_models, tmp_path):
    import signal

    case = logged_models["onnx"]
    tag = f"localhost/arrowscore-test-onnx:{os.getpid()}"
    done = subprocess.run([sys.executable, "-m", "engine", "build-docker", case.uris["path"], "-t", tag,
                           "--builder", "buildah", "--build-arg", f"BASE_IMAGE={TEST_BASE}"],
                          env=image_builder, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    container = None
    try:
        (image,) = json.loads(subprocess.run(["podman", "image", "inspect", tag], capture_output=True, text=True,
                                             check=True).stdout)
        config = image["Config"]
        assert config["User"] == "10001" and "8080/tcp" in config["ExposedPorts"]
        assert image["Healthcheck"]["Test"] == ["CMD", "arrowscore", "ping"]
        argv = [*config["Entrypoint"], *config["Cmd"]]
        assert argv == ["arrowscore", "serve"]
        container = subprocess.run(["buildah", "from", tag], capture_output=True, text=True, check=True,
                                   env=image_builder).stdout.strip()
        port = _free_port()
        run = ["buildah", "run", "--env", f"SAGEMAKER_BIND_TO_PORT={port}", container, "--"]
        proc = subprocess.Popen([*run, *argv], env=image_builder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            _wait_ping(proc, port)
            body = json.dumps({"inputs": case.mlflow_input.tolist()}).encode()
            status, out = _call(port, "POST", "/invocations", body, {"Content-Type": "application/json"})
            assert status == 200, out
            _same(json.loads(out)["predictions"], case.expected, "inside the image")
            health = subprocess.run([*run, *image["Healthcheck"]["Test"][1:]], env=image_builder,
                                    capture_output=True, text=True, timeout=60)
            assert health.returncode == 0, health.stdout + health.stderr
            user = subprocess.run(["buildah", "run", container, "--", "id", "-u"], env=image_builder,
                                  capture_output=True, text=True, check=True).stdout.strip()
            assert user == "10001"
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    finally:
        if container:
            subprocess.run(["buildah", "rm", container], capture_output=True, env=image_builder)
        subprocess.run(["buildah", "rmi", tag], capture_output=True, env=image_builder)
