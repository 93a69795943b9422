"""Ray: a real head node on 127.0.0.1, jobs submitted with `ray job submit`, an actor killed mid-job."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from needs import need  # noqa: E402

ray = need("ray", "the Ray runner suite")

import contract  # noqa: E402
import engine  # noqa: E402
from compare import assert_same_predictions  # noqa: E402

pytestmark = pytest.mark.timeout(300)  # Ray Data can hang without an error when CPUs run out: never wait forever
BIN = Path(sys.executable).parent


WARM = {"keep_warm_s": 30}  # runner options of a job scored by a warm actor pool (engine/runners/raypool.py)


@pytest.fixture
def pools(ray_head):
    """Warm actor pools a test starts are removed at its end (they would hold the test cluster's CPUs)."""
    yield
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "arrowscore":
            ray.kill(ray.get_actor(actor["name"], namespace="arrowscore"), no_restart=True)


def _input(case, directory: Path, files: int = 2) -> pa.Table:
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows)))
    directory.mkdir(parents=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(table.slice(a, b - a), directory / f"in-{i}.parquet")
    return table


@pytest.mark.parametrize("key", ["sklearn_pipeline", "onnx", "xgboost_booster", "lightgbm_sklearn", "pyfunc_custom",
                                 "pyfunc_code"])
def test_same_output_as_local_runner(ray_head, logged_models, tmp_path, key):
    case = logged_models[key]
    table = _input(case, tmp_path / "in")
    report = engine.score(case.uris["alias"], tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"],
                          params=case.params, runner_options={"actors": 2})
    assert report.rows == report.rows_scored == table.num_rows and report.runner == "ray"
    assert (tmp_path / "out" / "_SUCCESS").exists()
    local = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "local", keep_columns=["id"], params=case.params)
    names = [Path(f).name for f in report.output_files]
    assert names == [Path(f).name for f in local.output_files] == ["part-00000.parquet", "part-00001.parquet"]
    for name in names:  # the same files with the same rows in the same order, nothing sorted
        assert pq.read_table(tmp_path / "out" / name).equals(pq.read_table(tmp_path / "local" / name)), name
    assert_same_predictions(pq.read_table(tmp_path / "out").drop_columns(["id"]), case.expected)
    assert local.rows == report.rows


def test_dead_letters_and_modes(ray_head, logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    table = _input(case, tmp_path / "in", files=1)
    f0 = [None if i in (2, 9) else v for i, v in enumerate(table.column("f0").to_pylist())]
    pq.write_table(table.set_column(0, "f0", pa.array(f0)), tmp_path / "in" / "in-0.parquet")
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(tmp_path / "dead.parquet"))
    assert report.dead_lettered == 2 and report.rows_scored == table.num_rows - 2
    assert sorted(pq.read_table(tmp_path / "dead.parquet").column("id").to_pylist()) == [2, 9]
    with pytest.raises(engine.ConnectorError, match="is not empty"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="ray")


def test_gpu_device_asks_ray_for_gpus_and_fails_fast_on_a_cluster_without(ray_head, logged_models, tmp_path):
    """The driver plans on the CPU; the actors would take one GPU each (Ray sets their CUDA_VISIBLE_DEVICES).
    A cluster with no GPUs fails at once with what to do, instead of waiting forever for actors."""
    case = logged_models["xgboost_booster"]
    _input(case, tmp_path / "in", files=1)
    with pytest.raises(engine.ConfigError, match=r"ask for 1 GPU\(s\) each .* the Ray cluster has 0.*--device cpu"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="ray", device="cuda")
    with pytest.raises(engine.ConfigError, match=r"ask for 0.5 GPU\(s\) each"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="ray",
                     runner_options={"gpus_per_actor": 0.5})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="ray", device="cpu")
    assert report.rows_scored == report.rows > 0


