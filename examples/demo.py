"""The demo `make demo` runs: build a small model with engine.save_model, write a sample Parquet
file, and score it with arrowscore. Everything lands under demo/ (ignored by git)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import engine  # noqa: E402

OUT = ROOT / "demo"
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


def write_input(path: Path) -> Path:
    rng = np.random.default_rng(1)
    table = pa.table({"id": np.arange(ROWS), **{n: rng.normal(size=ROWS) for n in FEATURES}})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=50_000)
    return path


def main() -> int:
    model_dir = build_model(OUT / "model")
    data = write_input(OUT / "data" / "input.parquet")
    print(f"model: {model_dir}; input: {data} ({ROWS:,} rows)")
    report = engine.score(model_dir, data, OUT / "out", keep_columns=["id"], mode="overwrite")
    print(report)
    result = pq.read_table(OUT / "out")
    print(result.slice(0, 3).to_pandas().to_string(index=False))
    return 0 if result.num_rows == ROWS == report.rows_scored else 1


if __name__ == "__main__":
    raise SystemExit(main())
