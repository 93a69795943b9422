"""Ray benchmark: `engine.score(runner="ray")` against the local runner and against what users write today.

N rows x 16 doubles (default 5M), Parquet in and out, a local Ray with 2 CPUs, the ONNX MLP:
  local      engine.score(runner="local")
  ray        engine.score(runner="ray"), actor pool of --actors x 0.5 CPU (default 1, the runner's default)
  ray-warm   the same with keep_warm_s: a later job of the model on this cluster, its actor pool already
             loaded (a first job, timed apart, created it)
  ray+mlflow ray.data.read_parquet -> map_batches(class calling mlflow.pyfunc.load_model(...).predict on
             pandas batches, same pool) -> write_parquet
Each job runs at the full size and at 1/25 of it; the difference gives its throughput after start-up
and its fixed start-up cost (reported apart, as is ray.init); each figure is the median of --rounds runs
(default 5; single Ray timings move by up to a second with actor start-up).
Ray's own floor is measured too: a pipeline whose actors do nothing, on 1,000 rows.

    python benchmarks/bench_ray.py                 # 5M rows
    python benchmarks/bench_ray.py --rows 200000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine  # noqa: E402
from bench_parquet import build_models, write_input  # noqa: E402


class Nothing:
    """An actor that returns its input: what any Ray Data actor pipeline costs before doing work."""

    def __call__(self, table):
        return table


class MlflowPredictor:
    """The Ray Data batch-inference pattern users write with MLflow today."""

    def __init__(self, path: str):
        import mlflow

        self.model = mlflow.pyfunc.load_model(path)

    def __call__(self, df):
        import numpy as np
        import pandas as pd

        pred = self.model.predict(df)
        if isinstance(pred, pd.DataFrame):
            pred = pred.iloc[:, 0].to_numpy()
        return pd.DataFrame({"prediction": np.asarray(pred).reshape(-1)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--actors", type=int, default=1, help="actor pool size, the same for both Ray jobs")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    import logging

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small_rows = max(args.rows // 25, 1000)
        write_input(root / "in", args.rows, files=5)
        write_input(root / "small", small_rows, files=5)
        model = str(build_models(root / "models")["onnx"])
        start = time.perf_counter()
        os.environ.pop("RAY_ADDRESS", None)  # a Ray of its own: not a cluster running on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                 object_store_memory=2 << 30)
        startup = time.perf_counter() - start
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # Ray >= 2.56 hands pandas batches with pyarrow-backed dtypes, which MLflow's ONNX wrapper turns
        # into string tensors; numpy-backed pandas is what the MLflow pattern needs to run at all
        ctx.enable_arrow_backed_pandas_conversion = False

        warm = {"actors": args.actors, "keep_warm_s": 600}
        first_warm = engine.score(model, root / "small", root / "out", mode="overwrite", runner="ray",
                                  runner_options=warm).seconds

        def jobs(data: Path) -> dict:
            out = root / "out"
            time.sleep(1.0)  # Ray tears a finished pipeline's actors down after the job returns: not in the next job
            t = {"local": engine.score(model, data, out, mode="overwrite", progress=False).seconds,
                 "ray": None,
                 "ray-warm": engine.score(model, data, out, mode="overwrite", runner="ray", runner_options=warm).seconds}
            t["ray"] = engine.score(model, data, out, mode="overwrite", runner="ray",
                                    runner_options={"actors": args.actors}).seconds
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            (ray.data.read_parquet(str(data))
             .map_batches(MlflowPredictor, fn_constructor_args=(model,), batch_format="pandas", batch_size=32_768,
                          compute=ray.data.ActorPoolStrategy(size=args.actors), num_cpus=0.5)
             .write_parquet(str(out)))
            t["ray+mlflow"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            ray.data.range(1000).map_batches(Nothing, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=args.actors),
                                             num_cpus=0.5).materialize()
            t["floor"] = time.perf_counter() - t0
            return t

        runs = [(jobs(root / "small"), jobs(root / "in")) for _ in range(args.rounds)]
        ray.shutdown()
    small = {k: statistics.median(r[0][k] for r in runs) for k in runs[0][0]}
    full = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
    # every Ray pipeline pays a fixed start-up (planning, read tasks, actors importing their
    # libraries) whatever its size: the slope between two sizes is the throughput, the rest is fixed
    extra = args.rows - small_rows
    floor = min(full["floor"], small.pop("floor"))
    full.pop("floor")
    marginal = {k: extra / max(full[k] - small[k], 1e-9) for k in full}
    fixed = {k: max(small[k] - small_rows / marginal[k], 0.0) for k in full}
    print(f"Ray local cluster (2 CPUs), ONNX MLP, pools of {args.actors} x 0.5 CPU, {args.rows:,} and {small_rows:,} rows x 16 doubles; ray.init "
          f"took {startup:.1f} s (apart); a Ray Data pipeline of "
          f"{args.actors} actor(s) that do nothing took {floor:.2f} s; the first ray-warm job ({small_rows:,} rows, "
          f"creating its pool) took {first_warm:.2f} s")
    print("| job | seconds at full size | rows/s end to end | fixed start-up s | rows/s after start-up |")
    print("|---|---|---|---|---|")
    for k in full:
        print(f"| {k} | {full[k]:.2f} | {args.rows / full[k]:,.0f} | {fixed[k]:.1f} | {marginal[k]:,.0f} |")
    ratios = {"ray / local (after start-up)": marginal["ray"] / marginal["local"],
              "ray / ray+mlflow (after start-up)": marginal["ray"] / marginal["ray+mlflow"],
              "ray / local (end to end)": full["local"] / full["ray"],
              "ray-warm / local (end to end)": full["local"] / full["ray-warm"],
              "ray / ray+mlflow (end to end)": full["ray+mlflow"] / full["ray"]}
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    print("goals: ray / local >= 0.7; ray / ray+mlflow >= 1.5 (start-up reported apart); "
          "ray-warm / local (end to end) >= 0.7")
    if args.json:
        args.json.write_text(json.dumps({"seconds": full, "small_seconds": small, "fixed_s": fixed,
                                         "marginal_rows_s": marginal, "ratios": ratios, "ray_init_s": startup,
                                         "ray_floor_s": floor, "first_warm_job_s": first_warm}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
