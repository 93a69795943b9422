"""PyTorch models logged by real ``mlflow.pytorch.log_model`` (a pickled nn.Module and the torch.export
``pt2`` form, MLflow's default), scored with MLflow's predictions; the device chosen as MLflow chooses it
(model_config, the MLmodel, MLFLOW_DEFAULT_PREDICTION_DEVICE, a GPU when there is one); the chunked
pipeline and half precision. Tests that need a GPU skip on a machine without one, saying so."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from compare import assert_same_predictions
from needs import need

torch = need("torch", "the pytorch flavor's tests (the dev extra installs it)")
import mlflow  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402

import engine  # noqa: E402
from engine.errors import ConfigError, ModelLoadError  # noqa: E402

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
ROWS = 60


class Scaled(torch.nn.Module):
    """k outputs per row, and a ``scale`` param MLflow passes to forward as a keyword."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, k))

    def forward(self, x, scale: float = 1.0):
        return self.net(x) * scale


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 2), torch.nn.Linear(3, 2)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


class TwoOutputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(4, 3)

    def forward(self, x):
        y = self.l(x)
        return y, y.sum(dim=1)


def _x(rows=ROWS, width=4, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)


def _frame(x):
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])


def _list_table(x, name="x"):
    return pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])})


@pytest.fixture(scope="module")
def torch_models(mlflow_store):
    """name -> (models:/ URI of a real log_model, MLflow input, Arrow input, MLflow's prediction)."""
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # MLflow 3.17 refuses its own pickles otherwise
    torch.manual_seed(0)
    x = _x()
    frame = _frame(x)
    scaled = Scaled().eval()
    y = scaled(torch.from_numpy(x)).detach().numpy()
    reqs = ["torch"]  # explicit: skips MLflow's slow requirement inference
    old = os.getcwd()
    os.chdir(mlflow_store)
    out = {}
    try:
        with warnings.catch_warnings(), mlflow.start_run():
            warnings.simplefilter("ignore")
            logged = {
                "pickle_columns": (mlflow.pytorch.log_model(
                    scaled, name="pickle_columns", serialization_format="pickle", pip_requirements=reqs,
                    signature=infer_signature(frame, y, params={"scale": 1.0})), frame, pa.Table.from_pandas(frame)),
                "pickle_tensor": (mlflow.pytorch.log_model(
                    scaled, name="pickle_tensor", serialization_format="pickle", pip_requirements=reqs,
                    signature=infer_signature(x, y, params={"scale": 1.0})), x, _list_table(x)),
                "pt2_tensor": (mlflow.pytorch.log_model(
                    torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).eval(),
                    name="pt2_tensor", input_example=x, pip_requirements=reqs), x, _list_table(x)),
            }
            for key, (info, mlflow_input, arrow_input) in logged.items():
                expected = mlflow.pyfunc.load_model(info.model_uri).predict(mlflow_input)
                out[key] = (info.model_uri, mlflow_input, arrow_input, expected)
            # several tensor inputs: MLflow writes no python_function flavor, only pytorch's own
            z = _x(width=3, seed=1)
            two = TwoInputs().eval()
            info = mlflow.pytorch.log_model(two, name="pt2_two_inputs", input_example=(x, z), pip_requirements=reqs,
                                            signature=infer_signature({"x": x, "z": z}, two(torch.from_numpy(x),
                                                                                           torch.from_numpy(z)).detach().numpy()))
            expected = mlflow.pytorch.load_model(info.model_uri)(torch.from_numpy(x), torch.from_numpy(z)).detach().numpy()
            out["pt2_two_inputs"] = (info.model_uri, None, pa.table({"x": _list_table(x).column(0),
                                                                    "z": _list_table(z).column(0)}), expected)
    finally:
        os.chdir(old)
    return out


@pytest.mark.parametrize("key", ["pickle_columns", "pickle_tensor", "pt2_tensor"])
def test_logged_models_score_as_mlflow_predicts(torch_models, key):
    uri, _, arrow_input, expected = torch_models[key]
    model = engine.load_model(uri)
    assert model.flavor == "pytorch"
    out = model.predict(arrow_input)
    assert out.num_rows == ROWS
    if isinstance(expected, pd.DataFrame):  # MLflow's columns 0..k-1 are our one `prediction` of k values a row
        assert list(expected.columns) == [0, 1, 2] and out.schema.field(0).type.list_size == 3
    assert_same_predictions(out, np.asarray(expected), rtol=1e-5)


def test_pt2_model_with_two_tensor_inputs_takes_them_in_signature_order(torch_models):
    uri, _, arrow_input, expected = torch_models["pt2_two_inputs"]
    meta = yaml.safe_load(open(os.path.join(mlflow.artifacts.download_artifacts(uri), "MLmodel")))
    assert "python_function" not in meta["flavors"]  # only arrowscore serves this one through a pyfunc-like API
    out = engine.load_model(uri).predict(arrow_input)
    np.testing.assert_allclose(np.stack(out.column(0).to_numpy(zero_copy_only=False)), expected, rtol=1e-5)
    swapped = arrow_input.select(["z", "x"])  # by name, not by position
    np.testing.assert_allclose(np.stack(engine.load_model(uri).predict(swapped).column(0).to_numpy(
        zero_copy_only=False)), expected, rtol=1e-5)


