"""`arrowscore run` on the Ray and Spark runners: the same ledger and commit protocol as the local runner,
one part file per input file, and a second run scores only the new file (in the runner's workers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_run import ROWS, SIGNATURE, _check_visible, _double, _job, _visible, _write

import engine
from engine.scheduler import run_history

pytestmark = pytest.mark.timeout(400)


@pytest.mark.parametrize("runner", ["ray", "spark"])
def test_an_incremental_job_on_the_runner(request, tmp_path, runner):
    request.getfixturevalue("ray_head" if runner == "ray" else "spark")  # the session's Ray head, Spark session
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    inp, out, loads = tmp_path / "in", tmp_path / "out", tmp_path / "loads.log"
    inp.mkdir()
    for i in range(2):
        _write(inp, i)
    options = {"load_log": str(loads), **({"actors": 1} if runner == "ray" else {})}
    job = _job(tmp_path, model, runner=runner, runner_options=options)

    first = engine.run_job(job)
    assert (first.files, first.rows_scored) == (2, 2 * ROWS)
    _write(inp, 2)
    second = engine.run_job(job)
    assert [Path(p.path).name for p in second.planned] == ["f02.parquet"]
    assert (second.files, second.rows_scored, second.input_files) == (1, ROWS, 3)

    assert _check_visible(out, inp) == 3 * ROWS  # each part file is one whole input file
    assert len(list(out.glob("part-*.parquet"))) == 3
    table = _visible(out).sort_by("id")
    ids = np.arange(3 * ROWS)
    assert table.column("id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(table.column("prediction").to_numpy(), ids * 0.5 * 2)
    # the runner's own workers scored them (Ray actors, Spark Python workers), not this process
    pids = {int(line.split()[0]) for line in loads.read_text().splitlines()}
    assert pids and os.getpid() not in pids
    assert [r.files for r in run_history(job)] == [2, 1]
    assert not [p for p in tmp_path.iterdir() if ".arrowscore-" in p.name]  # no staging left
