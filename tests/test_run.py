"""`arrowscore run`: job files, the ledger, incremental runs, kills at random points, the schedule."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
from engine.errors import ConfigError, ConnectorError
from engine.scheduler import run_history

ROOT = Path(__file__).resolve().parents[1]
ROWS = 200
SIGNATURE = pa.schema([pa.field("x", pa.float64(), False)])


def _double(df):
    return df["x"] * 2.0


def _triple(df):
    return df["x"] * 3.0


def _slow_double(df):
    import time as _time

    _time.sleep(0.03)  # real per-batch cost, so a run lasts long enough to be killed anywhere in it
    return df["x"] * 2.0


def _write(inp: Path, i: int, rows: int = ROWS, shift: float = 0.0, nulls: int = 0) -> Path:
    """Input file i holds ids [i*rows, (i+1)*rows) and x = id / 2 + shift (the first ``nulls`` x null)."""
    ids = np.arange(i * rows, (i + 1) * rows)
    x = pa.array([None if k < nulls else float(v) * 0.5 + shift for k, v in enumerate(ids)], pa.float64())
    path = inp / f"f{i:02d}.parquet"
    pq.write_table(pa.table({"id": ids, "x": x}), path)
    return path


def _visible(out: Path) -> pa.Table:
    """What a reader of the output directory sees."""
    files = sorted(p for p in out.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in files]) if files else pa.table({"id": pa.array([], pa.int64())})


def _job(tmp_path: Path, model, **keys) -> Path:
    job = {"name": "scores", "model": str(model), "input": "in/", "output": "out/", "keep_columns": ["id"], **keys}
    path = tmp_path / "job.yaml"
    import yaml

    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.fixture
def job(tmp_path):
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()
    for i in range(3):
        _write(tmp_path / "in", i)
    return _job(tmp_path, model)


def _cli(*args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


# ---- incremental runs ------------------------------------------------------------------------------
def test_only_new_files_are_scored_and_a_file_replaced_in_place_is_scored_again(job):
    out, inp = job.parent / "out", job.parent / "in"
    first = engine.run_job(job)
    assert (first.files, first.rows) == (3, 3 * ROWS)
    assert sorted(_visible(out).column("id").to_pylist()) == list(range(3 * ROWS))

    assert engine.run_job(job).files == 0  # nothing new
    _write(inp, 3)
    second = engine.run_job(job)
    assert (second.files, [p.reason for p in second.planned]) == (1, ["new"])

    _write(inp, 1, shift=100.0)  # replaced in place: same ids, other values
    third = engine.run_job(job)
    assert third.files == 1 and third.planned[0].reason.startswith("replaced in place")
    table = _visible(out).sort_by("id")
    assert table.column("id").to_pylist() == list(range(4 * ROWS))  # the old version's rows are gone
    ids = np.arange(ROWS, 2 * ROWS)
    np.testing.assert_allclose(table.column("prediction").to_numpy()[ROWS:2 * ROWS], (ids * 0.5 + 100.0) * 2)
    assert len(list(out.glob("*.parquet"))) == 4
    assert not [p for p in job.parent.iterdir() if ".arrowscore-" in p.name]  # no staging left


def test_a_run_opens_no_file_it_has_scored(job):
    """Planning uses the listing (path, size, mtime) and the ledger: a scored file's bytes are never read
    again. Its bytes are replaced by garbage of the same size and mtime: a run that opened it, or read
    its footer, would fail."""
    inp = job.parent / "in"
    engine.run_job(job)
    scored = inp / "f00.parquet"
    stat = scored.stat()
    scored.write_bytes(b"\0" * stat.st_size)
    os.utime(scored, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _write(inp, 3)
    report = engine.run_job(job)
    assert [Path(p.path).name for p in report.planned] == ["f03.parquet"] and report.files == 1


def test_dry_run_lists_what_would_be_scored_and_why_and_writes_nothing(job):
    inp = job.parent / "in"
    out = _cli("run", job, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(new)") == 3 and "would score 3 of 3 input files" in out.stdout
    assert not (job.parent / "out").exists() and not (job.parent / ".out.arrowscore.ledger.sqlite").exists()

    engine.run_job(job)
    _write(inp, 3)
    _write(inp, 0, shift=1.0)
    report = engine.run_job(job, dry_run=True)
    assert {Path(p.path).name: p.reason.split(" (")[0] for p in report.planned} == {
        "f00.parquet": "replaced in place", "f03.parquet": "new"}
    assert len(run_history(job)) == 1  # a dry run is no run


def test_run_json_prints_one_object(job):
    import json

    out = _cli("run", job, "--once", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["files"], doc["rows"], doc["rows_scored"], doc["status"]) == (3, 3 * ROWS, 3 * ROWS, "succeeded")
    assert doc["run_id"] == run_history(job)[0].run_id
    dry = json.loads(_cli("run", job, "--dry-run", "--json").stdout)
    assert dry["dry_run"] is True and dry["planned"] == [] and dry["input_files"] == 3


def test_runs_prints_the_history(job):
    for _ in range(2):
        assert _cli("run", job, "--once").returncode == 0
    out = _cli("runs", job)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["run_id", "started", "ended", "model_version", "files", "rows", "dead_lettered",
                                "status", "job_hash", "versions"]
    assert [line.split()[4:8] for line in lines[1:]] == [["3", str(3 * ROWS), "0", "succeeded"],
                                                         ["0", "0", "0", "succeeded"]]
    runs = json.loads(_cli("runs", job, "--json").stdout)
    import hashlib

    digest = hashlib.sha256(job.read_bytes()).hexdigest()
    assert runs[0]["job_hash"] == digest
    assert runs[0]["arrowscore_version"] and runs[0]["versions"]["flavor"] == "python_function"
    assert runs[0]["model_version"].startswith("mlmodel-")
    # the table shows what repeating a run needs: the job file's hash, the libraries' versions
    hash_cell, versions_cell = lines[1].split()[8:10]
    assert hash_cell == digest[:12]
    assert f"pyarrow={pa.__version__}" in versions_cell.split(",") and "flavor=python_function" in versions_cell


def test_rejected_rows_go_to_one_dead_letter_file_per_input_file(tmp_path):
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in", 0)
    _write(tmp_path / "in", 1, nulls=3)
    job = _job(tmp_path, model, on_error="dead-letter", dead_letter="rejected/")
    report = engine.run_job(job)
    assert (report.rows, report.rows_scored, report.dead_lettered) == (2 * ROWS, 2 * ROWS - 3, 3)
    [rejected] = list((tmp_path / "rejected").glob("rejected-*.parquet"))
    table = pq.read_table(rejected)
    assert table.column("id").to_pylist() == [ROWS, ROWS + 1, ROWS + 2]
    assert set(table.column("_source_file").to_pylist()) == {str(tmp_path / "in" / "f01.parquet")}
    assert _visible(tmp_path / "out").num_rows == 2 * ROWS - 3


# ---- the job file ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("name: j\nmodel: m\ninput: in\n\nmodle: x\noutput: out\n",
     r"job.yaml line 5: unknown key 'modle'; did you mean 'model'\?"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nbatch_rows: lots\n",
     r"job.yaml line 5: batch_rows must be an integer or null, got str 'lots'"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nkeep_columns: 5\n",
     r"job.yaml line 5: keep_columns must be a list of names, got int 5"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nkeep_columns: [id, 3]\n",
     r"job.yaml line 5: keep_columns must be a list of names"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nparams: [1]\n", r"job.yaml line 5: params must be a mapping"),
    ("name: j\nmodel: m\ninput: in\noutput: out\n# a comment\non_error: skip\n",
     r"job.yaml line 6: on_error 'skip' is not one of \('fail', 'dead-letter'\)"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nrescore: always\n", r"job.yaml line 5: rescore 'always' is not one of"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nschedule: every day\n",
     r"job.yaml line 5: schedule 'every day' is not a cron expression"),
    ("name: j\nmodel: m\ninput: in\noutput: out\ntimezone: Mars/Olympus\n", r"job.yaml line 5: timezone 'Mars/Olympus'"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nrunner_options:\n  threads: 4\n",
     r"job.yaml line 5: the local runner has no options \['threads'\]"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nrunner: dask\n", r"job.yaml line 5: runner 'dask' is not one of"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nrunner: ray\nrunner_options: {workers: 2}\n",
     r"job.yaml line 6: the ray runner has no options \['workers'\]"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nname: k\n", r"job.yaml line 5: key 'name' is given twice \(also line 1\)"),
    ("name: j\nmodel: m\ninput: in\noutput: out\nmode: overwrite\n", r"job.yaml line 5: unknown key 'mode'"),
    ("name: j\nmodel: m\ninput: in\n", r"job.yaml: output is required"),
    ("- name: j\n", r"job.yaml: a job file is a mapping of keys"),
])
def test_a_bad_job_file_is_refused_with_the_key_and_line(tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        engine.run_job(path, dry_run=True)


def test_a_bad_job_file_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "job.yaml").write_text("name: j\nmodel: m\ninput: in\noutput: out\nbatch_rows: true\n")
    out = _cli("run", tmp_path / "job.yaml", "--once")
    assert out.returncode == 2
    assert out.stderr.strip().endswith("job.yaml line 5: batch_rows must be an integer or null, got bool True")


def test_cache_dir_flag_and_env_for_a_job_file_without_one(tmp_path):
    from mlflow import MlflowClient

    from engine.model import cache

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("cache", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment).info.run_id
    client.log_artifacts(run, str(engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)), "model")
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in", 0)
    job = _job(tmp_path, f"runs:/{run}/model")
    env = {"MLFLOW_TRACKING_URI": uri, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "ARROWSCORE_CACHE_DIR": ""}
    out = _cli("run", job, "--once", "--cache-dir", tmp_path / "flag", env=env)
    assert out.returncode == 0, out.stderr
    assert [e.uri for e in cache.entries(tmp_path / "flag")] == [f"runs:/{run}/model"]
    assert not (tmp_path / "xdg").exists()
    _write(tmp_path / "in", 1)
    out = _cli("run", job, "--once", env={**env, "ARROWSCORE_CACHE_DIR": str(tmp_path / "env")})
    assert out.returncode == 0, out.stderr
    assert [e.uri for e in cache.entries(tmp_path / "env")] == [f"runs:/{run}/model"]


# ---- model versions --------------------------------------------------------------------------------
def test_an_alias_moved_between_runs_rescoring_on_model_change(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("run", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("scorer")
    for fn in (_double, _triple):  # versions 1 and 2
        model = engine.save_model(tmp_path / fn.__name__, fn, signature=SIGNATURE)
        run = client.create_run(experiment).info.run_id
        client.log_artifacts(run, str(model), "model")
        client.set_terminated(run)
        client.create_model_version("scorer", f"runs:/{run}/model", run)
    client.set_registered_model_alias("scorer", "champion", "1")
    (tmp_path / "in").mkdir()
    for i in range(2):
        _write(tmp_path / "in", i)
    job = _job(tmp_path, "models:/scorer@champion", rescore="on-model-change", cache_dir=str(tmp_path / "cache"))
    env = {"MLFLOW_TRACKING_URI": uri}

    assert _cli("run", job, "--once", env=env).returncode == 0
    ids = np.arange(2 * ROWS)
    np.testing.assert_allclose(_visible(tmp_path / "out").sort_by("id").column("prediction").to_numpy(), ids * 0.5 * 2)

    client.set_registered_model_alias("scorer", "champion", "2")
    dry = _cli("run", job, "--dry-run", env=env)
    assert dry.stdout.count("(model changed (version 1 -> 2))") == 2, dry.stdout + dry.stderr
    out = _cli("run", job, "--once", env=env)
    assert out.returncode == 0, out.stderr
    table = _visible(tmp_path / "out").sort_by("id")
    assert table.column("id").to_pylist() == ids.tolist()  # version 1's outputs are gone
    np.testing.assert_allclose(table.column("prediction").to_numpy(), ids * 0.5 * 3)
    history = json.loads(_cli("runs", job, "--json").stdout)
    assert [(r["model_version"], r["files"]) for r in history] == [("1", 2), ("2", 2)]
    assert all(r["model_uri"] == "models:/scorer@champion" for r in history)

    # the first run again, with the version it recorded (1) though the alias names 2 now
    rerun = _cli("run", job, "--rerun", history[0]["run_id"], "--output", tmp_path / "rerun", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"rerun of run {history[0]['run_id']}" in rerun.stdout and "model version 1" in rerun.stdout
    again = pq.read_table(tmp_path / "rerun").sort_by("id")
    assert again.column("id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(again.column("prediction").to_numpy(), ids * 0.5 * 2)
    assert (tmp_path / "rerun" / "_SUCCESS").exists()
    assert _visible(tmp_path / "out").sort_by("id").equals(table)  # the job's output is left as it was
    unknown = _cli("run", job, "--rerun", "0123abcd", "--output", tmp_path / "other", env=env)
    assert unknown.returncode == 2
    assert "job 'scores' has no run '0123abcd' in its ledger" in unknown.stderr and "arrowscore runs" in unknown.stderr


# ---- exactly once through kills ----------------------------------------------------------------------
@pytest.fixture
def slow_job(tmp_path):
    model = engine.save_model(tmp_path / "model", _slow_double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()
    for i in range(4):
        _write(tmp_path / "in", i, rows=2000)
    return _job(tmp_path, model, batch_rows=200)


def _check_visible(out: Path, inputs: Path) -> int:
    """Every visible part file is one whole input file (as it is now, or as it was), and no row is visible
    twice; returns the visible rows."""
    whole = {tuple(pq.read_table(p).column("id").to_pylist()) for p in inputs.glob("*.parquet")}
    seen = []
    for part in out.glob("*.parquet"):
        ids = tuple(pq.read_table(part).column("id").to_pylist())  # a partial file would not even read
        assert ids in whole, f"{part.name} is not one whole input file"
        seen.extend(ids)
    assert len(seen) == len(set(seen)), "rows visible twice"
    return len(seen)


def test_sigkill_at_random_points_then_a_run_to_the_end_scores_every_row_once(slow_job):
    root = slow_job.parent
    rng = random.Random(20261128)
    command = [sys.executable, "-m", "engine", "run", str(slow_job), "--once"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    files, killed = 4, []  # killed: (trial, rows visible then, rows in the input) for runs killed before their end
    for trial in range(6):
        for _ in range(2):  # each run has new work
            _write(root / "in", files, rows=2000)
            files += 1
        if trial == 3:
            _write(root / "in", 1, rows=2000, shift=7.0)  # and one file replaced in place
        runs = len(run_history(slow_job))
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
        if trial % 2:  # anywhere from the start of the process (loading, listing, recovering)
            time.sleep(rng.uniform(0.2, 2.5))
        else:  # while the run scores and commits files
            deadline = time.monotonic() + 30
            while len(run_history(slow_job)) == runs and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        visible = _check_visible(root / "out", root / "in") if (root / "out").exists() else 0
        if proc.returncode == -signal.SIGKILL and visible < files * 2000:
            killed.append((trial, visible, files * 2000))
    assert len(killed) >= 5, killed  # the kills landed in runs, not after them
    done = _cli("run", slow_job, "--once")
    assert done.returncode == 0, done.stderr
    assert _check_visible(root / "out", root / "in") == files * 2000
    table = _visible(root / "out").sort_by("id")
    assert table.column("id").to_pylist() == list(range(files * 2000))
    ids = np.arange(files * 2000)
    np.testing.assert_allclose(table.column("prediction").to_numpy(), (ids * 0.5 + np.where(ids // 2000 == 1, 7.0, 0)) * 2)
    assert not [p for p in root.iterdir() if ".arrowscore-" in p.name]  # staging of killed runs is gone
    statuses = [r.status for r in run_history(slow_job)]
    assert statuses[-1] == "succeeded" and set(statuses[:-1]) <= {"killed", "succeeded"}


def test_a_second_run_of_the_job_is_refused_while_one_is_going(slow_job):
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(slow_job), "--once"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while not run_history(slow_job):
            assert time.monotonic() < deadline and proc.poll() is None, "the first run did not start"
            time.sleep(0.05)
        with pytest.raises(ConnectorError, match=r"the output of job 'scores' .* is in use by job \w+ \(pid "
                                                 rf"{proc.pid} "):
            engine.run_job(slow_job)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert [r.status for r in run_history(slow_job)] == ["succeeded"]


# ---- the schedule ----------------------------------------------------------------------------------
def test_a_schedule_of_every_second_runs_and_scores_only_new_files_then_stops_on_sigterm(job, caplog):
    import yaml

    root = job.parent
    spec = yaml.safe_load(job.read_text())
    job.write_text(yaml.safe_dump({**spec, "schedule": "* * * * * *"}))
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(job)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def wait_for(what, check, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline and proc.poll() is None, what
            time.sleep(0.1)

    try:
        wait_for("a first run", lambda: any(r.files == 3 for r in run_history(job)))
        _write(root / "in", 3)
        wait_for("a run that scores the new file", lambda: any(r.files == 1 for r in run_history(job)))
        wait_for("a run with nothing new", lambda: run_history(job)[-1].files == 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopping after the current run" in stderr
    history = run_history(job)
    assert len(history) >= 3 and sum(r.files for r in history) == 4
    assert all(r.scheduled_for and r.status == "succeeded" for r in history)
    assert sorted(_visible(root / "out").column("id").to_pylist()) == list(range(4 * ROWS))

    # down for a few seconds: the schedule times missed coalesce into one run at start
    time.sleep(2.5)
    _write(root / "in", 4)
    import logging

    with caplog.at_level(logging.WARNING, logger="arrowscore.schedule"):
        [report] = engine.run_job(job, once=False, max_runs=1)
    assert report.files == 1
    assert "scheduled runs of job 'scores' were missed while it was down" in caplog.text
    last = run_history(job)[-1]
    assert last.scheduled_for < last.started  # the run for the missed times, at once


def test_a_rerun_refuses_what_would_not_repeat_the_run(job, tmp_path):
    first = engine.run_job(job)
    _write(tmp_path / "in", 1, shift=3.0)  # replaced in place since
    with pytest.raises(ConfigError, match=r"1 of the 3 files run \w+ scored changed or are gone since \(.*f01.parquet\)"):
        engine.run_job(job, rerun=first.run_id, output=tmp_path / "again")
    second = engine.run_job(job)
    engine.save_model(tmp_path / "model", _triple, signature=SIGNATURE, overwrite=True)  # the local model saved anew
    with pytest.raises(ConfigError, match=r"the model .* has changed since run \w+ \(version mlmodel-\w+, now "):
        engine.run_job(job, rerun=second.run_id, output=tmp_path / "again")
    with pytest.raises(ConfigError, match=r"--rerun RUN_ID needs --output DIR"):
        engine.run_job(job, rerun=second.run_id)
    assert not (tmp_path / "again").exists()
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "keep.txt").write_text("someone's")
    with pytest.raises(ConfigError, match=r"--output .*again exists; a rerun writes a new directory"):
        engine.run_job(job, rerun=first.run_id, output=tmp_path / "again")


def test_a_job_without_a_schedule_needs_once(job):
    out = _cli("run", job)
    assert out.returncode == 2 and "the job has no schedule" in out.stderr


def test_a_commit_cut_short_is_finished_or_undone_by_the_next_run(job):
    """The two states a kill can leave a file's commit in, written as a killed run leaves them."""
    from engine.scheduler.catchup import file_key
    from engine.scheduler.ledger import FileRecord, Ledger

    root, out = job.parent, job.parent / "out"
    first = engine.run_job(job)
    version = first.model_version
    ledger = Ledger(str(root / ".out.arrowscore.ledger.sqlite"))
    old = ledger.files()

    def replaced(i: int) -> tuple[FileRecord, Path]:
        path = _write(root / "in", i, shift=50.0)
        stat = path.stat()
        part = out / f"part-{file_key(str(path), stat.st_size, stat.st_mtime_ns, version)}.parquet"
        return FileRecord(str(path), stat.st_size, stat.st_mtime_ns, str(job), version, (str(part),), ROWS, ROWS, 0,
                          "killed-run", "now"), part

    # killed after the part file was moved into place, before the ledger recorded it
    done, part = replaced(0)
    ids = np.arange(0, ROWS)
    pq.write_table(pa.table({"id": ids, "prediction": ids * 0.0 - 1.0}), part)  # marked: a run would not write -1
    ledger.begin(done)
    # killed before its part file was moved into place
    cut, missing = replaced(1)
    ledger.begin(cut)
    ledger.close()

    report = engine.run_job(job)
    assert [Path(p.path).name for p in report.planned] == ["f01.parquet"]  # f00 was finished, not scored again
    table = _visible(out).sort_by("id")
    assert table.column("id").to_pylist() == list(range(3 * ROWS))
    predictions = table.column("prediction").to_numpy()
    assert (predictions[:ROWS] == -1.0).all()  # the part the killed run made visible, recorded as it was
    np.testing.assert_allclose(predictions[ROWS:2 * ROWS], (np.arange(ROWS, 2 * ROWS) * 0.5 + 50.0) * 2)
    assert not any(Path(p).exists() for p in old[str(root / "in" / "f00.parquet")].outputs)
    assert missing.exists()  # scored by this run under the name the killed one meant
    assert not Ledger(str(root / ".out.arrowscore.ledger.sqlite"), readonly=True).pending()