def test_params_reach_forward_as_keywords_as_mlflow_passes_them(torch_models):
    uri, mlflow_input, arrow_input, _ = torch_models["pickle_columns"]
    expected = np.asarray(mlflow.pyfunc.load_model(uri).predict(mlflow_input, params={"scale": 2.5}))
    assert_same_predictions(engine.load_model(uri).predict(arrow_input, params={"scale": 2.5}), expected, rtol=1e-5)
    assert not np.allclose(expected, np.asarray(mlflow.pyfunc.load_model(uri).predict(mlflow_input)))


def test_tuple_outputs_become_one_column_each(tmp_path):
    x = _x()
    mlflow.pytorch.save_model(TwoOutputs().eval(), str(tmp_path / "m"), input_example=x, signature=infer_signature(x),
                              pip_requirements=["torch"])
    out = engine.load_model(tmp_path / "m").predict(_list_table(x))
    exported = torch.export.load(str(tmp_path / "m/data/model.pt2")).module()
    y, total = [t.detach().numpy() for t in exported(torch.from_numpy(x))]
    assert out.column_names == ["output_0", "output_1"]
    np.testing.assert_allclose(np.stack(out.column("output_0").to_numpy(zero_copy_only=False)), y, rtol=1e-6)
    np.testing.assert_allclose(out.column("output_1").to_numpy(), total, rtol=1e-6)


# ---- devices ---------------------------------------------------------------------------------------
def test_model_config_device_is_used_and_wins_over_the_mlmodel(torch_models, tmp_path):
    uri = torch_models["pickle_tensor"][0]
    model = engine.load_model(uri, model_config={"device": "cpu"})
    assert next(model.predictor.native.parameters()).device.type == "cpu"
    # an MLmodel that says cuda: model_config's cpu wins; without it, a machine with no GPU says so clearly
    local = tmp_path / "m"
    mlflow.artifacts.download_artifacts(uri, dst_path=str(local))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    meta["flavors"]["python_function"]["config"] = {"device": "cuda"}
    (local / "MLmodel").write_text(yaml.safe_dump(meta))
    assert engine.load_model(local, model_config={"device": "cpu"}).predict(torch_models["pickle_tensor"][2]).num_rows
    if not GPU:
        with pytest.raises(ModelLoadError, match=r"device 'cuda' asked for, but torch .* sees no GPU.*--device cpu"):
            engine.load_model(local)