@pytest.mark.parametrize("warm", [False, True], ids=["ray-data", "warm-pool"])
def test_output_contract(ray_head, pools, logged_models, tmp_path, warm):
    """The local runner's contract (tests/contract.py): a part file per input file in input order, dead letters
    with the real file and row, and a fail naming the file and rows, although Ray moves rows in blocks."""
    case = logged_models["xgboost_booster"]
    contract.three_files(case, tmp_path / "in")
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(tmp_path / "dead.parquet"), batch_rows=8,
                          runner_options={"actors": 2, **(WARM if warm else {})})
    contract.check(report, tmp_path / "out", tmp_path / "dead.parquet")
    with pytest.raises(engine.SchemaError, match=contract.FAIL_MESSAGE):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "failed", runner="ray", batch_rows=8,
                     runner_options=WARM if warm else {})
    assert not (tmp_path / "failed").exists()


def test_ray_job_submit(ray_head, logged_models, tmp_path):
    case = logged_models["onnx"]
    table = _input(case, tmp_path / "in")
    out = tmp_path / "out"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head["dashboard"], "--",
           str(BIN / "arrowscore"), "score", case.uris["path"], str(tmp_path / "in"), str(out),
           "--runner", "ray", "--keep-columns", "id", "--no-progress"]
    run = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"scored {table.num_rows:,} of {table.num_rows:,} rows" in run.stdout
    result = pq.read_table(out).sort_by("id")
    assert_same_predictions(result.drop_columns(["id"]), case.expected)


def _slow_double(df):
    import time as _time

    _time.sleep(0.05)
    return df["x"] * 2.0


def _slow_job(tmp_path: Path, rows: int):
    """(a slow model, its load log): ``rows`` rows in 4 files under tmp_path/in, x = id."""
    model = engine.save_model(tmp_path / "model", _slow_double, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    (tmp_path / "in").mkdir()
    for i in range(4):
        ids = np.arange(i * rows // 4, (i + 1) * rows // 4)
        pq.write_table(pa.table({"id": ids, "x": ids * 1.0}), tmp_path / "in" / f"f{i}.parquet")
    return model, tmp_path / "loads.txt"


@pytest.mark.parametrize("warm", [False, True], ids=["ray-data", "warm-pool"])
def test_killed_actor_is_replaced_and_no_row_is_lost_or_doubled(ray_head, pools, tmp_path, warm):
    rows = 20_000
    model, log = _slow_job(tmp_path, rows)
    killed = []

    def kill_first_actor():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if log.exists() and log.read_text().strip():
                time.sleep(0.5)  # let it take a few batches first
                pid = int(log.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_actor)
    killer.start()
    report = engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"], batch_rows=250,
                          runner_options={"actors": 1, "load_log": str(log), **(WARM if warm else {})})
    killer.join()
    assert killed, "no actor was killed"
    pids = [int(line.split()[0]) for line in log.read_text().splitlines()]
    assert len(pids) >= 2 and pids[0] in killed  # the pool replaced the killed actor
    out = pq.read_table(tmp_path / "out")
    assert sorted(out.column("id").to_pylist()) == list(range(rows)), "rows lost or doubled"
    np.testing.assert_allclose(out.sort_by("id").column("prediction").to_numpy(), np.arange(rows) * 2.0)
    assert report.rows_scored == rows


def _triple(df):
    return df["x"] * 3.0


def _batch_length(df):
    return df["x"] * 0.0 + len(df)


@pytest.mark.parametrize("warm", [False, True], ids=["ray-data", "warm-pool"])
def test_hive_input_split_files_and_batch_rows_bound(ray_head, pools, tmp_path, monkeypatch, warm):
    """Partition values come from the directory names, as in the local runner; files bigger than a read
    task are read by several tasks; no model call sees more than batch_rows rows although Ray gathers the
    read batches into larger blocks."""
    from connectors.parquet import ParquetSource
    from engine.runners import ray as ray_job

    model = engine.save_model(tmp_path / "model", _batch_length, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    ids = np.arange(30_000)
    table = pa.table({"id": ids, "x": ids * 1.0, "region": pa.array(["north", "south", "east"] * 10_000)})
    pq.write_to_dataset(table, tmp_path / "in", partition_cols=["region"], row_group_size=1_000)
    monkeypatch.setattr(ray_job, "READ_TASK_BYTES", 3_000 * 56)  # id, x, position: 8 bytes a row each, region: 32
    source = ParquetSource(tmp_path / "in", columns=["x", "id", "region"])
    pieces, _ = ray_job._pieces(source.parts(), source.schema, source.columns, 1_000)
    assert len(pieces) == 3 * 4  # 3 files of 10 groups: runs of 3, 3, 3, 1
    report = engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id", "region"],
                          batch_rows=1_000, runner_options=WARM if warm else {})
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert report.rows_scored == out.num_rows == table.num_rows
    assert out.column("region").to_pylist() == table.column("region").to_pylist()
    assert max(out.column("prediction").to_pylist()) == 1_000.0


def _engine_location(df):
    import os as _os
    import sys as _sys

    return df["x"].map(lambda _: _sys.modules["engine"].__file__ + "|" + _os.environ.get("ARROWSCORE_TEST", ""))


def test_ship_code_sends_arrowscore_to_the_workers(ray_head, tmp_path):
    """--ray-ship-code: the actors import the driver's arrowscore from Ray's py_modules, not an installed copy;
    --ray-runtime-env reaches them too."""
    model = engine.save_model(tmp_path / "model", _engine_location, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0]}), tmp_path / "in" / "f.parquet")
    cmd = [str(BIN / "arrowscore"), "score", str(model), str(tmp_path / "in"), str(tmp_path / "out"), "--runner", "ray",
           "--ray-address", ray_head["address"], "--ray-ship-code", "--no-progress",
           "--ray-runtime-env", '{"env_vars": {"ARROWSCORE_TEST": "1"}}']
    # from another directory: Ray puts the driver's working directory first on the workers' sys.path
    run = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (location,) = set(pq.read_table(tmp_path / "out").column("prediction").to_pylist())
    assert "runtime_resources/py_modules_files" in location and location.endswith("|1"), location
    # in a process where Ray is already running, the runtime env cannot be changed: a clear error, not a silent no-op
    with pytest.raises(engine.ConfigError, match="already initialized"):
        engine.score(model, tmp_path / "in", tmp_path / "again", runner="ray", runner_options={"ship_code": True})


