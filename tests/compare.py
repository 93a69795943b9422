"""Compare arrowscore's output Table with what MLflow's pyfunc returned for the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.model.convert import list_tensor


def columns_of_expected(expected) -> dict[str, np.ndarray]:
    if isinstance(expected, dict):
        return {k: np.asarray(v) for k, v in expected.items()}
    if isinstance(expected, pd.DataFrame):
        return {str(c): expected[c].to_numpy() for c in expected.columns}
    if isinstance(expected, pd.Series):
        return {"prediction": expected.to_numpy()}
    return {"prediction": np.asarray(expected)}


def columns_of_ours(table: pa.Table) -> dict[str, np.ndarray]:
    out = {}
    for name, col in zip(table.column_names, table.columns):
        col = col.combine_chunks()
        out[name] = list_tensor(col, name) if pa.types.is_nested(col.type) else col.to_numpy(zero_copy_only=False)
    return out


def _squeeze(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)[:, 0] if a.ndim == 2 and a.shape[1] == 1 else a


def assert_same_predictions(ours: pa.Table, expected, rtol: float = 1e-6) -> None:
    mine, theirs = columns_of_ours(ours), columns_of_expected(expected)
    assert len(mine) == len(theirs), f"columns differ: {list(mine)} vs {list(theirs)}"
    pairs = zip(mine.values(), theirs.values()) if len(mine) == 1 else ((mine[k], theirs[k]) for k in theirs)
    for a, b in pairs:
        a, b = _squeeze(np.asarray(a)), _squeeze(np.asarray(b))
        assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=1e-12)
        else:
            np.testing.assert_array_equal(a, b)