def test_default_prediction_device_env_is_honoured(torch_models, monkeypatch):
    monkeypatch.setenv("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
    model = engine.load_model(torch_models["pickle_tensor"][0])
    assert next(model.predictor.native.parameters()).device.type == "cpu"
    monkeypatch.setenv("MLFLOW_DEFAULT_PREDICTION_DEVICE", "tpu")
    with pytest.raises(ConfigError, match="device 'tpu' is not one of cpu, cuda, cuda:N"):
        engine.load_model(torch_models["pickle_tensor"][0])


@pytest.mark.skipif(GPU, reason="checks the error on a machine without a GPU")
def test_asking_for_a_gpu_without_one_fails_before_scoring(torch_models):
    for device in ("cuda", "cuda:3"):
        with pytest.raises(ModelLoadError, match="sees no GPU"):
            engine.load_model(torch_models["pickle_tensor"][0], model_config={"device": device})
    with pytest.raises(ConfigError, match="device 'gpu' is not one of"):
        engine.load_model(torch_models["pickle_tensor"][0], model_config={"device": "gpu"})


def test_device_flag_on_the_commands(torch_models, tmp_path):
    uri, _, arrow_input, expected = torch_models["pt2_tensor"]
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    pq.write_table(arrow_input, tmp_path / "in.parquet")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cli = [sys.executable, "-m", "engine"]
    ok = subprocess.run(cli + ["score", local, str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--device", "cpu",
                               "--no-progress"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert_same_predictions(pq.read_table(tmp_path / "out"), expected, rtol=1e-5)
    ok = subprocess.run(cli + ["predict", local, "-i", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "p.parquet"),
                               "--device", "cpu"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert_same_predictions(pq.read_table(tmp_path / "p.parquet"), expected, rtol=1e-5)
    bad = subprocess.run(cli + ["score", local, str(tmp_path / "in.parquet"), str(tmp_path / "o2"), "--device", "gpu0"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "device 'gpu0' is not one of cpu, cuda, cuda:N" in bad.stderr, bad.stderr
    if not GPU:
        for command in (["predict", local, "-i", str(tmp_path / "in.parquet")],
                        ["score", local, str(tmp_path / "in.parquet"), str(tmp_path / "o3")]):
            fail = subprocess.run(cli + command + ["--device", "cuda"], capture_output=True, text=True, env=env)
            assert fail.returncode == 2 and "sees no GPU" in fail.stderr and "Traceback" not in fail.stderr, fail.stderr
            assert not (tmp_path / "o3").exists()


def test_gpu_jobs_plan_on_a_cpu_driver_and_ask_for_larger_batches():
    from engine.jobs.options import ScoreOptions

    gpu = ScoreOptions(device="cuda")
    assert gpu.batch_rows == 262_144 and ScoreOptions().batch_rows == 32_768
    assert ScoreOptions(device="cuda:1", batch_rows=1000).batch_rows == 1000
    assert gpu.load_kwargs()["model_config"] == {"device": "cuda"}
    assert gpu.load_kwargs(driver=True)["model_config"] == {"device": "cpu"}
    assert ScoreOptions(model_config={"device": "cuda"}).device == "cuda"  # either spelling is the job's device
    assert ScoreOptions(model_config={"device": "cuda"}, device="cpu").load_kwargs()["model_config"] == {"device": "cpu"}


# ---- the pipeline: chunks, pinned buffers (on a GPU), half precision -------------------------------
def test_chunked_forward_passes_give_the_whole_batch_result(torch_models):
    uri, _, arrow_input, _ = torch_models["pickle_tensor"]
    whole = engine.load_model(uri)
    chunked = engine.load_model(uri, model_config={"chunk_rows": 7})
    for rows in (60, 13, 1, 60):  # buffers grow, shrink and are reused across batches
        a, b = whole.predict(arrow_input.slice(0, rows)), chunked.predict(arrow_input.slice(0, rows))
        np.testing.assert_allclose(np.stack(b.column(0).to_numpy(zero_copy_only=False)),
                                   np.stack(a.column(0).to_numpy(zero_copy_only=False)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="chunk_rows must be a whole number >= 0"):
        engine.load_model(uri, model_config={"chunk_rows": -1})


@pytest.mark.parametrize("dtype,tolerance", [("bfloat16", 3e-2), ("float16", 3e-3)])
def test_half_precision_is_opt_in_and_within_its_stated_tolerance(torch_models, dtype, tolerance):
    uri, _, arrow_input, _ = torch_models["pickle_tensor"]
    full = np.stack(engine.load_model(uri).predict(arrow_input).column(0).to_numpy(zero_copy_only=False))
    out = engine.load_model(uri, model_config={"dtype": dtype}).predict(arrow_input)
    assert out.schema.field(0).type.value_type == pa.float32()  # results come back as float32
    half = np.stack(out.column(0).to_numpy(zero_copy_only=False))
    assert not np.array_equal(half, full)  # it did run in half precision
    np.testing.assert_allclose(half, full, rtol=tolerance, atol=tolerance)
    with pytest.raises(ConfigError, match="dtype 'int8' is not one of"):
        engine.load_model(uri, model_config={"dtype": "int8"})
    with pytest.raises(ConfigError, match="does not apply to a torch.export"):  # its graph fixes its dtypes
        engine.load_model(torch_models["pt2_tensor"][0], model_config={"dtype": dtype})


@needs_gpu
def test_gpu_scores_as_the_cpu_through_the_pipeline(torch_models):
    uri, _, arrow_input, expected = torch_models["pickle_tensor"]
    big = pa.concat_tables([arrow_input] * 2000)  # 120,000 rows: two chunks of 65,536
    cpu = engine.load_model(uri, model_config={"device": "cpu"}).predict(big)
    gpu_model = engine.load_model(uri, model_config={"device": "cuda"})
    assert next(gpu_model.predictor.native.parameters()).device.type == "cuda"
    for _ in range(2):  # the pinned buffers are reused
        np.testing.assert_allclose(np.stack(gpu_model.predict(big).column(0).to_numpy(zero_copy_only=False)),
                                   np.stack(cpu.column(0).to_numpy(zero_copy_only=False)), rtol=1e-4, atol=1e-5)
    assert_same_predictions(gpu_model.predict(arrow_input), np.asarray(expected), rtol=1e-4)


@needs_gpu
def test_pt2_model_moves_to_the_gpu(torch_models):
    uri, _, arrow_input, expected = torch_models["pt2_tensor"]
    assert_same_predictions(engine.load_model(uri, model_config={"device": "cuda:0"}).predict(arrow_input), expected,
                            rtol=1e-4)


def test_serve_takes_the_device_flag(torch_models, tmp_path):
    from test_serve import Server

    uri, mlflow_input, _, expected = torch_models["pt2_tensor"]
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    server = Server([local, "--device", "cpu"])
    try:
        answer = server.json("POST", "/invocations", {"inputs": mlflow_input.tolist()})
    finally:
        server.stop()
    np.testing.assert_allclose(np.asarray(answer["predictions"]).reshape(-1), np.asarray(expected).reshape(-1),
                               rtol=1e-5)
    if not GPU:
        failed = subprocess.run([sys.executable, "-m", "engine", "serve", local, "--device", "cuda", "--port", "0"],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
                                timeout=120)
        assert failed.returncode == 2 and "sees no GPU" in failed.stderr, failed.stderr