def test_actor_on_another_node_unpacks_the_shipped_model_once(logged_models, tmp_path, monkeypatch):
    """What an actor does when the driver's model path is not on its machine (multi-node clusters): it unpacks the
    bytes the driver shipped, once per node, and scores the same as MLflow. Run in-process: one machine cannot
    lack the driver's path."""
    import tempfile

    from engine.runners import ray as ray_job
    from engine.jobs.options import ScoreOptions

    case = logged_models["xgboost_booster"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    (tmp_path / "node-tmp").mkdir()
    packed = ray_job._pack(engine.model.uris.resolve(case.uris["path"]))
    elsewhere = str(tmp_path / "driver-only" / "model")
    actors = [ray_job.ScoreActor(elsewhere, packed, ScoreOptions(), ["in.parquet"]) for _ in range(2)]
    assert len(list((tmp_path / "node-tmp" / "arrowscore-models").iterdir())) == 1  # unpacked once, then reused
    rows = case.arrow_input.num_rows
    result = actors[1](case.arrow_input.append_column(ray_job.POSITION, ray_job.positions(0, 0, rows)))
    out = pa.Table.from_batches(ray_job._unipc(result.column("out")[0]))
    assert result.column("rows").to_pylist() == [rows] and not result.column("dead")[0].is_valid
    assert_same_predictions(out, case.expected)
    with pytest.raises(engine.ConfigError, match="is not on this Ray node"):
        ray_job.ScoreActor(elsewhere, None, ScoreOptions(), [])


def _plus(df):
    return df["x"] * 2.0 + df["y"]


def test_files_with_their_own_types_and_columns(ray_head, tmp_path):
    """Each file meets the signature on its own (issue 11, item 4): no file is cast to another's types,
    and a file lacking a column is dead-lettered whole, by name."""
    signature = pa.schema([pa.field("x", pa.float64(), False), pa.field("y", pa.float64(), False)])
    model = engine.save_model(tmp_path / "model", _plus, signature=signature)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [0, 1], "x": pa.array([1.5, 2.5], pa.float32()), "y": [0.0, 0.0]}),
                   tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"id": [2, 3], "x": [1.0000001, 1e40], "y": [0.0, 0.0]}), tmp_path / "in" / "b.parquet")
    pq.write_table(pa.table({"id": [4], "x": [1.0]}), tmp_path / "in" / "c.parquet")
    report = engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(tmp_path / "rejected.parquet"))
    assert (report.rows_scored, report.dead_lettered) == (4, 1)
    got = pq.read_table(tmp_path / "out").sort_by("id").column("prediction").to_pylist()
    assert got == [3.0, 5.0, 1.0000001 * 2.0, 2e40]
    dead = pq.read_table(tmp_path / "rejected.parquet")
    assert dead.column("_source_file").to_pylist()[0].endswith("c.parquet")
    assert "needs columns ['y']" in dead.column("_error").to_pylist()[0]


