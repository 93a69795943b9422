"""The arrowscore command, run for real as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from compare import columns_of_expected


def run(*args, cwd=None, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          input=input, env=env)


def test_info(logged_models):
    out = run("info", logged_models["sklearn_pipeline"].uris["path"], "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["flavor"] == "sklearn" and doc["flavors"] == ["python_function", "sklearn"]
    assert "color: string" in doc["inputs"] and "count: int64" in doc["inputs"]
    assert doc["outputs"] == ["prediction: fixed_size_list<item: double>[2]"]
    assert isinstance(doc["requirements_mismatches"], list)


def test_info_reports_requirement_mismatch(logged_models, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(logged_models["xgboost_booster"].uris["path"], model)
    (model / "requirements.txt").write_text("xgboost==0.0.1\nsurely-not-installed-pkg==1.0\nnumpy\n")
    out = run("info", str(model))
    assert out.returncode == 0, out.stderr
    assert "xgboost ==0.0.1 (installed: " in out.stdout
    assert "surely-not-installed-pkg ==1.0 (installed: not installed)" in out.stdout
    assert out.stderr.count("was logged with other packages") == 1  # reported once per load, one line


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_predict_json_formats(logged_models, tmp_path, fmt):
    case = logged_models["xgboost_booster"]
    df = case.arrow_input.to_pandas()
    body = {"dataframe_split": {"columns": list(df.columns), "data": df.to_numpy().tolist()},
            "dataframe_records": df.to_dict(orient="records"),
            "instances": df.to_dict(orient="records"),
            "inputs": {c: df[c].tolist() for c in df.columns}}[fmt]
    path = tmp_path / "in.json"
    path.write_text(json.dumps({fmt: body}))
    out = run("predict", case.uris["path"], "--input", str(path))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(json.loads(out.stdout)["predictions"], case.expected, rtol=1e-6)


def test_predict_tensor_instances(logged_models, tmp_path):
    case = logged_models["onnx"]
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"instances": case.mlflow_input.tolist()}))
    out = run("predict", case.uris["path"], "-i", str(path))
    assert out.returncode == 0, out.stderr
    (expected,) = columns_of_expected(case.expected).values()
    np.testing.assert_allclose(json.loads(out.stdout)["predictions"], expected.reshape(-1), rtol=1e-6)


def test_predict_csv_and_parquet_with_params(logged_models, tmp_path):
    case = logged_models["pyfunc_custom"]
    csv = tmp_path / "in.csv"
    case.arrow_input.to_pandas().to_csv(csv, index=False)
    out_path = tmp_path / "out.parquet"
    out = run("predict", case.uris["path"], "-i", str(csv), "-o", str(out_path), "--params", '{"bias": 1.25}')
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(pq.read_table(out_path).column(0).to_numpy(), case.expected, rtol=1e-6)
    pq_in = tmp_path / "in.parquet"
    pq.write_table(case.arrow_input, pq_in)
    out = run("predict", case.uris["path"], "-i", str(pq_in), "-o", str(tmp_path / "out.csv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == '"a"'  # the signature names the output 'a'


def test_predict_bad_input_gives_message_and_exit_2(logged_models, tmp_path):
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"dataframe_records": [{"f0": 1.0}]}))
    out = run("predict", logged_models["xgboost_booster"].uris["path"], "-i", str(path))
    assert out.returncode == 2
    assert "SchemaMismatch: the model needs columns ['f1', 'f2'" in out.stderr
    assert "Traceback" not in out.stderr
    path.write_text('{"columns": ["a"], "data": [[1]]}')
    out = run("predict", logged_models["xgboost_booster"].uris["path"], "-i", str(path))
    assert out.returncode == 2 and "exactly one of the keys" in out.stderr


def test_unwritable_output_is_one_line_not_a_traceback(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    path = tmp_path / "in.parquet"
    pq.write_table(case.arrow_input, path)
    out = run("predict", case.uris["path"], "-i", str(path), "-o", str(tmp_path / "no" / "such" / "out.json"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "arrowscore: ConfigError: output directory" in out.stderr and "no/such" in out.stderr
    out = run("score", case.uris["path"], str(path), str(tmp_path / "out"), "--compression", "lzzz")
    assert out.returncode == 2 and "compression 'lzzz' is not one this pyarrow writes" in out.stderr


def test_console_script_installed():
    import shutil

    exe = shutil.which("arrowscore", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the arrowscore console script is not installed next to this interpreter"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "info" in out.stdout and "predict" in out.stdout


# ---- errors: one line naming the value and what to do; exit 2 for what arrowscore refuses, 1 for what failed --
def _double(df):
    return df["x"] * 2.0


def _raise(df):
    raise RuntimeError("the model's own bug")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny function model, one that raises, and a two-file Parquet input."""
    import engine
    import pyarrow as pa

    root = tmp_path_factory.mktemp("cli-errors")
    schema = pa.schema([pa.field("x", pa.float64(), False)])
    engine.save_model(root / "model", _double, signature=schema)
    engine.save_model(root / "raises", _raise, signature=schema)
    (root / "in").mkdir()
    for i in range(2):
        pq.write_table(pa.table({"id": [i * 10, i * 10 + 1], "x": [0.5, 1.5]}), root / "in" / f"f{i}.parquet")
    return root


