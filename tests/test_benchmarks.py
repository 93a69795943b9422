"""The benchmark scripts run (tiny sizes); their figures live in docs/benchmarks.md, never asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from needs import need

ROOT = Path(__file__).resolve().parents[1]


def test_core_benchmark_runs():
    out = subprocess.run([sys.executable, "benchmarks/bench_core.py", "--quick", "--flavors", "onnx,xgboost"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| onnx") or line.startswith("| xgboost")]
    assert len(rows) == 6 and sum(line.startswith("| xgboost (server) |") for line in rows) == 2


def test_parquet_benchmark_runs():
    out = subprocess.run([sys.executable, "benchmarks/bench_parquet.py", "--rows", "20000", "--no-rss"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "| onnx |" in out.stdout and "| xgboost |" in out.stdout


def test_ray_benchmark_runs():
    need("ray", "the Ray benchmark")
    out = subprocess.run([sys.executable, "benchmarks/bench_ray.py", "--rows", "50000", "--rounds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| ray |" in out.stdout and "| ray+mlflow |" in out.stdout and "ray / local (after start-up)" in out.stdout


def test_run_benchmark_runs():
    out = subprocess.run([sys.executable, "benchmarks/bench_run.py", "--files", "60", "--rounds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| (a) in-process" in out.stdout and "| (b) commands" in out.stdout


def test_deploy_benchmark_runs():
    out = subprocess.run([sys.executable, "benchmarks/bench_deploy.py", "--rounds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "deploy" and 0 < result["size_ratio_constrained"] < result["size_ratio"]
    assert all(v > 0 for v in result["cold_start_s"].values())


def test_gpu_benchmark_runs_on_the_cpu_too():
    need("torch", "the PyTorch benchmark")
    out = subprocess.run([sys.executable, "benchmarks/bench_gpu.py", "--device", "cpu", "--rows", "4096",
                          "--sizes", "1024", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and [f["batch_rows"] for f in result["feeds"]] == [1024]
    assert result["feeds"][0]["ratio"] > 0 and result["parquet"]["ratio"] > 0