@pytest.mark.parametrize("warm", [False, True], ids=["ray-data", "warm-pool"])
def test_a_read_error_is_our_one_line(ray_head, pools, tmp_path, warm):
    """A corrupt input file fails a Ray read task: the error is ours (ConnectorError naming the file, one
    line), not Ray's RayTaskError with a remote traceback."""
    signature = pa.schema([pa.field("x", pa.float64(), False), pa.field("y", pa.float64(), False)])
    model = engine.save_model(tmp_path / "model", _plus, signature=signature)
    (tmp_path / "in").mkdir()
    from test_reliability import _corrupt_a_page

    pq.write_table(pa.table({"x": [1.0], "y": [1.0]}), tmp_path / "in" / "a.parquet")
    rows = np.arange(2_000, dtype=np.float64)
    pq.write_table(pa.table({"x": rows, "y": rows}), tmp_path / "in" / "b.parquet", write_page_checksum=True)
    assert _corrupt_a_page(tmp_path / "in" / "b.parquet")  # the footer reads; a page does not
    with pytest.raises(engine.ConnectorError) as caught:
        engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", runner_options=WARM if warm else {})
    assert type(caught.value) is engine.ConnectorError and "b.parquet" in str(caught.value)
    assert "\n" not in str(caught.value)


def _pool_names() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "arrowscore")


def test_a_warm_pool_serves_later_jobs_of_its_model_until_idle(ray_head, pools, logged_models, tmp_path):
    """keep_warm_s (issue 15, item 6): the second job of a model finds its actors loaded (no new load), with
    other job options; its output is the local runner's, file for file; a changed model directory gets a pool
    of its own; an idle pool removes itself."""
    case = logged_models["onnx"]
    _input(case, tmp_path / "in", files=3)
    model = tmp_path / "model"
    shutil.copytree(case.uris["path"], model)
    log = tmp_path / "loads.txt"
    options = {"actors": 2, "keep_warm_s": 4, "load_log": str(log)}
    engine.score(model, tmp_path / "in", tmp_path / "first", runner="ray", keep_columns=["id"], runner_options=options)
    first = log.read_text().splitlines()
    assert len(first) == 2 and len(_pool_names()) == 2
    report = engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"], batch_rows=7,
                          runner_options=options)
    assert log.read_text().splitlines() == first, "the second job loaded the model again"
    local = engine.score(model, tmp_path / "in", tmp_path / "local", keep_columns=["id"], batch_rows=7)
    names = [Path(f).name for f in report.output_files]
    assert names == [Path(f).name for f in local.output_files] and len(names) == 3
    for name in names:
        assert pq.read_table(tmp_path / "out" / name).equals(pq.read_table(tmp_path / "local" / name)), name
    assert_same_predictions(pq.read_table(tmp_path / "out").drop_columns(["id"]), case.expected)

    time.sleep(0.01)
    (model / "MLmodel").write_text((model / "MLmodel").read_text() + "\n")  # another version of the model
    engine.score(model, tmp_path / "in", tmp_path / "changed", runner="ray", keep_columns=["id"], runner_options=options)
    assert len(log.read_text().splitlines()) == 4 and len(_pool_names()) == 4

    deadline = time.monotonic() + 60
    while _pool_names() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _pool_names(), "idle pools did not remove themselves"
    engine.score(model, tmp_path / "in", tmp_path / "again", runner="ray", keep_columns=["id"], runner_options=options)
    assert len(log.read_text().splitlines()) == 6  # a new pool after the old one went


