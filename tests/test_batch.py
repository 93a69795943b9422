"""Batch scoring over Parquet (engine.score, arrowscore score) with MLflow-logged models."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import engine
import contract
from compare import assert_same_predictions
from connectors.parquet import ParquetSource
from engine import ConfigError, ConnectorError, SchemaError
from engine.jobs.progress import Progress

KEYS = ["sklearn_skops", "sklearn_pipeline", "onnx", "xgboost_booster", "lightgbm_sklearn", "pyfunc_custom",
        "pyfunc_code"]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args, "--no-progress"], capture_output=True, text=True,
                          timeout=300)


def write_input(case, directory, files: int = 2) -> pa.Table:
    """The case's rows plus an 'id' column, split over ``files`` Parquet files; returns the whole table."""
    table = case.arrow_input.append_column("id", pa.array(np.arange(case.arrow_input.num_rows) * 10))
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        pq.write_table(table.slice(a, b - a), directory / f"in-{i}.parquet", row_group_size=7)
    return table


def read_sorted(path) -> pa.Table:
    return pq.read_table(path).sort_by("id")


@pytest.mark.parametrize("key", KEYS)
def test_outputs_equal_mlflow_row_for_row(logged_models, tmp_path, key):
    case = logged_models[key]
    table = write_input(case, tmp_path / "in")
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id"],
                          batch_rows=16, params=case.params)
    assert report.rows == report.rows_scored == table.num_rows and report.dead_lettered == 0
    assert report.input_files == 2 and len(report.output_files) == 2
    assert (tmp_path / "out" / "_SUCCESS").exists()
    out = read_sorted(tmp_path / "out")
    assert out.column("id").to_pylist() == table.column("id").to_pylist()
    assert_same_predictions(out.drop_columns(["id"]), case.expected)
    # input order is kept within each output file
    for path in report.output_files:
        ids = pq.read_table(path).column("id").to_pylist()
        assert ids == sorted(ids)


def test_only_needed_columns_are_read(logged_models, tmp_path, monkeypatch):
    case = logged_models["xgboost_booster"]
    table = write_input(case, tmp_path / "in", files=1).append_column("blob", pa.array(["x" * 100] * case.arrow_input.num_rows))
    pq.write_table(table, tmp_path / "in" / "in-0.parquet")
    model = engine.load_model(case.uris["path"])
    read = []  # what engine.score asks the Parquet reader for (the real reader still reads)
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, columns=None, **kw: read.append(columns) or real(self, i, columns=columns, **kw))
    report = engine.score(model, tmp_path / "in", tmp_path / "out", keep_columns=["id"])
    assert read and all(cols == model.input_columns + ["id"] for cols in read), read
    assert report.rows_scored == table.num_rows
    assert ParquetSource(tmp_path / "in").num_rows == table.num_rows  # known before reading, from the footers


