"""Nothing lost, nothing silently wrong: busy outputs, failed swaps, dead-letter files, input files
that differ from each other, corrupt pages (issue 11, items 1, 3, 4, 7, 13)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from connectors.parquet import ParquetSink
from connectors.parquet.lock import PathLock
from engine import ConnectorError, SchemaError

SIGNATURE = pa.schema([pa.field("x", pa.float64(), False), pa.field("y", pa.float64(), False)])


def _plus(df):
    return df["x"] * 2.0 + df["y"]


def _slow_plus(df):
    import time as _time

    _time.sleep(0.02)  # long enough a job for a second one to meet it
    return df["x"] * 2.0 + df["y"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return engine.save_model(tmp_path_factory.mktemp("reliability") / "model", _plus, signature=SIGNATURE)


def _write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.arrowscore"))


# ---- item 1: two jobs on one output ------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("busy")
    model = engine.save_model(root / "model", _slow_plus, signature=SIGNATURE)
    for i in range(2):
        ids = np.arange(i * 10_000, (i + 1) * 10_000)
        _write(root / "in" / f"f{i}.parquet", id=ids, x=ids * 0.5, y=np.ones(len(ids)))
    return root, model


def _score(root, model, mode, out="out"):
    return [sys.executable, "-m", "engine", "score", str(model), str(root / "in"), str(root / out),
            "--keep-columns", "id", "--batch-rows", "50", "--mode", mode, "--no-progress"]


def test_second_job_on_a_busy_output_is_refused_and_harms_nothing(slow_job):
    root, model = slow_job
    out = root / "out"
    assert subprocess.run(_score(root, model, "overwrite"), capture_output=True, timeout=300).returncode == 0
    first = subprocess.Popen(_score(root, model, "overwrite"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not [n for n in _siblings(out) if not n.endswith(".lock")] and time.monotonic() < deadline:
        time.sleep(0.05)  # until the first job stages its output
    assert first.poll() is None, "the first job ended before a second one could meet it"
    seconds = [subprocess.Popen(_score(root, model, mode), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for mode in ("error", "overwrite", "append")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in seconds]
    assert first.poll() is None, "the first job ended before the second ones did: the test proved nothing"
    for (code, err), mode in zip(results, ("error", "overwrite", "append")):
        assert code == 2 and "Traceback" not in err, err
        if mode == "error":  # refused as it always was, but now without deleting the live job's staging
            assert "is not empty" in err, err
        else:
            assert "is in use by job" in err and f"pid {first.pid}" in err, err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    table = pq.read_table(out).sort_by("id")
    assert table.column("id").to_pylist() == list(range(20_000))  # nothing lost, nothing doubled
    np.testing.assert_allclose(table.column("prediction").to_numpy(), np.arange(20_000) * 1.0 + 1.0)
    assert _siblings(out) == [], "staging or a lock left behind"


def test_a_failed_swap_puts_the_old_output_back(tmp_path):
    out = tmp_path / "out"
    old = ParquetSink(out)
    old.open()
    old.write(0, pa.record_batch({"prediction": [1.0, 2.0]}))
    old.commit()
    sink = ParquetSink(out, mode="overwrite")
    sink.open()
    sink.write(0, pa.record_batch({"prediction": [9.0]}))
    shutil.rmtree(sink._staging)  # what a second job used to do to a live job's staging
    with pytest.raises(FileNotFoundError):
        sink.commit()
    sink.abort()
    assert pq.read_table(out).column("prediction").to_pylist() == [1.0, 2.0]
    assert _siblings(out) == []
    with PathLock(out):  # released: the next job gets it
        pass


def test_an_output_a_killed_job_moved_aside_comes_back(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0, 2.0], y=[0.0, 0.0])
    out = tmp_path / "out"
    engine.score(model, tmp_path / "in", out)
    # killed between its two renames: the old output aside, its complete staging not yet in place
    os.rename(out, tmp_path / ".out.arrowscore-old-0123456789ab")
    (tmp_path / ".out.arrowscore-0123456789ab").mkdir()
    with pytest.raises(ConnectorError, match="is not empty"):  # the old output is back, so mode error refuses
        engine.score(model, tmp_path / "in", out)
    assert pq.read_table(out).column("prediction").to_pylist() == [2.0, 4.0]
    assert _siblings(out) == []


def test_an_output_holding_only_hidden_entries_is_refused_before_any_work(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=pa.array([None], pa.float64()))  # scoring would fail
    (tmp_path / "out" / ".ipynb_checkpoints").mkdir(parents=True)
    with pytest.raises(ConnectorError, match=r"holds only hidden entries \['.ipynb_checkpoints'\]"):
        engine.score(model, tmp_path / "in", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == [".ipynb_checkpoints"]


# ---- item 3: dead-letter files --------------------------------------------------------------------
def test_an_existing_dead_letter_file_is_never_overwritten_silently(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0, None], y=[1.0, 1.0])
    rejected = tmp_path / "rejected.parquet"
    rejected.write_bytes(b"an earlier job's rejected rows")
    for mode in ("error", "append"):
        with pytest.raises(ConnectorError, match="dead-letter file .* exists"):
            engine.score(model, tmp_path / "in", tmp_path / "out", mode=mode, on_error="dead-letter",
                         dead_letter=str(rejected))
        assert rejected.read_bytes() == b"an earlier job's rejected rows"
        assert not (tmp_path / "out").exists(), "refused after work had started"
    report = engine.score(model, tmp_path / "in", tmp_path / "out", mode="overwrite", on_error="dead-letter",
                          dead_letter=str(rejected))
    assert report.dead_lettered == 1 and pq.read_table(rejected).num_rows == 1
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=[1.0])
    engine.score(model, tmp_path / "in", tmp_path / "out", mode="overwrite", on_error="dead-letter",
                 dead_letter=str(rejected))
    assert not rejected.exists(), "dead letters of the output this job replaced outlived it"


def test_dead_letter_staging_of_a_killed_job_is_removed(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0, None], y=[1.0, 1.0])
    rejected = tmp_path / "dead" / "rejected.parquet"
    rejected.parent.mkdir()
    (rejected.parent / ".rejected.parquet.arrowscore-12345").write_bytes(b"half a file")  # a killed job's
    engine.score(model, tmp_path / "in", tmp_path / "out", on_error="dead-letter", dead_letter=str(rejected))
    assert sorted(os.listdir(rejected.parent)) == ["rejected.parquet"]


def test_rejected_rows_of_files_with_other_schemas_go_to_one_file_losslessly(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", id=[0, 1], x=pa.array([5, None], pa.int8()), y=[1.0, 1.0])
    _write(tmp_path / "in" / "b.parquet", id=[2], x=["a"], y=[1.0])  # x as text: the whole file is refused
    _write(tmp_path / "in" / "c.parquet", id=[3], x=[2.0])  # no y
    report = engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"], on_error="dead-letter",
                          dead_letter=str(tmp_path / "rejected.parquet"))
    assert (report.rows_scored, report.dead_lettered) == (1, 3)
    dead = pq.read_table(tmp_path / "rejected.parquet")
    assert dead.schema.field("x").type == pa.string()  # int8 in one file, string in another: as text
    assert dead.select(["id", "x", "y"]).to_pylist() == [{"id": 1, "x": None, "y": 1.0}, {"id": 2, "x": "a", "y": 1.0},
                                                         {"id": 3, "x": "2", "y": None}]
    assert not [n for n in os.listdir(tmp_path) if "arrowscore" in n], "dead-letter staging left behind"


def test_a_dead_letter_path_that_is_a_directory_is_refused(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=[1.0])
    (tmp_path / "dead").mkdir()
    with pytest.raises(ConnectorError, match="is a directory; name a file in it"):
        engine.score(model, tmp_path / "in", tmp_path / "out", on_error="dead-letter", dead_letter=str(tmp_path / "dead"))


# ---- item 4: files of one dataset that differ ---------------------------------------------------------
def test_each_file_meets_the_signature_on_its_own(model, tmp_path):
    # the first file is float32: later files were cast to it (1e40 -> inf, 1.0000001 -> 1.0)
    _write(tmp_path / "in" / "a.parquet", id=[0, 1], x=pa.array([1.5, 2.5], pa.float32()), y=pa.array([1, 2], pa.int32()))
    _write(tmp_path / "in" / "b.parquet", id=[2, 3], x=[1.0000001, 1e40], y=[0.0, 0.0])
    engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"])
    got = pq.read_table(tmp_path / "out").sort_by("id").column("prediction").to_pylist()
    assert got == [4.0, 7.0, 1.0000001 * 2.0, 2e40]


def test_a_file_lacking_a_model_column_is_refused_by_name(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", id=[0, 1], x=[1.0, 2.0], y=[1.0, 1.0])
    _write(tmp_path / "in" / "b.parquet", id=[2, 3, 4], x=[1.0, 2.0, 3.0])  # no y: it became nulls, then was scored
    with pytest.raises(SchemaError, match=r"b.parquet rows 0-2: the model needs columns \['y'\]"):
        engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"])
    report = engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"], on_error="dead-letter",
                          dead_letter=str(tmp_path / "rejected.parquet"))
    assert (report.rows_scored, report.dead_lettered) == (2, 3)
    dead = pq.read_table(tmp_path / "rejected.parquet")
    assert dead.column("id").to_pylist() == [2, 3, 4]
    assert {os.path.basename(f) for f in dead.column("_source_file").to_pylist()} == {"b.parquet"}
    assert all("needs columns ['y']" in e for e in dead.column("_error").to_pylist())


def test_strings_are_not_parsed_as_numbers(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=[1.0])
    _write(tmp_path / "in" / "b.parquet", x=["2.5"], y=[1.0])
    with pytest.raises(SchemaError, match=r"b.parquet rows 0-0: column 'x' is string"):
        engine.score(model, tmp_path / "in", tmp_path / "out")


def test_a_keep_column_another_file_lacks_is_refused_before_any_work(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", id=[0], x=[1.0], y=[1.0])
    _write(tmp_path / "in" / "b.parquet", x=[1.0], y=[1.0])
    with pytest.raises(ConnectorError, match=r"b.parquet' lacks the column\(s\) \['id'\] \(keep_columns\)"):
        engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("y", [pa.array([5], pa.int32()), pa.array([5.0]), pa.array(["5"])])
def test_a_column_that_is_also_a_hive_partition_key_is_one_clear_error(model, tmp_path, y):
    message = "holds column(s) ['y'] that its directory names also give as hive partition values"
    _write(tmp_path / "in" / "y=1" / "a.parquet", x=[1.0], y=y)
    result = subprocess.run([sys.executable, "-m", "engine", "score", str(model), str(tmp_path / "in"),
                             str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # (above it: the one warning that a pickle runs code)
    assert last.startswith("arrowscore: ConnectorError: ") and message in last, result.stderr


# ---- item 7: page checksums --------------------------------------------------------------------------
CRC = "CRC checksum verification failed"


def _corrupt_a_page(path) -> bool:
    """Flip one byte in the first column's pages where the page checksum catches it (a flip in a page
    header fails differently); False when no flip is caught: the file has no page checksums."""
    meta = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    original = path.read_bytes()
    for at in range(start, start + meta.total_compressed_size):
        data = bytearray(original)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            pq.ParquetFile(path, page_checksum_verification=True).read()
        except OSError as exc:
            if CRC in str(exc):
                return True
    path.write_bytes(original)
    return False


def test_a_corrupt_page_is_a_clear_error_naming_the_file(model, tmp_path):
    rows = np.arange(2_000, dtype=np.float64)
    path = tmp_path / "in" / "a.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"x": rows, "y": rows}), path, write_page_checksum=True)
    assert _corrupt_a_page(path)
    with pytest.raises(ConnectorError, match=rf"cannot read '.*a.parquet'.*{CRC}.*fix or remove that file"):
        engine.score(model, tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_outputs_and_dead_letters_carry_page_checksums(model, tmp_path):
    rows = np.arange(2_000, dtype=np.float64)
    _write(tmp_path / "in" / "a.parquet", x=rows, y=pa.array([None if i % 2 else v for i, v in enumerate(rows)]))
    engine.score(model, tmp_path / "in", tmp_path / "out", on_error="dead-letter",
                 dead_letter=str(tmp_path / "rejected.parquet"))
    for path in [tmp_path / "out" / "part-00000.parquet", tmp_path / "rejected.parquet"]:
        assert _corrupt_a_page(path), f"{path.name} has no page checksums"


def test_small_batches_still_make_whole_row_groups(model, tmp_path):
    """Dead-letter isolation and small --batch-rows hand the sink many small batches: they were written
    as one row group each (1,000 row groups of one row in the output above)."""
    rows = np.arange(2_000, dtype=np.float64)
    _write(tmp_path / "in" / "a.parquet", x=rows, y=pa.array([None if i % 2 else v for i, v in enumerate(rows)]))
    engine.score(model, tmp_path / "in", tmp_path / "out", on_error="dead-letter", batch_rows=100,
                 dead_letter=str(tmp_path / "rejected.parquet"))
    assert pq.ParquetFile(tmp_path / "out" / "part-00000.parquet").metadata.num_row_groups == 1
    engine.score(model, tmp_path / "in", tmp_path / "out2", on_error="dead-letter", batch_rows=100,
                 row_group_rows=300, dead_letter=str(tmp_path / "rejected2.parquet"))
    meta = pq.ParquetFile(tmp_path / "out2" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]


# ---- item 4, as a property: datasets whose files differ in columns and types ---------------------------------
TYPES = {  # arrow type -> values it may hold (exact in float64 or not, nulls)
    pa.int8(): st.integers(-128, 127),
    pa.int64(): st.one_of(st.integers(-1000, 1000), st.sampled_from([2**53 + 1, 2**60, -(2**62) - 1])),
    pa.uint64(): st.one_of(st.integers(0, 1000), st.just(2**64 - 1)),
    pa.float32(): st.floats(width=32, allow_nan=False, allow_infinity=False),
    pa.float64(): st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1.0000001, 1e40])),
    pa.bool_(): st.booleans(),
    pa.string(): st.sampled_from(["1.5", "2", "x"]),
}


@st.composite
def _files(draw):
    files = []
    for _ in range(draw(st.integers(1, 4))):
        rows = draw(st.integers(1, 6))
        columns = {}
        for name in ("x", "y"):
            if draw(st.integers(0, 5)) == 0:
                continue  # this file lacks the column
            type_ = draw(st.sampled_from(list(TYPES)))
            values = draw(st.lists(st.one_of(st.none(), TYPES[type_]) if draw(st.booleans()) else TYPES[type_],
                                   min_size=rows, max_size=rows))
            columns[name] = pa.array(values, type_)
        columns["id"] = pa.array(range(len(files) * 10, len(files) * 10 + rows), pa.int64())
        files.append(pa.table(columns))
    return files


def _exact(value):
    """The value as the float64 the model sees, or None when no lossless float64 exists."""
    if value is None or isinstance(value, str):
        return None
    as_float = float(value)
    return as_float if not isinstance(value, int) or int(as_float) == value else None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=_files())
def test_every_file_is_scored_losslessly_or_refused_by_name(model, files):
    loaded = engine.load_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for i, table in enumerate(files):
            pq.write_table(table, root / "in" / f"f{i}.parquet")
        report = engine.score(loaded, root / "in", root / "out", keep_columns=["id"], on_error="dead-letter",
                              dead_letter=str(root / "rejected.parquet"), progress=False)
        out = {r["id"]: r["prediction"] for r in pq.read_table(root / "out").to_pylist()}
        dead = pq.read_table(root / "rejected.parquet").to_pylist() if report.dead_lettered else []
        rejected = {r["id"]: r for r in dead}
        assert report.rows_scored + report.dead_lettered == sum(t.num_rows for t in files) == len(out) + len(rejected)
        first_refused = None
        for i, table in enumerate(files):
            for row in table.to_pylist():
                x, y = _exact(row.get("x")), _exact(row.get("y"))
                if row["id"] in out:  # scored: only from values that are exact in float64
                    assert x is not None and y is not None, (f"f{i}", row)
                    assert out[row["id"]] == x * 2.0 + y, (f"f{i}", row, out[row["id"]])
                else:  # refused: by its file's name, with a reason
                    reject = rejected[row["id"]]
                    assert reject["_source_file"].endswith(f"f{i}.parquet") and reject["_error"], reject
                    first_refused = first_refused or f"f{i}.parquet"
                    if "x" not in row or "y" not in row:
                        assert "needs columns" in reject["_error"], reject
        if first_refused:  # without dead letters, the job stops naming the first file with a bad row
            with pytest.raises(SchemaError, match=first_refused):
                engine.score(loaded, root / "in", root / "fail", keep_columns=["id"], progress=False)
        else:
            engine.score(loaded, root / "in", root / "fail", keep_columns=["id"], progress=False)


def test_object_store_outputs_are_locked_by_owner_files_with_a_heartbeat(s3):
    """On a real S3 API (moto's server on 127.0.0.1): a second job on a busy output is refused; an
    owner file silent for longer than STALE_S is a dead job's, whose staging goes."""
    import json

    import pyarrow.fs as pafs

    from connectors.parquet import lock

    fs, _ = s3
    fs.create_dir("locks")
    first = ParquetSink("locks/out", filesystem=fs)
    first.open()
    first.write(0, pa.record_batch({"prediction": [1.0]}))
    second = ParquetSink("locks/out", mode="overwrite", filesystem=fs)
    with pytest.raises(ConnectorError, match=f"is in use by job {first.job}"):
        second.open()
    first.commit()
    assert pq.read_table("locks/out", filesystem=fs).num_rows == 1
    # a dead job: its owner file beat long ago, and its staging is still there
    with fs.open_output_stream("locks/out/_temporary/deadjob/_owner.json") as out:
        out.write(json.dumps({"job": "deadjob", "beat": time.time() - lock.STALE_S - 1}).encode())
    with fs.open_output_stream("locks/out/_temporary/deadjob/part-00000.parquet") as out:
        out.write(b"half a file")
    third = ParquetSink("locks/out", mode="overwrite", filesystem=fs)
    third.open()
    third.write(0, pa.record_batch({"prediction": [2.0, 3.0]}))
    third.commit()
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector("locks/out", recursive=True)))
    assert names == ["locks/out/_SUCCESS", "locks/out/part-00000.parquet"]
    assert pq.read_table("locks/out", filesystem=fs).column("prediction").to_pylist() == [2.0, 3.0]