def _one_line(out, code: int, *needles: str) -> None:
    """Exit ``code``, no traceback, and one stderr line holding every needle."""
    assert out.returncode == code, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("arrowscore")]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), out.stderr


def test_bad_params_json_is_one_line_exit_2(small):
    model, src = str(small / "model"), str(small / "in" / "f0.parquet")
    _one_line(run("predict", model, "-i", src, "--params", "{bad"), 2, "--params", "JSON object")
    _one_line(run("score", model, src, str(small / "o1"), "--params", "{bad"), 2, "--params", "JSON object")
    _one_line(run("score", model, src, str(small / "o1"), "--params", "[1]"), 2, "--params", "got list")
    assert not (small / "o1").exists()


def test_unknown_compression_exit_2(small):
    _one_line(run("score", str(small / "model"), str(small / "in"), str(small / "o2"), "--compression", "foo"),
              2, "compression 'foo'", "use snappy")


def test_dead_letters_in_the_output_directory_exit_2(small):
    out = small / "o3"
    for dead in (out, out / "rejected.parquet"):
        _one_line(run("score", str(small / "model"), str(small / "in"), str(out), "--on-error", "dead-letter",
                      "--dead-letter", str(dead)), 2, "overlap", "beside the output")
    assert not out.exists()


def test_predict_unreadable_inputs_exit_2(small, tmp_path):
    model = str(small / "model")
    truncated = tmp_path / "cut.parquet"
    truncated.write_bytes((small / "in" / "f0.parquet").read_bytes()[:100])
    _one_line(run("predict", model, "-i", str(truncated)), 2, "cut.parquet", "Parquet")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _one_line(run("predict", model, "-i", str(empty)), 2, "empty.csv", "empty")
    _one_line(run("predict", model, "-i", str(small / "in")), 2, "is a directory", "arrowscore score")
    _one_line(run("predict", model, "-i", str(tmp_path / "nope.json")), 2, "nope.json", "does not exist")


def test_predict_output_into_a_missing_directory_exit_2(small, tmp_path):
    target = tmp_path / "no" / "such" / "out.json"
    _one_line(run("predict", str(small / "model"), "-i", str(small / "in" / "f0.parquet"), "-o", str(target)),
              2, "directory", str(target.parent), "create it")
    assert not (tmp_path / "no").exists()


def test_on_error_before_the_positionals(small):
    model, src, dead = str(small / "model"), str(small / "in"), str(small / "o4-dead.parquet")
    out = run("score", "--on-error", "dead-letter", model, src, str(small / "o4"), "--dead-letter", dead,
              "--no-progress")
    assert out.returncode == 0, out.stderr
    assert pq.read_table(small / "o4").column("prediction").to_pylist() == [1.0, 3.0, 1.0, 3.0]
    out = run("score", "--on-error", "fail", model, src, str(small / "o5"), "--no-progress")
    assert out.returncode == 0, out.stderr


def test_on_error_misuse_is_a_usage_error(small):
    model, src, dst = str(small / "model"), str(small / "in"), str(small / "o6")
    # the path right after --on-error dead-letter: a stray argument, and the flag that takes it is named
    out = run("score", model, src, dst, "--on-error", "dead-letter", "rejected.parquet")
    assert out.returncode == 2 and "rejected.parquet" in out.stderr and "--dead-letter PATH" in out.stderr
    out = run("score", model, src, dst, "--on-error", "bogus")
    assert out.returncode == 2 and "invalid choice: 'bogus'" in out.stderr
    _one_line(run("score", model, src, dst, "--on-error", "dead-letter"), 2, "needs a path", "--dead-letter")
    _one_line(run("score", model, src, dst, "--dead-letter", "d.parquet"), 2, "--on-error dead-letter")
    assert not (small / "o6").exists()