def test_a_warm_actor_that_ends_mid_job_is_started_again(ray_head, pools, tmp_path):
    """A pool actor removed for good mid-job (Ray will not restart it: ray.kill, or an idle expiry racing a
    slow driver): the driver finds or starts the pool again and scores the pieces it had not got back; no
    row is lost or written twice."""
    rows = 12_000  # 3 s of scoring: the pool is removed well inside it
    model, log = _slow_job(tmp_path, rows)
    killed = []

    def end_the_pool():
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.05)
        time.sleep(0.7)  # loaded, a piece or two under way
        for name in _pool_names():
            ray.kill(ray.get_actor(name, namespace="arrowscore"), no_restart=True)
            killed.append(name)

    killer = threading.Thread(target=end_the_pool)
    killer.start()
    report = engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"], batch_rows=100,
                          runner_options={"actors": 1, "load_log": str(log), **WARM})
    killer.join()
    assert killed and len(log.read_text().splitlines()) == 2  # a second actor, under the same name
    out = pq.read_table(tmp_path / "out")
    assert sorted(out.column("id").to_pylist()) == list(range(rows)), "rows lost or doubled"
    np.testing.assert_allclose(out.sort_by("id").column("prediction").to_numpy(), np.arange(rows) * 2.0)
    assert report.rows_scored == rows


def test_a_scheduled_run_scores_its_files_with_one_warm_pool(ray_head, pools, tmp_path):
    """`arrowscore run` scores each new file as its own job: with keep_warm_s the files after the first find the
    pool loaded (one model load for the run, not one per file), and the next run's files too."""
    import yaml

    model = engine.save_model(tmp_path / "model", _plus, signature=pa.schema([pa.field("x", pa.float64(), False),
                                                                            pa.field("y", pa.float64(), False)]))
    (tmp_path / "in").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"id": [i], "x": [float(i)], "y": [1.0]}), tmp_path / "in" / f"f{i}.parquet")
    log = tmp_path / "loads.txt"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "warm", "model": str(model), "input": "in/", "output": "out/",
                                   "keep_columns": ["id"], "runner": "ray",
                                   "runner_options": {"keep_warm_s": 30, "load_log": str(log)}}))
    assert engine.run_job(job).files == 3
    pq.write_table(pa.table({"id": [3], "x": [3.0], "y": [1.0]}), tmp_path / "in" / "f3.parquet")
    assert engine.run_job(job).files == 1
    assert len(log.read_text().splitlines()) == 1, "the model was loaded again for a later file"
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column("prediction").to_pylist() == [1.0, 3.0, 5.0, 7.0]


def _crash_above_five(df):
    import os as _os

    if (df["x"] > 5).any():
        _os._exit(7)  # a model that kills its process (a native library's fatal error) on some rows
    return df["x"] * 2.0


def test_a_warm_pool_at_its_shortest_idle_time_and_a_model_that_crashes_its_actor(ray_head, pools, tmp_path):
    """keep_warm_s=1 (the least it takes) scores a job: actors never remove themselves while a call is under way
    (at 1 s every job failed: the idle timer fired during the first call's imports). A model that kills its
    process on some rows fails the job with one line naming the file and rows, after one restart by Ray and one
    new pool, not a Ray traceback."""
    rows = 2_000
    model, log = _slow_job(tmp_path, rows)
    report = engine.score(model, tmp_path / "in", tmp_path / "out", runner="ray", keep_columns=["id"], batch_rows=100,
                          runner_options={"keep_warm_s": 1, "load_log": str(log)})
    assert report.rows_scored == rows and len(log.read_text().splitlines()) == 1
    crash = engine.save_model(tmp_path / "crash", _crash_above_five,
                              signature=pa.schema([pa.field("x", pa.float64(), False)]))
    with pytest.raises(engine.ScoringError, match=r"f0.parquet rows 0-499: the Ray actor scoring them died, and again "
                                                  r"when started anew \(.*\); the model may crash its process"):
        engine.score(crash, tmp_path / "in", tmp_path / "crashed", runner="ray", runner_options=WARM)
    assert not (tmp_path / "crashed").exists() or not list((tmp_path / "crashed").glob("*.parquet"))