# ---- found by a stranger's test -------------------------------------------------------------------------
def test_partition_values_are_escaped_and_never_leave_the_output(model, tmp_path):
    values = ["x/../../escaped", "../../evil", "a/b", "%2F..", "ok", "a=b"]
    _write(tmp_path / "in" / "a.parquet", id=list(range(len(values))), x=[1.0] * len(values), y=[0.0] * len(values),
           r=values)
    engine.score(model, tmp_path / "in", tmp_path / "work" / "out", keep_columns=["id", "r"], partition_by="r")
    assert sorted(os.listdir(tmp_path / "work")) == ["out"], "a partition value wrote outside the output"
    back = pq.read_table(tmp_path / "work" / "out", partitioning="hive").sort_by("id")
    assert back.column("r").to_pylist() == values  # read back as written


def test_hive_partition_values_stay_strings(model, tmp_path):
    _write(tmp_path / "in" / "zip=02134" / "a.parquet", id=[0], x=[1.0], y=[0.0])
    _write(tmp_path / "in" / "zip=007" / "b.parquet", id=[1], x=[1.0], y=[0.0])
    engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id", "zip"])
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.schema.field("zip").type == pa.string() and out.column("zip").to_pylist() == ["02134", "007"]


def test_a_symlink_to_a_busy_output_is_the_same_output(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=[1.0])
    engine.score(model, tmp_path / "in", tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with PathLock(tmp_path / "real"):  # a job holds the real output
        with pytest.raises(ConnectorError, match="is in use by job"):
            engine.score(model, tmp_path / "in", tmp_path / "link", mode="overwrite")
    engine.score(model, tmp_path / "in", tmp_path / "link", mode="overwrite")
    assert (tmp_path / "link").is_symlink(), "overwrite replaced the link instead of its target"
    assert pq.read_table(tmp_path / "real").num_rows == 1


def test_input_columns_named_like_dead_letter_columns_are_refused(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=[1.0], _source_row=[5])
    with pytest.raises(engine.ConfigError, match=r"\['_source_row'\] .* dead-letter columns"):
        engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["_source_row"], on_error="dead-letter",
                     dead_letter=str(tmp_path / "rejected.parquet"))