def test_the_model_raising_is_a_runtime_failure_exit_1(small, tmp_path):
    _one_line(run("score", str(small / "raises"), str(small / "in"), str(tmp_path / "out"), "--no-progress"),
              1, "ScoringError", "the model's own bug")
    assert not (tmp_path / "out").exists()


def test_help_states_the_exit_codes():
    out = run("--help")
    assert out.returncode == 0
    codes = [line.split()[0] for line in out.stdout.split("exit status")[1].splitlines() if line[:3].strip().isdigit()]
    assert codes == ["0", "1", "2", "3", "130"], out.stdout
    assert "UnavailableError" in out.stdout and "retry" in out.stdout


# ---- MLflow's flags: -m/--model-uri, -i/--input-path, -o/--output-path, -t/--content-type, - for stdin/stdout ----
def test_predict_with_mlflows_flags_reads_stdin_and_writes_stdout(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    csv = case.arrow_input.to_pandas().to_csv(index=False)
    out = run("predict", "-m", case.uris["path"], "-i", "-", "-t", "csv", "-o", "-", input=csv)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(json.loads(out.stdout)["predictions"], case.expected, rtol=1e-6)
    # no -i: stdin, JSON by default (as `mlflow models predict`)
    records = json.dumps({"dataframe_records": case.arrow_input.to_pylist()})
    out = run("predict", "--model-uri", case.uris["path"], input=records)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(json.loads(out.stdout)["predictions"], case.expected, rtol=1e-6)
    # -t decides over the extension; without it, an unknown extension is refused, naming -t
    odd = tmp_path / "rows.txt"
    odd.write_text(csv)
    out = run("predict", "-m", case.uris["path"], "--input-path", str(odd), "--content-type", "csv",
              "--output-path", str(tmp_path / "p.parquet"))
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(pq.read_table(tmp_path / "p.parquet").column(0).to_numpy(), case.expected, rtol=1e-6)
    _one_line(run("predict", "-m", case.uris["path"], "-i", str(odd)), 2, "rows.txt", "-t/--content-type")


def test_predict_parquet_on_stdin(small):
    data = (small / "in" / "f0.parquet").read_bytes()
    out = subprocess.run([sys.executable, "-m", "engine", "predict", "-m", str(small / "model"), "-t", "parquet"],
                         input=data, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"] == [1.0, 3.0]


def test_score_with_flags_instead_of_positionals(small):
    out = run("score", "-m", str(small / "model"), "-i", str(small / "in"), "-o", str(small / "flags"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert pq.read_table(small / "flags").column("prediction").to_pylist() == [1.0, 3.0, 1.0, 3.0]
    # a mix: the flag takes its argument, the positionals fill the others in order
    out = run("score", str(small / "in"), "--model-uri", str(small / "model"), str(small / "mixed"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert pq.read_table(small / "mixed").num_rows == 4


def test_model_uri_given_twice_or_not_at_all_is_a_usage_error(small):
    model, src = str(small / "model"), str(small / "in")
    out = run("score", "-m", model, model, src, str(small / "twice"))
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr and "-m/--model-uri given as a flag" in out.stderr
    assert "usage: arrowscore score" in out.stderr
    out = run("predict", "-i", str(small / "in" / "f0.parquet"))
    assert out.returncode == 2 and "MODEL_URI is missing; give it as an argument or with -m/--model-uri" in out.stderr
    out = run("score", src, str(small / "never"), "--no-progress")
    assert out.returncode == 2 and "OUTPUT is missing" in out.stderr
    assert not (small / "twice").exists() and not (small / "never").exists()


# ---- --version, and the log flags before or after the subcommand --------------------------------------------
def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"arrowscore {version('arrowscore')}", out.stdout


def _chatty(df):
    import logging

    logging.getLogger("otherlib").debug("otherlib-debug-line")
    logging.getLogger("otherlib").warning("otherlib-warning-line")
    return df["x"] * 2.0


def test_log_flags_after_the_subcommand_set_arrowscores_loggers_only(small, tmp_path):
    import engine
    import pyarrow as pa

    model = str(engine.save_model(tmp_path / "chatty", _chatty, signature=pa.schema([pa.field("x", pa.float64(), False)])))
    src = str(small / "in")

    def score(*flags):
        out = run("score", model, src, str(tmp_path / f"out{len(list(tmp_path.iterdir()))}"), "--no-progress", *flags)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("scored 4 of 4 rows")
        return out.stderr

    default = score()
    assert " INFO arrowscore.local: scoring 4 rows" in default and " DEBUG " not in default
    for verbose in (score("-v"), score("--log-level", "debug")):
        assert " DEBUG arrowscore.model: loaded " in verbose, verbose
        assert "otherlib-debug-line" not in verbose and "otherlib-warning-line" in verbose
    for quiet in (score("-q"), score("--log-level", "WARNING")):
        assert " INFO " not in quiet and "otherlib-warning-line" in quiet, quiet
    before = run("-v", "score", model, src, str(tmp_path / "before"), "--no-progress")
    assert before.returncode == 0 and " DEBUG arrowscore.model: loaded " in before.stderr
    out = run("score", model, src, str(tmp_path / "bad-level"), "--log-level", "chatty")
    assert out.returncode == 2 and "invalid choice: 'CHATTY'" in out.stderr


# ---- exit 3: infrastructure that did not answer, worth a retry -----------------------------------------------
def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_a_cluster_that_is_not_there_exits_3(small, tmp_path):
    from needs import need

    model, src, port = str(small / "model"), str(small / "in"), _closed_port()
    need("ray", "the ray runner")
    _one_line(run("score", model, src, str(tmp_path / "r"), "--runner", "ray", "--ray-address", f"127.0.0.1:{port}"),
              3, "UnavailableError: the Ray cluster at", f"127.0.0.1:{port}", "--ray-address")
    need("pyspark", "the spark runner")
    _one_line(run("score", model, src, str(tmp_path / "s"), "--runner", "spark", "--spark-master",
                  f"spark://127.0.0.1:{port}"), 3, "UnavailableError: the Spark master at", "--spark-master")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_an_object_store_that_does_not_answer_exits_3(small, tmp_path):
    import os

    port = _closed_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true",
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    # input data on the store: pyarrow's S3 client
    out = run("score", str(small / "model"), f"s3://bucket/in?endpoint_override=127.0.0.1:{port}&scheme=http",
              str(tmp_path / "out"), "--no-progress", env=env)
    _one_line(out, 3, "OSError", "NETWORK_CONNECTION")
    # the model on the store: MLflow's download (boto3)
    _one_line(run("info", "s3://bucket/model", env=env), 3, "ModelUnavailable", "the store did not answer",
              "retry later")
    # what the store refuses is the command's to fix: 2
    _one_line(run("score", str(small / "model"), str(tmp_path / "no-such-input"), str(tmp_path / "out")), 2)


def test_a_tracking_server_that_does_not_answer_exits_3():
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    for uri in ("models:/fraud@champion", "models:/fraud/3", "runs:/0123456789abcdef/model"):
        _one_line(run("info", uri, env=env), 3, "ModelUnavailable", "did not answer")


# ---- --json reports and score --dry-run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xgb_input(logged_models, tmp_path_factory):
    """The MLflow-logged XGBoost model's rows with an id, as two Parquet files of 25 and 15 rows."""
    import pyarrow as pa

    case = logged_models["xgboost_booster"]
    root = tmp_path_factory.mktemp("xgb-in")
    table = case.arrow_input.append_column("id", pa.array(range(case.arrow_input.num_rows)))
    (root / "in").mkdir()
    pq.write_table(table.slice(0, 25), root / "in" / "a.parquet")
    pq.write_table(table.slice(25), root / "in" / "b.parquet")
    return case, root


def test_score_json_is_one_object_with_the_report(xgb_input):
    case, root = xgb_input
    out = run("score", case.uris["path"], str(root / "in"), str(root / "scored"), "--keep-columns", "id", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)  # the whole of stdout: one object
    assert (doc["rows"], doc["rows_scored"], doc["dead_lettered"], doc["input_files"]) == (40, 40, 0, 2)
    assert doc["runner"] == "local" and doc["rows_per_s"] > 0 and len(doc["output_files"]) == 2
    scored = pq.read_table(root / "scored").sort_by("id")
    np.testing.assert_allclose(scored.column("prediction").to_numpy(), case.expected, rtol=1e-6)


def test_score_dry_run_plans_without_scoring(xgb_input):
    case, root = xgb_input
    out = run("score", case.uris["path"], str(root / "in"), str(root / "planned"), "--keep-columns", "id",
              "--rename", "prediction=score", "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert [(f["path"].rsplit("/", 1)[-1], f["rows"]) for f in plan["files"]] == [("a.parquet", 25), ("b.parquet", 15)]
    assert plan["rows"] == 40 and plan["flavor"] == "xgboost" and plan["runner"] == "local"
    assert plan["columns_read"] == [f"f{i}" for i in range(16)] + ["id"]
    assert plan["output"]["columns"] == ["id", "score"] and plan["output"]["part_files"] == 2
    assert plan["output"]["mode"] == "error" and plan["output"]["files_there_now"] == 0
    assert not (root / "planned").exists() and not list(root.glob(".planned*"))  # nothing written, no lock
    text = run("score", case.uris["path"], str(root / "in"), str(root / "planned"), "--dry-run")
    assert text.returncode == 0 and "would score 40 rows from 2 files" in text.stdout and "25 rows" in text.stdout
    # refused as the job would be, before anything is scored
    (root / "taken").mkdir()
    (root / "taken" / "x.parquet").write_bytes(b"")
    _one_line(run("score", case.uris["path"], str(root / "in"), str(root / "taken"), "--dry-run"), 2,
              "is not empty", "--mode")
    _one_line(run("score", case.uris["path"], str(root / "in"), str(root / "p2"), "--keep-columns", "nope", "--dry-run"),
              2, "nope")


# ---- the model cache: --cache-dir / ARROWSCORE_CACHE_DIR / XDG_CACHE_HOME, cache list|prune --------------------
def test_cache_list_and_prune(logged_models, tmp_path):
    import os
    import time

    import mlflow

    # sklearn: an xgboost model loaded in a process that also imported MLflow for a registry URI sometimes
    # aborts at interpreter exit (after its output; see the branch report), which is not what this tests
    case = logged_models["sklearn_skops"]
    env = {k: v for k, v in os.environ.items() if k != "ARROWSCORE_CACHE_DIR"}
    env.update(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    csv = case.arrow_input.to_pandas().to_csv(index=False)
    out = run("predict", "-m", case.uris["alias"], "-t", "csv", input=csv, env=env)
    assert out.returncode == 0, out.stderr
    np.testing.assert_allclose(json.loads(out.stdout)["predictions"], case.expected, rtol=1e-6)
    listing = json.loads(run("cache", "list", "--json", env=env).stdout)
    xdg = tmp_path / "xdg" / "arrowscore" / "models"  # the default honours XDG_CACHE_HOME
    assert listing["cache_dir"] == str(xdg) and [e["uri"] for e in listing["entries"]] == [case.uris["alias"]]
    (entry,) = listing["entries"]
    files = [p for p in Path(entry["path"]).rglob("*") if p.is_file()]
    assert entry["bytes"] == sum(p.stat().st_size for p in files) > 0 and time.time() - entry["last_used"] < 120

    # ARROWSCORE_CACHE_DIR for score; --cache-dir wins over it
    env_dir, flag_dir = tmp_path / "env-cache", tmp_path / "flag-cache"
    pq.write_table(case.arrow_input, tmp_path / "in.parquet")
    out = run("score", case.uris["runs"], str(tmp_path / "in.parquet"), str(tmp_path / "o1"), "--no-progress",
              env={**env, "ARROWSCORE_CACHE_DIR": str(env_dir)})
    assert out.returncode == 0, out.stderr
    out = run("score", case.uris["model_id"], str(tmp_path / "in.parquet"), str(tmp_path / "o2"), "--no-progress",
              "--cache-dir", str(flag_dir), env={**env, "ARROWSCORE_CACHE_DIR": str(env_dir)})
    assert out.returncode == 0, out.stderr
    text = run("cache", "list", env={**env, "ARROWSCORE_CACHE_DIR": str(env_dir)}).stdout
    assert case.uris["runs"] in text and "last used" in text and case.uris["model_id"] not in text
    assert case.uris["model_id"] in run("cache", "list", "--cache-dir", str(flag_dir), env=env).stdout

    # prune by age: an entry last used 10 days ago goes, one used now stays
    out = run("predict", "-m", case.uris["runs"], "-t", "csv", input=csv, env=env)  # a second entry in xdg
    assert out.returncode == 0, out.stderr
    old = Path(entry["path"] + ".json")
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    pruned = json.loads(run("cache", "prune", "--older-than-days", "5", "--json", env=env).stdout)
    assert [e["uri"] for e in pruned["entries"]] == [case.uris["alias"]] and not Path(entry["path"]).exists()
    assert [e["uri"] for e in json.loads(run("cache", "list", "--json", env=env).stdout)["entries"]] == [case.uris["runs"]]
    out = run("cache", "prune", "--all", env=env)
    assert out.returncode == 0 and out.stdout.startswith("removed 1 cached models")
    assert "no cached models" in run("cache", "list", env=env).stdout
    _one_line(run("cache", "prune", env=env), 2, "--older-than-days N", "--all")
