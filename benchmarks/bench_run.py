"""Scheduled-job benchmark: what `arrowscore run --once` costs beyond scoring its new files.

On an input of N small Parquet files (default 10,000; 16 doubles, --rows rows each) of which 10 are
new, with an ONNX model, one run measures:
  (a) in one process: engine.run_job (list the N files, read the ledger, plan, score the 10 new files
      one by one, commit and record each) against engine.score of the same 10 files alone (input_files);
      the difference is the run's cost beyond scoring them (goal <= 2 s), with the planning alone
      (listing + ledger + plan) beside it;
  (b) as commands, each a fresh process (interpreter, imports, model load):
      `arrowscore run JOB --once` against `arrowscore score MODEL 'in/new-*.parquet' OUT` on the same
      10 new files (goal <= 1.1x).
Each round adds 10 new files; figures are the median of the rounds. The ledger of the N - 10 files
already scored is filled with the records a run writes (one transaction, not 10,000 runs' worth of
scoring, which would take minutes here); their part files are not written, as a run never reads them.

    python benchmarks/bench_run.py                      # 10,000 files
    python benchmarks/bench_run.py --files 200 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
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
NEW = 10


def build_model(root: Path) -> Path:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(1)
    X = rng.normal(size=(1000, N_FEATURES)).astype(np.float32)
    return engine.save_model(root / "onnx", to_onnx(LinearRegression().fit(X, X[:, 0] * 2), X[:1]))


def write_files(directory: Path, names: list[str], rows: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = directory / name
        pq.write_table(pa.table({f"f{i}": rng.normal(size=rows) for i in range(N_FEATURES)}), path)
        paths.append(path)
    return paths


def seed_ledger(job: dict, paths: list[Path], version: str) -> None:
    """The records a run writes for files it scored (``Ledger.begin`` + ``finish``), in one transaction."""
    from engine.scheduler.catchup import file_key
    from engine.scheduler.jobfile import load_job
    from engine.scheduler.ledger import Ledger

    spec = load_job(job)
    ledger = Ledger(spec.ledger_path)
    ledger.claim(spec.name)
    rows = []
    for path in paths:
        st = path.stat()
        part = f"{job['output']}/part-{file_key(str(path), st.st_size, st.st_mtime_ns, version)}.parquet"
        rows.append((str(path), st.st_size, st.st_mtime_ns, job["model"], version, json.dumps([part]), 1, 1, 0,
                     "seed", "seed"))
    with ledger._db:
        ledger._db.executemany("INSERT INTO files (path, size, mtime_ns, model_uri, model_version, outputs, rows, "
                               "rows_scored, dead_lettered, run_id, scored_at) VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    ledger.close()


def time_planning(job: dict) -> float:
    """Listing + ledger + plan, as a run does them before scoring (no lock, no model)."""
    from connectors.parquet import list_files
    from engine.scheduler.catchup import plan
    from engine.scheduler.jobfile import load_job
    from engine.scheduler.objectledger import open_ledger

    start = time.perf_counter()
    spec = load_job(job)
    ledger = open_ledger(spec.ledger_path, readonly=True)
    infos, _ = list_files(spec.input)
    todo = plan(infos, ledger.identities(), "v", spec.rescore)
    ledger.close()
    assert len(todo) >= NEW
    return time.perf_counter() - start


def cli(*args) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000, help="input files in all (10 of them new per round)")
    p.add_argument("--rows", type=int, default=100, help="rows per input file")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(root)
        old = write_files(root / "in", [f"old-{i:05d}.parquet" for i in range(args.files - NEW)], args.rows, 0)
        job = {"name": "bench", "model": str(model), "input": str(root / "in"), "output": str(root / "out")}
        from engine.scheduler.catchup import resolve_model

        seed_ledger(job, old, resolve_model(str(model))[1])
        import yaml

        (root / "job.yaml").write_text(yaml.safe_dump(job))
        a_run, a_score, a_plan, b_run, b_score = [], [], [], [], []
        for r in range(args.rounds):
            for mode in ("in-process", "command"):
                names = [f"new-{mode[0]}{r}-{i}.parquet" for i in range(NEW)]
                new = write_files(root / "in", names, args.rows, 100 + r)
                glob = str(root / "in" / f"new-{mode[0]}{r}-*.parquet")
                if mode == "in-process":
                    a_plan.append(time_planning(job))
                    start = time.perf_counter()
                    engine.score(model, root / "in", root / f"score-{r}", input_files=[str(f) for f in new],
                                 progress=False)
                    a_score.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    report = engine.run_job(job)
                    a_run.append(time.perf_counter() - start)
                else:
                    b_score.append(cli("score", model, glob, root / f"cli-score-{r}", "--no-progress"))
                    b_run.append(cli("run", root / "job.yaml", "--once"))
                    report = engine.run_job(job, dry_run=True)
                    assert not report.planned, "the command's run left files unscored"
                if mode == "in-process":
                    assert report.files == NEW and report.input_files == len(old) + NEW * (2 * r + 1), report
        med = {k: statistics.median(v) for k, v in
               {"a_run": a_run, "a_score": a_score, "a_plan": a_plan, "b_run": b_run, "b_score": b_score}.items()}
        print(f"{args.files:,} input files of {args.rows} rows, {NEW} new per run; median of {args.rounds} rounds\n")
        print("| measure | run s | score s | run - score s | run / score | planning s (listing, ledger, plan) |")
        print("|---|---|---|---|---|---|")
        print(f"| (a) in-process: run_job vs score of the new files | {med['a_run']:.2f} | {med['a_score']:.2f} | "
              f"{med['a_run'] - med['a_score']:.2f} | {med['a_run'] / med['a_score']:.2f} | {med['a_plan']:.2f} |")
        print(f"| (b) commands: run --once vs score | {med['b_run']:.2f} | {med['b_score']:.2f} | "
              f"{med['b_run'] - med['b_score']:.2f} | {med['b_run'] / med['b_score']:.2f} | - |")
        print("goals: (a) run - score <= 2 s; (b) run / score <= 1.1")
        if args.json:
            args.json.write_text(json.dumps(med, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
