"""Deployment benchmark: the image's Python environment and the entrypoint's cold start, arrowscore
against what `mlflow models generate-dockerfile` installs and starts, for the same scikit-learn model.

One scikit-learn model is saved by `mlflow.sklearn.save_model` with the requirements MLflow infers (as a
user gets them). Then, for each side, the packages its Dockerfile installs go into a fresh venv with
bytecode compiled (as pip does in both Dockerfiles), and its entrypoint is started with the model at a
stand-in for /opt/ml/model:
  arrowscore: `arrowscore generate-dockerfile` -> requirements.txt (arrowscore's wheel with the flavor's
      extras, the model's pins); entrypoint `arrowscore serve` with the image's ENV and SAGEMAKER_BIND_TO_PORT.
  MLflow: `mlflow models generate-dockerfile -m MODEL` -> `pip install mlflow==<version>` and the model's
      requirements.txt (its `_install_pyfunc_deps`); entrypoint `mlflow.models.container._serve('local')`
      with DISABLE_NGINX=true (uvicorn alone, which favours MLflow: its image also starts nginx).
Size: the venv's site-packages on disk (du), each measured alone. Cold start: process start -> first
200 on /ping, median of --rounds after one unmeasured start (files in the page cache, as on a node
that has pulled the image). Goals: size <= 1/3 of MLflow's, cold start <= 2 s.

    python benchmarks/bench_deploy.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UV = str(BIN / "uv") if (BIN / "uv").exists() else "uv"
MLFLOW_PORT = 8000  # mlflow.models.container serves uvicorn here (nginx would listen on 8080)

SAVE = """
import sys, numpy as np, mlflow
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
rng = np.random.default_rng(0)
X = rng.normal(size=(500, 8)); y = (X[:, 0] + X[:, 1] > 0).astype(int)
clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
mlflow.sklearn.save_model(clf, sys.argv[1], signature=infer_signature(X, clf.predict(X)))
"""


def _run(cmd, **kw) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def _venv(path: Path, requirements: list[str]) -> Path:
    _run([UV, "venv", "--quiet", "--python", sys.executable, str(path)])
    _run([UV, "pip", "install", "--quiet", "--compile-bytecode", "--python", str(path / "bin" / "python"),
          *requirements])
    return path


def _du(path: Path) -> int:
    return int(_run(["du", "-sk", str(path)]).split()[0]) * 1024


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def cold_start(argv: list[str], env: dict, port: int, timeout_s: float = 120) -> float:
    """Seconds from starting ``argv`` to the first 200 on /ping; the process group is stopped after."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        while not _ping(port):
            if proc.poll() is not None:
                raise SystemExit(f"{argv} exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
            if time.perf_counter() - start > timeout_s:
                raise SystemExit(f"{argv}: no 200 on /ping within {timeout_s} s")
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not _port_free(MLFLOW_PORT):
        raise SystemExit(f"port {MLFLOW_PORT} is taken; MLflow's container entrypoint always serves there")
    root = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        model = root / "model"
        _run([sys.executable, "-c", SAVE, str(model)])
        print("model requirements.txt (inferred by MLflow):", ", ".join((model / "requirements.txt").read_text().split()))

        def our_env(name: str, *flags: str) -> tuple[Path, Path]:
            ctx = root / name
            _run([sys.executable, "-m", "engine", "generate-dockerfile", str(model), "-d", str(ctx), *flags],
                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            reqs = (ctx / "requirements.txt").read_text().replace("file:///opt/arrowscore/wheels/",
                                                                  (ctx / "wheels").as_uri() + "/")
            (ctx / "requirements.local.txt").write_text(reqs.replace("/opt/arrowscore/", f"{ctx}/"))
            return ctx, _venv(root / f"env-{name}", ["-r", str(ctx / "requirements.local.txt")])

        ours_ctx, ours = our_env("ours")
        _, constrained = our_env("constrained", "--model-requirements", "constrain")

        mlflow_ctx = root / "mlflow"
        _run([str(BIN / "mlflow"), "models", "generate-dockerfile", "-m", str(model), "-d", str(mlflow_ctx)])
        dockerfile = (mlflow_ctx / "Dockerfile").read_text()
        installs = re.findall(r"pip install ([^&\n]+)", dockerfile)
        packages = [p for line in installs for p in line.split() if not p.startswith("-")]
        print("MLflow's Dockerfile installs:", packages, "+ the model's requirements.txt")
        theirs = _venv(root / "env-mlflow", [*packages, "-r", str(model / "requirements.txt")])

        own = [r for r in (model / "requirements.txt").read_text().split() if not r.startswith("mlflow")]
        alone = _venv(root / "env-model-alone", own)
        size = {"arrowscore": _du(ours / "lib"), "mlflow": _du(theirs / "lib"),
                "arrowscore --model-requirements constrain": _du(constrained / "lib"),
                "(the model's requirements alone, without mlflow)": _du(alone / "lib")}

        stand_in = root / "opt-ml-model"
        shutil.copytree(model, stand_in)
        image_env = dict(re.findall(r"^\s*(ARROWSCORE_[A-Z_]+)=(\S+)", (ours_ctx / "Dockerfile").read_text(), re.M))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ARROWSCORE_", "SAGEMAKER_", "AIP_"))}
        base_env.pop("PYTHONPATH", None)

        def ours_start() -> float:
            port = _free_port()
            env = {**base_env, **image_env, "SAGEMAKER_BIND_TO_PORT": str(port), "ARROWSCORE_MODEL": str(stand_in),
                   "PATH": f"{ours / 'bin'}:{os.environ['PATH']}"}
            return cold_start([str(ours / "bin" / "arrowscore"), "serve"], env, port)

        def mlflow_start() -> float:
            env = {**base_env, "DISABLE_NGINX": "true", "MLFLOW_DISABLE_ENV_CREATION": "True",
                   "PATH": f"{theirs / 'bin'}:{os.environ['PATH']}"}
            code = ("import mlflow.models.container as C; C.MODEL_PATH = %r; C._serve('local')" % str(stand_in))
            return cold_start([str(theirs / "bin" / "python"), "-c", code], env, MLFLOW_PORT)

        results = {}
        for name, start in (("arrowscore", ours_start), ("mlflow", mlflow_start)):
            start()  # unmeasured: the files into the page cache
            results[name] = statistics.median(start() for _ in range(args.rounds))

        mb = {k: v / 2**20 for k, v in size.items()}
        print(f"\n{'':<44}{'Python env (MB)':>16}{'cold start (s)':>16}")
        for name in size:
            start = f"{results[name]:>16.2f}" if name in results else ""
            print(f"{name:<44}{mb[name]:>16.0f}{start}")
        ratio = size["arrowscore"] / size["mlflow"]
        constrained_ratio = size["arrowscore --model-requirements constrain"] / size["mlflow"]
        print(f"\nsize: arrowscore / MLflow = {ratio:.2f}, {constrained_ratio:.2f} with the model's requirements as "
              f"constraints (goal <= 0.33); cold start: arrowscore "
              f"{results['arrowscore']:.2f} s (goal <= 2 s), {results['mlflow'] / results['arrowscore']:.1f}x faster "
              "than MLflow's")
        print(json.dumps({"bench": "deploy", "size_mb": {k: round(v) for k, v in mb.items()},
                          "size_ratio": round(ratio, 3),
                          "size_ratio_constrained": round(constrained_ratio, 3), "cold_start_s": {k: round(v, 3) for k, v in results.items()}}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