# ---- found by a README-only user ---------------------------------------------------------------------
def test_an_unreadable_file_does_not_hold_up_the_others(job):
    """One half-written or corrupt file failed every run before the files listed after it were scored."""
    inp, out = job.parent / "in", job.parent / "out"
    bad = inp / "f01.parquet"
    good = bad.read_bytes()
    bad.write_bytes(good[:200])  # cut short, as a file still being copied in
    _write(inp, 3)
    result = _cli("run", job, "--once")
    assert result.returncode == 2, result.stderr
    assert "f01.parquet" in result.stderr.strip().splitlines()[-1] and "1 of 4 input files" in result.stderr
    assert sorted(_visible(out).column("id").to_pylist()) == [*range(ROWS), *range(2 * ROWS, 4 * ROWS)]
    assert run_history(job)[-1].status == "failed" and run_history(job)[-1].files == 3
    bad.write_bytes(good)  # the copy finishes: the next run scores it, and only it
    assert engine.run_job(job).files == 1
    assert sorted(_visible(out).column("id").to_pylist()) == list(range(4 * ROWS))


@pytest.mark.parametrize("place", ["state-in-input", "output-in-model", "state-in-model"])
def test_paths_that_overlap_are_refused_before_anything_is_written(tmp_path, place):
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()
    _write(tmp_path / "in", 0)
    keys = {"state-in-input": {"state": "in/ledger.sqlite"}, "output-in-model": {"output": "model/out/"},
            "state-in-model": {"state": "model/ledger.sqlite"}}[place]
    job = _job(tmp_path, model, **keys)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match="overlap"):
        engine.run_job(job)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    for args in (("run", job, "--dry-run"), ("run", job, "--once")):
        result = _cli(*args)
        assert result.returncode == 2 and "overlap" in result.stderr, result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_another_jobs_ledger_is_refused_by_every_command(job):
    engine.run_job(job)
    text = job.read_text().replace("name: scores", "name: other")
    other = job.parent / "other.yaml"
    other.write_text(text)
    for args in (("run", other, "--once"), ("run", other, "--dry-run"), ("runs", other)):
        result = _cli(*args)
        assert result.returncode == 2 and "belongs to job 'scores', not 'other'" in result.stderr, (args, result.stderr)
