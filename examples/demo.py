"""The demo `make demo` runs: build a small model with engine.save_model, write a sample Parquet
file and a few JSON rows, score the Parquet file with arrowscore, and print the commands to try next.

Everything lands under demo/ in the repository (ignored by git), or under the directory given:
``python examples/demo.py /tmp/somewhere`` (tests/test_docs.py builds its demo model that way)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import engine  # noqa: E402

ROWS = 200_000
FEATURES = [f"f{i}" for i in range(8)]


def build_model(path: Path) -> Path:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5_000, len(FEATURES)))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=50).fit(X, y)
    schema = pa.schema([pa.field(name, pa.float64(), False) for name in FEATURES])
    return engine.save_model(path, clf, signature=schema, predict_fn="predict_proba", overwrite=True)


def write_input(path: Path, rows: int = ROWS) -> Path:
    rng = np.random.default_rng(1)
    table = pa.table({"id": np.arange(rows), **{n: rng.normal(size=rows) for n in FEATURES}})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=50_000)
    return path


def write_rows(path: Path, parquet: Path, rows: int = 3) -> Path:
    """A few input rows in MLflow's serving JSON (``dataframe_split``), for `predict` and `serve`."""
    head = pq.read_table(parquet, columns=FEATURES).slice(0, rows)
    doc = {"dataframe_split": {"columns": FEATURES, "data": [list(r.values()) for r in head.to_pylist()]}}
    path.write_text(json.dumps(doc) + "\n")
    return path


def _shown(path: Path | str) -> str:
    """A path as the user would type it here: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return shlex.quote(str(path) if relative.startswith("..") else relative)


def next_commands(out: Path) -> list[str]:
    """The commands to try on the demo model, as they run from the current directory."""
    cli = _shown(Path(sys.executable).parent / "arrowscore")
    model, rows = _shown(out / "model"), _shown(out / "rows.json")
    data, scored = _shown(out / "data" / "input.parquet"), _shown(out / "out2")
    return [
        f"{cli} info {model}",
        f"{cli} predict {model} -i {rows}",
        f"{cli} score {model} {data} {scored} --keep-columns id --mode overwrite",
        f"{cli} serve {model}          # then, from another terminal:",
        f"curl -s 127.0.0.1:8080/invocations -H 'Content-Type: application/json' -d @{rows}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the demo model and data, score them, print the commands to try next.")
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "demo",
                        help="where the model, data and output go (default: demo/ in the repository)")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows of the sample Parquet file (default {ROWS:,})")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    model_dir = build_model(out / "model")
    data = write_input(out / "data" / "input.parquet", args.rows)
    write_rows(out / "rows.json", data)  # beside data/, which stays a Parquet dataset (a directory input)
    print(f"model: {model_dir}; input: {data} ({args.rows:,} rows)")
    report = engine.score(model_dir, data, out / "out", keep_columns=["id"], mode="overwrite")
    print(report)
    result = pq.read_table(out / "out")
    for row in result.slice(0, 3).to_pylist():
        print(f"id {row['id']}: prediction {[round(p, 4) for p in row['prediction']]}")
    print("\nNext, try these on the demo model:")
    for command in next_commands(out):
        print(f"  {command}")
    return 0 if result.num_rows == args.rows == report.rows_scored else 1


if __name__ == "__main__":
    raise SystemExit(main())
