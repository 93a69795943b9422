"""Parquet batch benchmark: arrowscore's local runner against the serial bound and against MLflow.

On N rows x 16 float columns (default 1M), Parquet in and Parquet out, for an ONNX MLP and XGBoost,
one run measures:
  read    reading the input with pyarrow alone (32,768-row batches, the runner's default)
  predict the raw library on the same rows preloaded as numpy (same batches)
  write   writing the predictions alone
  serial bound = rows / (read + predict + write)
  arrowscore   engine.score(...) (model loading reported apart)
  mlflow       pyarrow read -> to_pandas -> mlflow pyfunc predict -> Parquet write, batch by batch
and peak RSS of `arrowscore score` at 10x the rows against 1x (separate processes).

    python benchmarks/bench_parquet.py                 # 1M rows, RSS at 1M and 10M
    python benchmarks/bench_parquet.py --rows 100000 --no-rss   # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import engine  # noqa: E402

N_FEATURES = 16
BATCH = 32_768  # the local runner's default batch_rows: every stage is timed at the same size
NAMES = [f"f{i}" for i in range(N_FEATURES)]


def write_input(path: Path, rows: int, files: int = 1, seed: int = 0) -> None:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = rows // files
    for i in range(files):
        n = per if i < files - 1 else rows - per * (files - 1)
        with pq.ParquetWriter(path / f"part-{i:04d}.parquet", pa.schema([(c, pa.float64()) for c in NAMES])) as w:
            for start in range(0, n, 1_000_000):
                m = min(1_000_000, n - start)
                w.write_table(pa.table({c: rng.normal(size=m) for c in NAMES}), row_group_size=BATCH)


def build_models(root: Path) -> dict:
    import mlflow
    import xgboost as xgb
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, N_FEATURES))
    y = X[:, 0] * 2 + np.sin(X[:, 1])
    mlp = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=200, random_state=0).fit(X, y)
    onnx_path = engine.save_model(root / "onnx", to_onnx(mlp, X[:1].astype(np.float32)))
    booster = xgb.train({"max_depth": 6}, xgb.DMatrix(X, label=y), 100)
    xgb_path = root / "xgboost"
    mlflow.xgboost.save_model(booster, str(xgb_path), model_format="ubj",
                              signature=mlflow.models.infer_signature(
                                  __import__("pandas").DataFrame(X[:5], columns=NAMES), booster.predict(xgb.DMatrix(X[:5]))))
    return {"onnx": onnx_path, "xgboost": xgb_path}


def time_read(data: Path) -> float:
    start = time.perf_counter()
    for path in sorted(data.glob("*.parquet")):
        for _ in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            pass
    return time.perf_counter() - start


def time_raw_predict(model_path: Path, flavor: str, data: Path) -> tuple[float, np.ndarray]:
    table = pq.read_table(data)
    dtype = np.float32 if flavor == "onnx" else np.float64
    X = np.column_stack([table.column(c).to_numpy() for c in NAMES]).astype(dtype)
    model = engine.load_model(model_path)
    if flavor == "onnx":
        session = model.predictor.native
        name = session.get_inputs()[0].name
        fn = lambda a: session.run(None, {name: a})[0]  # noqa: E731
    else:
        fn = model.predictor.native.inplace_predict
    fn(X[:BATCH])
    start = time.perf_counter()
    preds = [np.asarray(fn(X[i:i + BATCH])).reshape(-1) for i in range(0, len(X), BATCH)]
    return time.perf_counter() - start, np.concatenate(preds)


def time_write(preds: np.ndarray, out: Path) -> float:
    start = time.perf_counter()
    with pq.ParquetWriter(out, pa.schema([("prediction", pa.from_numpy_dtype(preds.dtype))])) as w:
        for i in range(0, len(preds), BATCH):
            w.write_batch(pa.record_batch([pa.array(preds[i:i + BATCH])], names=["prediction"]))
    return time.perf_counter() - start


def time_mlflow(model_path: Path, data: Path, out: Path) -> float:
    import mlflow

    model = mlflow.pyfunc.load_model(str(model_path))
    start = time.perf_counter()
    writer = None
    for path in sorted(data.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            pred = np.asarray(model.predict(batch.to_pandas()))
            if isinstance(pred, dict) or pred.dtype == object:
                pred = np.asarray(list(pred.values())[0] if isinstance(pred, dict) else pred.tolist())
            table = pa.table({"prediction": pred.reshape(-1)})
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
    writer.close()
    return time.perf_counter() - start


def peak_rss_mb(model_path: Path, data: Path, out: Path) -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so the child would report this
    # (large) benchmark process's size
    code = ("import engine\n"
            f"engine.score({str(model_path)!r}, {str(data)!r}, {str(out)!r}, mode='overwrite', progress=False)\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(int(hwm.split()[1]) / 1024)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--no-rss", action="store_true", help="skip the 10x-rows peak memory run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_input(root / "in", args.rows)
        models = build_models(root / "models")
        print("| model | read s | predict s | write s | serial bound rows/s | arrowscore rows/s | "
              "arrowscore / serial | MLflow rows/s | arrowscore / MLflow | model load s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for flavor, path in models.items():
            time_read(root / "in")  # warm the page cache and Arrow's thread pools first
            best = {"read": [], "predict": [], "write": [], "ours": [], "mlflow": []}
            for _ in range(3):  # interleaved rounds, best of each: the machine's noise hits all alike
                best["read"].append(time_read(root / "in"))
                t_pred, preds = time_raw_predict(path, flavor, root / "in")
                best["predict"].append(t_pred)
                best["write"].append(time_write(preds, root / "pred.parquet"))
                report = engine.score(path, root / "in", root / f"out-{flavor}", mode="overwrite", progress=False)
                best["ours"].append(report.seconds)
                best["mlflow"].append(time_mlflow(path, root / "in", root / "mlflow.parquet"))
            t_read, t_pred, t_write, t_ours, t_mlflow = (min(best[k]) for k in best)
            serial = args.rows / (t_read + t_pred + t_write)
            ours, theirs = args.rows / t_ours, args.rows / t_mlflow
            results[flavor] = {"read_s": t_read, "predict_s": t_pred, "write_s": t_write, "serial_rows_s": serial,
                               "ours_rows_s": ours, "ours_over_serial": ours / serial, "mlflow_rows_s": theirs,
                               "ours_over_mlflow": ours / theirs, "load_s": report.load_seconds}
            print(f"| {flavor} | {t_read:.3f} | {t_pred:.3f} | {t_write:.3f} | {serial:,.0f} | {ours:,.0f} | "
                  f"{ours / serial:.2f} | {theirs:,.0f} | {ours / theirs:.2f} | {report.load_seconds:.2f} |", flush=True)
        print("goals: arrowscore / serial bound >= 1.1; arrowscore / MLflow >= 1.2")
        if not args.no_rss:
            small, big = root / "rss1", root / "rss10"
            shutil.rmtree(root / "in")
            write_input(small, args.rows)
            write_input(big, args.rows * 10, files=10)
            rss_small = peak_rss_mb(models["onnx"], small, root / "rss-out1")
            rss_big = peak_rss_mb(models["onnx"], big, root / "rss-out10")
            results["rss"] = {"rows_small": args.rows, "mb_small": rss_small, "mb_big": rss_big,
                              "ratio": rss_big / rss_small}
            print(f"peak RSS (onnx): {rss_small:,.0f} MB at {args.rows:,} rows, {rss_big:,.0f} MB at "
                  f"{args.rows * 10:,} rows: ratio {rss_big / rss_small:.2f} (goal <= 1.25)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
