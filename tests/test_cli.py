"""The arrowscore command, run for real as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from compare import columns_of_expected


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


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
    assert "arrowscore: FileNotFoundError" in out.stderr and "out.json" in out.stderr
    out = run("score", case.uris["path"], str(path), str(tmp_path / "out"), "--compression", "lzzz")
    assert out.returncode == 2 and "compression 'lzzz' is not one this pyarrow writes" in out.stderr


def test_console_script_installed():
    import shutil

    exe = shutil.which("arrowscore", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the arrowscore console script is not installed next to this interpreter"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "info" in out.stdout and "predict" in out.stdout
