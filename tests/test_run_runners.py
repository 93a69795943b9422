"""`arrowscore run` on the Ray and Spark runners: the same ledger and commit protocol as the local runner,
one part file per input file, and a second run scores only the new file (in the runner's workers)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_a_spark_job_under_spark_submit(spark, tmp_path):
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in", 0)
    job = _job(tmp_path, model, runner="spark")
    entry = subprocess.run([sys.executable, "-m", "engine.spark_job", "--path"], capture_output=True, text=True,
                           check=True).stdout.strip()
    submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([submit, "--master", "local[1]", "--conf", "spark.ui.enabled=false", entry, "run", str(job),
                          "--once"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "scored 1 of 1 input files" in run.stdout
    assert _check_visible(tmp_path / "out", tmp_path / "in") == ROWS


def test_a_ray_job_under_ray_job_submit(ray_head, tmp_path):
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in", 0)
    job = _job(tmp_path, model, runner="ray", runner_options={"actors": 1})
    bin_dir = Path(sys.executable).parent
    cmd = [str(bin_dir / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--",
           str(bin_dir / "arrowscore"), "run", str(job), "--once"]
    run = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "scored 1 of 1 input files" in run.stdout
    assert _check_visible(tmp_path / "out", tmp_path / "in") == ROWS