def test_the_model_directory_is_never_an_output(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", x=[1.0], y=[1.0])
    with pytest.raises(engine.ConfigError, match="model"):
        engine.score(model, tmp_path / "in", model, mode="overwrite")
    with pytest.raises(engine.ConfigError, match="model"):
        engine.score(model, tmp_path / "in", tmp_path / "out", mode="overwrite", on_error="dead-letter",
                     dead_letter=str(model / "MLmodel"))
    assert (model / "MLmodel").is_file()


def test_dead_letters_of_files_with_other_schemas_keep_input_order(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", id=[0], x=[None], y=[1.0])
    _write(tmp_path / "in" / "b.parquet", id=[1], x=[1.0], y=["bad"])
    _write(tmp_path / "in" / "c.parquet", id=[2], x=[None], y=[1.0])
    engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"], on_error="dead-letter",
                 dead_letter=str(tmp_path / "rejected.parquet"))
    assert pq.read_table(tmp_path / "rejected.parquet").column("id").to_pylist() == [0, 1, 2]


def test_append_refuses_parts_of_another_schema(model, tmp_path):
    _write(tmp_path / "in" / "a.parquet", id=[0], x=[1.0], y=[1.0])
    engine.score(model, tmp_path / "in", tmp_path / "out")
    with pytest.raises(ConnectorError, match="append"):
        engine.score(model, tmp_path / "in", tmp_path / "out", mode="append", keep_columns=["id"])
    assert len([p for p in os.listdir(tmp_path / "out") if p.endswith(".parquet")]) == 1


def _mixed(df):
    return [1.0 if i % 2 else "a" for i in range(len(df))]


def test_a_model_returning_mixed_types_is_one_line(tmp_path):
    mixed = engine.save_model(tmp_path / "mixed", _mixed, signature=SIGNATURE)
    _write(tmp_path / "in" / "a.parquet", x=[1.0, 2.0], y=[1.0, 1.0])
    result = subprocess.run([sys.executable, "-m", "engine", "score", str(mixed), str(tmp_path / "in"),
                             str(tmp_path / "out"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "ScoringError: " in result.stderr and "values of one type" in result.stderr


def test_predict_never_writes_over_its_input(model, tmp_path):
    _write(tmp_path / "in.parquet", x=[1.0], y=[1.0])
    before = (tmp_path / "in.parquet").read_bytes()
    result = subprocess.run([sys.executable, "-m", "engine", "predict", str(model), "-i", str(tmp_path / "in.parquet"),
                             "-o", str(tmp_path / "in.parquet")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is the input" in result.stderr, result.stderr
    assert (tmp_path / "in.parquet").read_bytes() == before
