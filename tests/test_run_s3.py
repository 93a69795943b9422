"""`arrowscore run` with input, output, dead letters and state on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_run import ROWS, SIGNATURE, _double, _write

import engine
from engine.errors import ConfigError
from engine.scheduler import run_history


def _keys(fs, prefix: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path[len(prefix) + 1:] for i in infos if i.type == pafs.FileType.File)


@pytest.fixture
def s3_job(s3, tmp_path):
    """A job over s3://BUCKET/ (input in/, output out/, rejected rows rejected/), and a function that
    uploads input file i; each test's bucket is its own (moto keeps buckets per process)."""
    fs, port = s3
    bucket = f"runs-{uuid.uuid4().hex[:8]}"
    fs.create_dir(bucket)
    q = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    model = engine.save_model(tmp_path / "model", _double, signature=SIGNATURE)
    (tmp_path / "in").mkdir()

    def upload(i: int, **kw) -> str:
        local = _write(tmp_path / "in", i, **kw)
        with fs.open_output_stream(f"{bucket}/in/{local.name}") as out:
            out.write(local.read_bytes())
        return f"{bucket}/in/{local.name}"

    job = {"name": "s3-scores", "model": str(model), "input": f"s3://{bucket}/in/{q}", "output": f"s3://{bucket}/out/{q}",
           "keep_columns": ["id"], "on_error": "dead-letter", "dead_letter": f"s3://{bucket}/rejected/{q}"}
    return fs, bucket, job, upload


def test_an_incremental_job_on_s3_keeps_its_state_beside_the_output(s3_job):
    fs, b, job, upload = s3_job
    upload(0)
    upload(1, nulls=2)
    first = engine.run_job(job)
    assert (first.files, first.rows_scored, first.dead_lettered) == (2, 2 * ROWS - 2, 2)
    assert len(_keys(fs, f"{b}/rejected")) == 1

    time.sleep(1.1)  # S3's LastModified has one-second resolution: the replacement must be a later second
    upload(2)
    upload(0, shift=100.0)  # replaced in place
    second = engine.run_job(job)
    assert {Path(p.path).name: p.reason.split(" (")[0] for p in second.planned} == {
        "f00.parquet": "replaced in place", "f02.parquet": "new"}
    third = engine.run_job(job)
    assert (third.files, third.input_files) == (0, 3)

    out = _keys(fs, f"{b}/out")
    assert len(out) == 3 and all(k.startswith("part-") for k in out)  # f00's first part is gone, nothing staged
    table = pq.read_table(f"{b}/out", filesystem=fs).sort_by("id")
    ids = np.array([i for i in range(3 * ROWS) if i not in (ROWS, ROWS + 1)])  # f01's first two x are null
    assert table.column("id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(table.column("prediction").to_numpy(), (ids * 0.5 + np.where(ids < ROWS, 100, 0)) * 2)

    state = _keys(fs, f"{b}/.out.arrowscore-state")
    files = [k for k in state if k.startswith("files/")]
    assert len(files) == 3  # one record per input file, replaced when the file is scored again: no log
    assert not [k for k in state if k.startswith(("pending/", "running/"))]
    history = run_history(job)
    assert [(r.files, r.status) for r in history] == [(2, "succeeded"), (2, "succeeded"), (0, "succeeded")]
    assert history[0].versions["flavor"] == "python_function" and history[0].job_hash


def test_a_commit_cut_short_on_s3_is_finished_or_undone_by_the_next_run(s3_job):
    """The two states a kill can leave a file's commit in, as a killed run leaves them, in the object ledger."""
    from engine.scheduler.catchup import file_key
    from engine.scheduler.ledger import FileRecord
    from engine.scheduler.objectledger import open_ledger
    from engine.scheduler.jobfile import load_job

    fs, b, job, upload = s3_job
    for i in range(2):
        upload(i)
    version = engine.run_job(job).model_version
    ledger = open_ledger(load_job(job).ledger_path)
    old_part = ledger.outputs(f"{b}/in/f00.parquet")
    time.sleep(1.1)

    def replaced(i: int) -> tuple[FileRecord, str]:
        path = upload(i, shift=50.0)
        info = fs.get_file_info(path)
        part = f"{b}/out/part-{file_key(path, info.size, info.mtime_ns, version)}.parquet"
        return FileRecord(path, info.size, info.mtime_ns, "m", version, (part,), ROWS, ROWS, 0, "killed", "now"), part

    done, part = replaced(0)  # killed after its part file was moved into place, before the record
    marked = pa.table({"id": np.arange(ROWS), "prediction": np.full(ROWS, -1.0)})
    pq.write_table(marked, part, filesystem=fs)
    ledger.begin(done)
    cut, missing = replaced(1)  # killed before its part file was moved into place
    ledger.begin(cut)

    report = engine.run_job(job)
    assert [Path(p.path).name for p in report.planned] == ["f01.parquet"]  # f00 was finished, not scored again
    table = pq.read_table(f"{b}/out", filesystem=fs).sort_by("id")
    assert table.column("id").to_pylist() == list(range(2 * ROWS))
    assert (table.column("prediction").to_numpy()[:ROWS] == -1.0).all()
    np.testing.assert_allclose(table.column("prediction").to_numpy()[ROWS:], (np.arange(ROWS, 2 * ROWS) * 0.5 + 50) * 2)
    assert not any(fs.get_file_info(p).is_file for p in old_part)
    assert fs.get_file_info(missing).is_file
    assert not open_ledger(load_job(job).ledger_path, readonly=True).pending()


def test_an_object_store_output_at_a_bucket_root_needs_a_state(s3_job):
    _, b, job, _ = s3_job
    root = job["output"].replace(f"{b}/out/", f"{b}/")
    with pytest.raises(ConfigError, match=r"is a bucket's root, so there is no place beside it for the job's state"):
        engine.run_job({**job, "output": root, "on_error": "fail", "dead_letter": None})
    with pytest.raises(ConfigError, match=r"dead_letter .* and output .* must both be local or both on the object"):
        engine.run_job({**job, "dead_letter": "rejected/"})
