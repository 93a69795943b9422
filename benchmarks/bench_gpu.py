"""PyTorch on a device: arrowscore against raw torch on the same device and model, and a Parquet job
against its slowest stage.

The model is the issue's: an MLP 64-1024-1024-1 (float32), saved by `mlflow.pytorch.save_model`, input
one fixed-size-list column of 64 floats. On a GPU:
  (1) rows/s of `Model.score_batch` on Arrow batches against raw torch fed from pinned host memory
      (host-to-device copy, forward, result back to the host), per batch size.
      Goals: >= 0.9 at >= 64k-row batches, >= 0.8 at 1024.
  (2) `engine.score` of a Parquet file by the local runner on the device, against the slowest of its
      stages alone: reading the file, the forward passes with the data already on the device, writing
      the predictions. Goal: >= 0.8.
On the CPU (`--device cpu`, or where torch sees no GPU) the same figures are taken with torch fed from
numpy (no copies): they say what arrowscore adds on the CPU, not what the GPU goals ask.

    python benchmarks/bench_gpu.py [--device cuda] [--rows 2000000] [--rounds 3]

The last line is the results as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import engine  # noqa: E402

WIDTH = 64


def _model(torch, root: Path) -> Path:
    import mlflow
    from mlflow.models import infer_signature

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(WIDTH, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                              torch.nn.ReLU(), torch.nn.Linear(1024, 1)).eval()
    x = np.zeros((2, WIDTH), np.float32)
    path = root / "mlp"
    mlflow.pytorch.save_model(net, str(path), serialization_format="pickle", pip_requirements=["torch"],
                              signature=infer_signature(x, net(torch.from_numpy(x)).detach().numpy()))
    return path


def _table(rows: int) -> pa.Table:
    x = np.random.default_rng(0).normal(size=rows * WIDTH).astype(np.float32)
    return pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x), WIDTH)})


def _sync(torch, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, rounds: int) -> float:
    fn()  # warm: kernels chosen, buffers allocated
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def feed_ratios(torch, path: Path, device, table: pa.Table, sizes, rounds: int) -> list[dict]:
    model = engine.load_model(path, model_config={"device": str(device)})
    net = model.predictor.native
    out = []
    for size in sizes:
        batches = table.slice(0, (table.num_rows // size) * size).to_batches(max_chunksize=size)
        rows = sum(b.num_rows for b in batches)
        host = [b.column(0).flatten().to_numpy().reshape(-1, WIDTH).copy() for b in batches]  # writable, as torch wants
        if device.type == "cuda":
            pinned = [torch.from_numpy(h).pin_memory() for h in host]

            def raw():
                with torch.inference_mode():
                    for p in pinned:
                        net(p.to(device, non_blocking=True)).cpu()
        else:
            def raw():
                with torch.inference_mode():
                    for h in host:
                        net(torch.from_numpy(h)).numpy()

        def ours():
            for b in batches:
                model.score_batch(b)

        t_raw, t_ours = _best(lambda: (raw(), _sync(torch, device)), rounds), _best(ours, rounds)
        out.append({"batch_rows": size, "batches": len(batches), "raw_rows_per_s": rows / t_raw,
                    "arrowscore_rows_per_s": rows / t_ours, "ratio": t_raw / t_ours})
    return out


def parquet_ratio(torch, path: Path, device, table: pa.Table, work: Path, rounds: int) -> dict:
    source = work / "in.parquet"
    pq.write_table(table, source, row_group_size=65_536)
    net = engine.load_model(path, model_config={"device": str(device)}).predictor.native
    batch = 262_144 if device.type == "cuda" else 32_768

    def read():
        for _ in pq.ParquetFile(source).iter_batches(batch_size=batch):
            pass

    on_device = torch.from_numpy(table.column(0).combine_chunks().flatten().to_numpy().reshape(-1, WIDTH)).to(device)

    def compute():
        with torch.inference_mode():
            for i in range(0, len(on_device), batch):
                net(on_device[i:i + batch])
        _sync(torch, device)

    preds = pa.table({"prediction": pa.array(np.zeros(table.num_rows, np.float32))})

    def write():
        pq.write_table(preds, work / "alone.parquet")

    def job():
        engine.score(path, source, work / "out", mode="overwrite", progress=False, device=str(device))

    stages = {"read": _best(read, rounds), "compute on device": _best(compute, rounds), "write": _best(write, rounds)}
    t_job = _best(job, rounds)
    slowest = max(stages, key=stages.get)
    return {"rows": table.num_rows, "stage_seconds": stages, "slowest_stage": slowest, "job_seconds": t_job,
            "ratio": stages[slowest] / t_job}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when torch sees a GPU)")
    p.add_argument("--rows", type=int, default=None, help="rows in the data (default 2M on a GPU, 200k on the CPU)")
    p.add_argument("--sizes", default=None, help="batch sizes, comma-separated (default 1024,65536,1048576 on a "
                                                 "GPU; 1024,65536 on the CPU)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    rows = args.rows or (2_000_000 if gpu else 200_000)
    sizes = [int(s) for s in (args.sizes or ("1024,65536,1048576" if gpu else "1024,65536")).split(",")]
    sizes = [s for s in sizes if s <= rows]
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device} = {name}; torch {torch.__version__}; {rows:,} rows; best of {args.rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = _model(torch, work)
        table = _table(rows)
        feeds = feed_ratios(torch, path, device, table, sizes, args.rounds)
        job = parquet_ratio(torch, path, device, table, work, args.rounds)
    baseline = "torch from pinned memory" if gpu else "torch from numpy"
    print(f"\n| batch rows | {baseline} rows/s | arrowscore rows/s | ratio |\n|---:|---:|---:|---:|")
    for f in feeds:
        print(f"| {f['batch_rows']:,} | {f['raw_rows_per_s']:,.0f} | {f['arrowscore_rows_per_s']:,.0f} | "
              f"{f['ratio']:.2f} |")
    stages = ", ".join(f"{k} {job['rows'] / v:,.0f} rows/s" for k, v in job["stage_seconds"].items())
    print(f"\nParquet job on {device}: {job['rows'] / job['job_seconds']:,.0f} rows/s; stages alone: {stages}; "
          f"job / slowest stage ({job['slowest_stage']}) = {job['ratio']:.2f}")
    print(json.dumps({"bench": "gpu", "device": str(device), "device_name": name, "torch": torch.__version__,
                      "feeds": feeds, "parquet": job}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