def test_partitioned_input_and_output(logged_models, tmp_path):
    case = logged_models["lightgbm_booster"]
    table = case.arrow_input.append_column("id", pa.array(range(case.arrow_input.num_rows)))
    table = table.append_column("region", pa.array(["north", "south"] * (table.num_rows // 2)))
    pq.write_to_dataset(table, tmp_path / "in", partition_cols=["region"])
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id", "region"],
                          partition_by="region")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_SUCCESS", "region=north", "region=south"]
    out = pq.read_table(tmp_path / "out", partitioning="hive").sort_by("id")
    assert out.num_rows == report.rows == table.num_rows
    np.testing.assert_allclose(out.column("prediction").to_numpy(), np.asarray(case.expected)[out.column("id").to_numpy()],
                               rtol=1e-6)
    assert [str(v) for v in out.column("region").to_pylist()] == table.sort_by("id").column("region").to_pylist()


def test_modes(logged_models, tmp_path):
    case = logged_models["onnx"]
    write_input(case, tmp_path / "in")
    out = tmp_path / "out"
    first = engine.score(case.uris["path"], tmp_path / "in", out, keep_columns=["id"])
    with pytest.raises(ConnectorError, match=r"output .* is not empty \(3 files\); .*mode 'overwrite' or 'append'"):
        engine.score(case.uris["path"], tmp_path / "in", out, keep_columns=["id"])
    engine.score(case.uris["path"], tmp_path / "in", out, mode="append", keep_columns=["id"])
    assert pq.read_table(out).num_rows == 2 * first.rows
    engine.score(case.uris["path"], tmp_path / "in", out, mode="overwrite", keep_columns=["id"])
    assert pq.read_table(out).num_rows == first.rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.arrowscore")]  # no staging left


def test_dead_letter_rows(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    table = write_input(case, tmp_path / "in", files=1)
    f0 = table.column("f0").to_pylist()
    bad_rows = {3, 17, 18, 30}
    f0 = [None if i in bad_rows else v for i, v in enumerate(f0)]
    pq.write_table(table.set_column(0, "f0", pa.array(f0)), tmp_path / "in" / "in-0.parquet")
    dead = tmp_path / "rejected" / "dead.parquet"
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(dead), batch_rows=8)
    assert report.dead_lettered == len(bad_rows)
    assert report.rows_scored + report.dead_lettered == report.rows == table.num_rows
    rejected = pq.read_table(dead)
    assert sorted(rejected.column("_source_row").to_pylist()) == sorted(bad_rows)
    assert all("columns ['f0'] hold nulls" in r for r in rejected.column("_error").to_pylist())
    assert set(rejected.column("_source_file").to_pylist()) == {str(tmp_path / "in" / "in-0.parquet")}
    out = read_sorted(tmp_path / "out")
    keep = [i for i in range(table.num_rows) if i not in bad_rows]
    np.testing.assert_allclose(out.column("prediction").to_numpy(), np.asarray(case.expected)[keep], rtol=1e-6)


def test_fail_names_file_rows_and_column(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    table = write_input(case, tmp_path / "in", files=1)
    f3 = [None if i == 21 else v for i, v in enumerate(table.column("f3").to_pylist())]
    pq.write_table(table.set_column(3, "f3", pa.array(f3)), tmp_path / "in" / "in-0.parquet")
    with pytest.raises(SchemaError, match=r"in-0.parquet rows 16-31: .*\['f3'\] hold nulls"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", batch_rows=16)
    assert not (tmp_path / "out").exists()  # nothing visible after a failed job


def test_corrupt_file(logged_models, tmp_path):
    case = logged_models["onnx"]
    write_input(case, tmp_path / "in")
    (tmp_path / "in" / "in-1.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConnectorError, match=r"in-1.parquet.*fix or remove that file"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_schema_mismatch_across_files(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    table = write_input(case, tmp_path / "in")
    pq.write_table(table.set_column(0, "f0", pa.array(["text"] * table.num_rows)), tmp_path / "in" / "in-1.parquet")
    # each file meets the signature on its own: the string column is refused, naming its file
    with pytest.raises(SchemaError, match=r"in-1.parquet rows 0-\d+: column 'f0' is string"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out")


def test_empty_files_and_zero_row_input(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    table = write_input(case, tmp_path / "in", files=1)
    pq.write_table(table.slice(0, 0), tmp_path / "in" / "in-1.parquet")  # a valid file with no rows
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id"])
    assert report.rows == report.rows_scored == table.num_rows
    (tmp_path / "zero").mkdir()
    pq.write_table(table.slice(0, 0), tmp_path / "zero" / "empty.parquet")
    report = engine.score(case.uris["path"], tmp_path / "zero", tmp_path / "out0", keep_columns=["id"])
    assert report.rows == 0
    out = pq.read_table(tmp_path / "out0")
    assert out.num_rows == 0 and out.schema.names == ["id", "prediction"]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConnectorError, match="holds no files"):
        engine.score(case.uris["path"], tmp_path / "nothing", tmp_path / "out1")


def test_keep_column_clash_and_rename(logged_models, tmp_path):
    case = logged_models["onnx"]
    table = write_input(case, tmp_path / "in").append_column("prediction", pa.array([0] * case.arrow_input.num_rows))
    (tmp_path / "in" / "in-1.parquet").unlink()
    pq.write_table(table, tmp_path / "in" / "in-0.parquet")
    with pytest.raises(ConfigError, match=r"keep_columns \['prediction'\] clash .*--rename old=new"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id", "prediction"])
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id", "prediction"],
                          rename={"prediction": "score"})
    assert pq.read_table(report.output_files[0]).schema.names == ["id", "prediction", "score"]


def test_bad_options():
    with pytest.raises(ConfigError, match="needs a path for the rejected rows"):
        engine.ScoreOptions(on_error="dead-letter")
    with pytest.raises(ConfigError, match=r"mode 'replace' is not one of \('error', 'overwrite', 'append'\)"):
        engine.ScoreOptions(mode="replace")
    with pytest.raises(ConfigError, match=r"runner 'dask' is not one of \['local', 'ray', 'spark'\]"):
        engine.score("m", "in", "out", runner="dask")
    with pytest.raises(ConfigError, match=r"the ray runner has no options \['actor'\]; it takes \['actors', 'address'"):
        engine.score("m", "in", "out", runner="ray", runner_options={"actor": 2})
    with pytest.raises(ConfigError, match="actors must be at least 1, got 0"):
        engine.score("m", "in", "out", runner="ray", runner_options={"actors": 0})
    with pytest.raises(ConfigError, match="cpus_per_actor must be above 0"):
        engine.RayOptions(cpus_per_actor=0)
    for warm in (0.5, -5, float("nan"), float("inf"), "10", True):  # nan hung the pool's idle timer: never expired
        with pytest.raises(ConfigError, match=r"keep_warm_s takes seconds: 0 .* or a number from 1 on, got"):
            engine.RayOptions(keep_warm_s=warm)
    with pytest.raises(ConfigError, match="runner_options for the local runner are LocalOptions or a dict, not RayOptions"):
        engine.score("m", "in", "out", runner_options=engine.RayOptions(actors=2))
    with pytest.raises(ConfigError, match="compression 'lzzz' is not one this pyarrow writes"):
        engine.ScoreOptions(compression="lzzz")
    assert engine.ScoreOptions(keep_columns="id").keep_columns == ("id",)  # one name, not its letters


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(1000, enabled=True, stream=stream)
    progress.add(250)
    progress.close()
    last = stream.getvalue().strip().split("\r")[-1]
    assert "250/1,000 rows" in last and "25.0%" in last and "rows/s" in last


def test_s3_paths_through_a_local_s3_server(logged_models, tmp_path, s3):
    """A real S3 API (moto's server on 127.0.0.1) for input, output and dead letters."""
    import pyarrow.fs as pafs

    fs, port = s3
    fs.create_dir("data")
    case = logged_models["onnx"]
    table = write_input(case, tmp_path / "in")
    for f in sorted((tmp_path / "in").iterdir()):
        with fs.open_output_stream(f"data/in/{f.name}") as out:
            out.write(f.read_bytes())
    q = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    report = engine.score(case.uris["path"], f"s3://data/in{q}", f"s3://data/out{q}", keep_columns=["id"])
    assert report.rows_scored == table.num_rows
    names = sorted(i.path for i in fs.get_file_info(pafs.FileSelector("data/out", recursive=True)))
    assert names == ["data/out/_SUCCESS", "data/out/part-00000.parquet", "data/out/part-00001.parquet"]
    out = pq.read_table("data/out", filesystem=fs).sort_by("id")
    assert_same_predictions(out.drop_columns(["id"]), case.expected)
    with pytest.raises(ConnectorError, match="is not empty"):
        engine.score(case.uris["path"], f"s3://data/in{q}", f"s3://data/out{q}")
    engine.score(case.uris["path"], f"s3://data/in{q}", f"s3://data/out{q}", mode="overwrite", keep_columns=["id"])
    assert pq.read_table("data/out", filesystem=fs).num_rows == table.num_rows
    leftovers = fs.get_file_info(pafs.FileSelector("data/out", recursive=True))
    assert not [i.path for i in leftovers if "_temporary" in i.path]


def test_cli_score(logged_models, tmp_path):
    case = logged_models["pyfunc_custom"]
    table = write_input(case, tmp_path / "in")
    out = subprocess.run([sys.executable, "-m", "engine", "score", case.uris["path"], str(tmp_path / "in"),
                          str(tmp_path / "out"), "--keep-columns", "id", "--batch-rows", "8", "--no-progress",
                          "--params", json.dumps(case.params)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"scored {table.num_rows:,} of {table.num_rows:,} rows from 2 files" in out.stdout
    res = read_sorted(tmp_path / "out")
    np.testing.assert_allclose(res.column("a").to_numpy(), case.expected.to_numpy(), rtol=1e-6)
    bad = subprocess.run([sys.executable, "-m", "engine", "score", case.uris["path"], str(tmp_path / "in"),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "ConnectorError: output" in bad.stderr and "--mode" in bad.stderr


def test_glob_input_compression_and_row_groups(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    table = write_input(case, tmp_path / "in", files=2)
    pq.write_table(table.slice(0, 5), tmp_path / "in" / "other.parquet")  # not matched by the glob
    report = engine.score(case.uris["path"], str(tmp_path / "in" / "in-*.parquet"), tmp_path / "out",
                          keep_columns=["id"], compression="zstd", row_group_rows=8)
    assert report.rows == table.num_rows and report.input_files == 2
    meta = pq.ParquetFile(report.output_files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert meta.row_group(0).num_rows == 8
    with pytest.raises(ConnectorError, match="no files match"):
        engine.score(case.uris["path"], str(tmp_path / "in" / "nope-*.parquet"), tmp_path / "out2")


def test_part_split_into_runs_of_row_groups(tmp_path):
    table = pa.table({"id": np.arange(1_000), "x": np.arange(1_000) * 0.5})
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=100)
    (part,) = ParquetSource(tmp_path / "f.parquet", batch_rows=64).parts()
    pieces = part.split(250)
    assert [p.row_groups for p in pieces] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [p.num_rows for p in pieces] == [200] * 5
    read = pa.Table.from_batches([b for p in pieces for b in p.batches()])
    assert read.equals(table) and max(len(b) for p in pieces for b in p.batches()) == 64
    assert part.split(1_000) == [part]
    assert [p.row_groups for p in part.split(50)] == [(i,) for i in range(10)]  # a run holds at least one group


def test_output_contract(logged_models, tmp_path):
    """Part file per input file in input order, dead letters naming file and row, fail naming file and rows;
    the Ray and Spark suites check the same with contract.check."""
    case = logged_models["xgboost_booster"]
    contract.three_files(case, tmp_path / "in")
    report = engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out", keep_columns=["id"],
                          on_error="dead-letter", dead_letter=str(tmp_path / "dead.parquet"))
    contract.check(report, tmp_path / "out", tmp_path / "dead.parquet")
    with pytest.raises(SchemaError, match=contract.FAIL_MESSAGE):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "failed", batch_rows=8)


def test_flavor_and_cache_dir(logged_models, tmp_path):
    """score takes load_model's flavor and cache_dir (--flavor, --cache-dir): a registry URI is downloaded into
    the given cache, and the python_function flavor gives MLflow's predictions too."""
    case = logged_models["xgboost_booster"]
    write_input(case, tmp_path / "in", files=1)
    report = engine.score(case.uris["alias"], tmp_path / "in", tmp_path / "out", keep_columns=["id"],
                          flavor="python_function", cache_dir=str(tmp_path / "cache"))
    assert report.rows_scored == case.arrow_input.num_rows and any((tmp_path / "cache").iterdir())
    assert_same_predictions(pq.read_table(tmp_path / "out").sort_by("id").drop_columns(["id"]), case.expected)
    with pytest.raises(engine.FlavorNotFound, match="onnx"):
        engine.score(case.uris["path"], tmp_path / "in", tmp_path / "out2", flavor="onnx")


def test_overlapping_paths_are_refused_before_anything_is_touched(logged_models, tmp_path):
    """Output = input under --mode overwrite replaced the input with predictions; an output holding the input
    deleted it; a dead-letter file inside the output vanished at commit. All refused up front now."""
    case = logged_models["xgboost_booster"]
    write_input(case, tmp_path / "all" / "raw")
    before = sorted(p.name for p in (tmp_path / "all" / "raw").iterdir())
    uri = case.uris["path"]
    out = run_cli("score", uri, str(tmp_path / "all" / "raw"), str(tmp_path / "all" / "raw"), "--mode", "overwrite")
    assert out.returncode == 2 and "and input" in out.stderr and "overlap" in out.stderr, out.stderr
    cases = [
        (tmp_path / "all", {}, "output .* and input .* overlap"),                       # output holds the input
        (tmp_path / "all" / "raw" / "scored", {}, "output .* and input .* overlap"),    # output inside the input
        (tmp_path / "out", {"dead_letter": str(tmp_path / "out" / "dead.parquet")}, "dead-letter path .* and output"),
        (tmp_path / "out", {"dead_letter": str(tmp_path / "all" / "raw" / "d.parquet")}, "dead-letter path .* and input"),
    ]
    for output, extra, message in cases:
        on_error = {"on_error": "dead-letter"} if extra else {}
        with pytest.raises(ConfigError, match=message):
            engine.score(uri, tmp_path / "all" / "raw", output, mode="overwrite", **on_error, **extra)
    assert sorted(p.name for p in (tmp_path / "all" / "raw").iterdir()) == before
    assert not (tmp_path / "out").exists()
    # the same directory under another name (a symlink) is the same place
    (tmp_path / "link").symlink_to(tmp_path / "all" / "raw")
    with pytest.raises(ConfigError, match="output .* and input .* overlap"):
        engine.score(uri, tmp_path / "link", tmp_path / "all" / "raw", mode="overwrite")
    assert sorted(p.name for p in (tmp_path / "all" / "raw").iterdir()) == before
    # neighbours whose names share a prefix are not overlaps
    engine.score(uri, tmp_path / "all" / "raw", tmp_path / "all" / "raw2", on_error="dead-letter",
                 dead_letter=str(tmp_path / "all" / "raw2-dead.parquet"))
