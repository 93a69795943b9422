"""ONNX specifics: providers with fallback, session options, several inputs and outputs."""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import onnx
import pyarrow as pa
import pytest
import yaml
from onnx import TensorProto, helper

import engine
from compare import assert_same_predictions
from without import run_without


def _two_in_two_out() -> onnx.ModelProto:
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, 2])
    b = helper.make_tensor_value_info("B", TensorProto.FLOAT, [None, 2])
    s = helper.make_tensor_value_info("Sum", TensorProto.FLOAT, [None, 2])
    p = helper.make_tensor_value_info("Prod", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph([helper.make_node("Add", ["A", "B"], ["Sum"]), helper.make_node("Mul", ["A", "B"], ["Prod"])],
                              "g", [a, b], [s, p])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture
def multi(tmp_path):
    return engine.save_model(tmp_path / "multi", _two_in_two_out())


def test_multiple_inputs_and_outputs(multi):
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    model = engine.load_model(multi)
    out = model.predict({"A": A, "B": B})
    assert out.column_names == ["Sum", "Prod"]
    assert out.schema.field("Sum").type == pa.list_(pa.float32(), 2)
    theirs = mlflow.pyfunc.load_model(str(multi)).predict({"A": A, "B": B})
    assert_same_predictions(out, theirs)


def test_missing_tensor_column_is_named(multi):
    model = engine.load_model(multi)
    with pytest.raises(engine.SchemaError, match=r"the model takes tensors \['A', 'B'\]"):
        model.predict({"A": np.ones((2, 2), np.float32)})


def _edit_mlmodel(path, **onnx_keys):
    doc = yaml.safe_load((path / "MLmodel").read_text())
    doc["flavors"]["onnx"].update(onnx_keys)
    (path / "MLmodel").write_text(yaml.safe_dump(doc))


def test_missing_provider_falls_back_to_cpu_with_one_log_line(multi, caplog):
    _edit_mlmodel(multi, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="arrowscore.flavors.onnx"):
        model = engine.load_model(multi)
    assert model.predictor.native.get_providers() == ["CPUExecutionProvider"]
    lines = [r.getMessage() for r in caplog.records if r.name == "arrowscore.flavors.onnx"]
    assert len(lines) == 1 and "['CUDAExecutionProvider'] are not available" in lines[0]


def test_device_chooses_the_providers(multi, caplog, monkeypatch):
    """model_config's device (--device) over the MLmodel's providers: cpu is the CPU alone; a GPU device takes
    CUDA (or TensorRT) when this onnxruntime has it, else the CPU, said in one log line."""
    import onnxruntime as ort

    from flavors import onnx as onnx_flavor

    _edit_mlmodel(multi, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert engine.load_model(multi, model_config={"device": "cpu"}).predictor.native.get_providers() == \
        ["CPUExecutionProvider"]
    with caplog.at_level(logging.INFO, logger="arrowscore.flavors.onnx"):
        model = engine.load_model(multi, model_config={"device": "cuda:1"})
    lines = [r.getMessage() for r in caplog.records if r.name == "arrowscore.flavors.onnx"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert model.predictor.native.get_providers() == ["CPUExecutionProvider"]
        assert len(lines) == 1 and "device cuda:1 asked for, but this onnxruntime has no GPU provider" in lines[0]
    # what a GPU build of onnxruntime is asked for (the session itself needs the GPU to start)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert onnx_flavor._providers(ort, {"config": {"device": "cuda:1"}}) == \
        [("TensorrtExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    with pytest.raises(engine.ConfigError, match="device 'npu' is not one of"):
        engine.load_model(multi, model_config={"device": "npu"})


def test_session_options_are_honoured(multi):
    """All five of MLflow's onnx_session_options, each set away from ONNX Runtime's default so a dropped one shows."""
    import onnxruntime as ort

    _edit_mlmodel(multi, onnx_session_options={"intra_op_num_threads": 1, "inter_op_num_threads": 1,
                                              "execution_mode": "parallel", "graph_optimization_level": 1,
                                              "extra_session_config": {"session.use_env_allocators": "1"}})
    opts = engine.load_model(multi).predictor.native.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.get_session_config_entry("session.use_env_allocators") == "1"
    # a session reports the mode it runs (sequential for this graph), so check what it was given
    from flavors.onnx import _session_options

    given = _session_options(ort, yaml.safe_load((multi / "MLmodel").read_text())["flavors"]["onnx"])
    assert given.execution_mode == ort.ExecutionMode.ORT_PARALLEL


def test_bad_execution_mode(multi):
    _edit_mlmodel(multi, onnx_session_options={"execution_mode": "sideways"})
    with pytest.raises(engine.ModelLoadError, match="execution_mode 'sideways' is not one of"):
        engine.load_model(multi)


def test_tensor_input_is_fed_without_copy(logged_models):
    """A float32 fixed-size-list column reaches ONNX Runtime as a view of the Arrow buffer."""
    case = logged_models["onnx"]
    model = engine.load_model(case.uris["path"])
    flat = pa.array(case.mlflow_input.reshape(-1))
    batch = pa.record_batch({"input": pa.FixedSizeListArray.from_arrays(flat, 16)})
    feed, predict = model._inputs.build(batch)
    (arr,) = feed.values()
    assert np.shares_memory(arr, flat.to_numpy())
    assert predict is model.predictor.predict


def test_scalar_columns_take_the_column_major_entry(logged_models):
    """16 float columns feed a rewritten graph (features, rows) -> Transpose -> MLP: same predictions."""
    case = logged_models["onnx"]
    model = engine.load_model(case.uris["path"])
    rows = np.tile(case.mlflow_input, (20_000 // len(case.mlflow_input) + 1, 1))
    batch = pa.record_batch({f"f{i}": rows[:, i] for i in range(16)})
    feed, predict = model._inputs.build(batch)
    assert predict is model.predictor.predict_columns
    (arr,) = feed.values()
    assert arr.shape == (16, batch.num_rows) and arr.flags["C_CONTIGUOUS"]
    columnar = model.score_batch(batch).column(0).to_numpy()
    row_major = model.predictor.predict({"X": rows}, None).reshape(-1)  # the original graph, row-major
    np.testing.assert_allclose(columnar, row_major, rtol=1e-5)
    for n in (1, 3):  # small batches too (measured as fast or faster than row-major at every size)
        small = pa.record_batch({f"f{i}": case.mlflow_input[:n, i] for i in range(16)})
        assert model._inputs.build(small)[1] is model.predictor.predict_columns
        np.testing.assert_allclose(model.score_batch(small).column(0).to_numpy(),
                                   model.predictor.predict({"X": case.mlflow_input[:n]}, None).reshape(-1), rtol=1e-5)


def test_column_major_entry_without_onnx_package(logged_models):
    code = (
        "import numpy as np, pyarrow as pa, engine\n"
        f"m = engine.load_model({logged_models['onnx'].uris['path']!r})\n"
        "x = np.random.default_rng(0).normal(size=(20000, 16)).astype('float32')\n"
        "b = pa.record_batch({f'f{i}': x[:, i] for i in range(16)})\n"
        "a = m.score_batch(b).column(0).to_numpy()\n"
        "r = m.predictor.predict({'X': x}, None).reshape(-1)\n"
        "print('SAME', np.allclose(a, r, rtol=1e-6))\n"
    )
    out = run_without(["onnx"], code)
    assert "SAME True" in out.stdout, out.stderr


def test_output_schema_from_the_graph_without_a_signature(multi, tmp_path):
    """An unsigned ONNX model still knows its output columns before scoring (Spark needs them)."""
    model = engine.load_model(multi)
    assert model.signature.outputs is None
    assert model.output_schema.names == ["Sum", "Prod"]
    assert model.output_schema.field("Sum").type == pa.list_(pa.float32(), 2)
    empty = model.score_batch(pa.record_batch({"A": pa.array([], pa.list_(pa.float32(), 2)),
                                               "B": pa.array([], pa.list_(pa.float32(), 2))}))
    assert empty.num_rows == 0 and empty.schema.names == ["Sum", "Prod"]