def test_an_actor_restarted_after_its_model_changed_is_not_used(ray_head, pools, tmp_path):
    """Ray restarts a crashed pool actor from the model path; if the directory changed meanwhile (and later went
    back to the pool's version, mtimes kept: `cp -a`, a rollback), the restarted actor would answer with
    whatever it loaded. It checks the directory against the pool's digest and refuses to start instead."""
    signature = pa.schema([pa.field("x", pa.float64(), False)])
    doubled = engine.save_model(tmp_path / "a", _slow_double, signature=signature)
    tripled = engine.save_model(tmp_path / "b", _triple, signature=signature)
    model, log = tmp_path / "m", tmp_path / "loads.txt"
    shutil.copytree(doubled, model)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"x": [1.0, 2.0]}), tmp_path / "in" / "f.parquet")
    options = {"load_log": str(log), **WARM}
    engine.score(model, tmp_path / "in", tmp_path / "first", runner="ray", runner_options=options)
    pid = int(log.read_text().split()[0])
    shutil.rmtree(model)
    shutil.copytree(tripled, model)
    os.kill(pid, signal.SIGKILL)  # Ray restarts it, from the changed directory
    deadline = time.monotonic() + 60
    while _pool_names() and len(log.read_text().splitlines()) == 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pool_names() and len(log.read_text().splitlines()) == 1, "the restarted actor loaded the other model"
    shutil.rmtree(model)
    shutil.copytree(doubled, model)  # back to the pool's version, file times kept
    engine.score(model, tmp_path / "in", tmp_path / "second", runner="ray", runner_options=options)
    assert pq.read_table(tmp_path / "second").column("prediction").to_pylist() == [2.0, 4.0]


def test_a_model_that_kills_its_actor_fails_the_ray_data_job_in_one_line(ray_head, tmp_path):
    """Without a warm pool: Ray Data restarted the actor and retried its batches forever (a stranger waited 300 s).
    Now a bounded number of restarts, then one line saying what to look for."""
    model, _ = _slow_job(tmp_path, 2_000)
    crash = engine.save_model(tmp_path / "crash", _crash_above_five,
                              signature=pa.schema([pa.field("x", pa.float64(), False)]))
    with pytest.raises(engine.ScoringError, match=r"a Ray actor scoring this job died 3 times .*the model may crash"):
        engine.score(crash, tmp_path / "in", tmp_path / "crashed", runner="ray")
    assert not (tmp_path / "crashed").exists() or not list((tmp_path / "crashed").glob("*.parquet"))


def test_no_address_starts_a_local_ray_beside_a_running_cluster(ray_head, logged_models, tmp_path):
    """No --ray-address and no RAY_ADDRESS is a local Ray of the job's own (README), even on a machine where
    `ray start` runs a cluster: Ray's own default joins that cluster and then refuses the local Ray's sizing."""
    case = logged_models["onnx"]
    table = _input(case, tmp_path / "in")
    env = {k: v for k, v in ray_head["env"].items() if k != "RAY_ADDRESS"}

    def score(cpus: int):
        cmd = [str(BIN / "arrowscore"), "score", case.uris["path"], str(tmp_path / "in"), str(tmp_path / "out"),
               "--runner", "ray", "--ray-num-cpus", str(cpus), "--keep-columns", "id", "--no-progress"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)

    # one CPU holds the actor (0.5) but not a read task (1) beside it: Ray Data waited forever, without an error
    run = score(1)
    assert run.returncode == 2 and "need 1.5 CPUs, but the Ray cluster has 1: pass --ray-num-cpus 2" in run.stderr
    assert not (tmp_path / "out").exists()
    run = score(2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"scored {table.num_rows:,} of {table.num_rows:,} rows" in run.stdout
    assert_same_predictions(pq.read_table(tmp_path / "out").sort_by("id").drop_columns(["id"]), case.expected)
