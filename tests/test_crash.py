"""A scoring process killed with SIGKILL at random points leaves no visible partial output."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine

ROWS_PER_FILE = 20_000
FILES = 4


def _slow_double(df):
    import time as _time

    _time.sleep(0.004)  # a model with real per-batch cost, so the job runs long enough to be killed mid-way
    return df["x"] * 2.0


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    model = engine.save_model(root / "model", _slow_double, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    (root / "in").mkdir()
    for i in range(FILES):
        ids = np.arange(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE)
        pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), root / "in" / f"f{i}.parquet")
    return root, model


def _command(root, model, mode):
    return [sys.executable, "-m", "engine", "score", str(model), str(root / "in"), str(root / "out"),
            "--keep-columns", "id", "--batch-rows", "500", "--mode", mode, "--no-progress"]


def _visible(out) -> pa.Table | None:
    """What a reader of the output directory sees (None: no output directory at all)."""
    if not out.exists():
        return None
    return pq.read_table(out) if any(p.suffix == ".parquet" for p in out.rglob("*")) else pa.table({})


def _assert_complete(table: pa.Table) -> None:
    ids = np.sort(table.column("id").to_numpy())
    assert np.array_equal(ids, np.arange(FILES * ROWS_PER_FILE)), "rows lost or doubled"
    np.testing.assert_allclose(table.sort_by("id").column("prediction").to_numpy(), ids * 0.5 * 2.0)


def test_sigkill_at_random_points_then_overwrite(job):
    root, model = job
    out = root / "out"
    start = time.perf_counter()
    full = subprocess.run(_command(root, model, "overwrite"), capture_output=True, text=True, timeout=300)
    duration = time.perf_counter() - start
    assert full.returncode == 0, full.stderr
    _assert_complete(_visible(out))

    rng = random.Random(20261126)
    outcomes = []
    for trial in range(5):
        mode = "overwrite" if trial % 2 else "error"
        if mode == "error" and out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        before = _visible(out)
        proc = subprocess.Popen(_command(root, model, mode), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, duration * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        seen = _visible(out)
        outcomes.append(proc.returncode)
        # a reader sees no output, the previous complete output, or the new complete output: never a part
        if seen is not None and seen.num_columns:
            _assert_complete(seen)
            assert (out / "_SUCCESS").exists()
        elif seen is not None:
            assert before is None or not before.num_columns, "a previous output vanished partially"
        rerun = subprocess.run(_command(root, model, "overwrite"), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        _assert_complete(_visible(out))
    assert -signal.SIGKILL in outcomes, "no trial was killed mid-run; the job finished too fast to test"
    stale = [p for p in root.iterdir() if p.name.startswith(".out.arrowscore")]
    assert not stale, f"staging left behind after a successful rerun: {stale}"


def _slower_double(df):
    import time as _time

    _time.sleep(0.05)  # about 4 s for the whole job: ample time to interrupt it mid-way
    return df["x"] * 2.0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_stops_cleanly(tmp_path, sig):
    """Ctrl-C (or a scheduler's SIGTERM) mid-job: one line, exit 130, staging removed, the previous output
    untouched (SIGTERM used to kill the job where it stood, leaving staging and locks behind)."""
    model = engine.save_model(tmp_path / "model", _slower_double,
                              signature=pa.schema([pa.field("x", pa.float64(), False)]))
    (tmp_path / "in").mkdir()
    for i in range(2):
        ids = np.arange(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE)
        pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), tmp_path / "in" / f"f{i}.parquet")
    out = tmp_path / "out"
    out.mkdir()
    old = pa.table({"id": [1, 2], "prediction": [9.0, 9.0]})
    pq.write_table(old, out / "part-00000.parquet")
    (out / "_SUCCESS").write_text("")
    before = sorted(p.name for p in out.iterdir())
    # a shell without job control starts background jobs with SIGINT ignored; the child gets the default back
    proc = subprocess.Popen(_command(tmp_path, model, "overwrite"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.arrowscore") and any(p.glob("*.parquet")) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it wrote a part file"
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert [line for line in stderr.splitlines() if "interrupted" in line] == ["arrowscore: interrupted"], stderr
    assert stdout == ""
    assert sorted(p.name for p in out.iterdir()) == before
    assert pq.read_table(out / "part-00000.parquet").equals(old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.arrowscore")], "staging left behind"


def test_sigint_during_the_commit_waits_for_it():
    """The commit moves the old output aside, then the new one in: a Ctrl-C between the two would leave neither."""
    import os

    from engine.runners.local import _sigint_deferred

    done = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a Python started from a terminal has
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # Python runs its handlers between bytecodes: the Ctrl-C has been seen by now
                done.append("commit")
        assert done == ["commit"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
