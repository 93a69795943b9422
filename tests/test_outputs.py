"""engine.model.outputs: what predict returned -> the output batch, by the same column rules in every mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from engine.errors import SchemaError, ScoringError
from engine.model.outputs import PREDICTION, OutputPlan, schema_from_tensors
from engine.model.signature import ColSpec, Signature, TensorSpec

UNSIGNED = OutputPlan(Signature())


def _tensor(name, dtype, shape):
    return TensorSpec(name, np.dtype(dtype), shape)


ONNX_OUTPUTS = Signature(outputs=(_tensor("label", "int64", (-1,)), _tensor("probs", "float32", (-1, 2))))


def test_one_unnamed_output_is_a_scalar_prediction_column():
    out = UNSIGNED.build(np.array([0.5, 1.5, 2.5]), 3)
    assert PREDICTION == "prediction"
    assert out.schema == pa.schema([("prediction", pa.float64())])
    assert out.column(0).to_pylist() == [0.5, 1.5, 2.5]


def test_k_values_per_row_make_a_fixed_size_list():
    out = UNSIGNED.build(np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]]), 3)
    assert out.schema.names == ["prediction"]
    assert out.column(0).type == pa.list_(pa.float64(), 2)
    assert out.column(0).to_pylist() == [[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]]


def test_a_column_vector_becomes_a_scalar_column():
    out = UNSIGNED.build(np.array([[1], [2]], dtype=np.int32), 2)
    assert out.schema == pa.schema([("prediction", pa.int32())])
    assert out.column(0).to_pylist() == [1, 2]


def test_deeper_arrays_nest_fixed_size_lists():
    out = UNSIGNED.build(np.arange(12, dtype=np.float32).reshape(2, 2, 3), 2)
    assert out.column(0).type == pa.list_(pa.list_(pa.float32(), 3), 2)
    assert out.column(0).to_pylist()[1] == [[6, 7, 8], [9, 10, 11]]


def test_a_named_signature_output_keeps_its_name():
    plan = OutputPlan(Signature(outputs=(ColSpec("score", pa.float64()),)))
    assert plan.schema == pa.schema([pa.field("score", pa.float64(), nullable=False)])
    out = plan.build(np.array([1.0, 2.0]), 2)
    assert out.schema.names == ["score"] and out.column(0).to_pylist() == [1.0, 2.0]
    assert plan.build(pd.Series([3.0, 4.0]), 2).schema.names == ["score"]


def test_an_unnamed_signature_output_is_prediction():
    plan = OutputPlan(Signature(outputs=(ColSpec(None, pa.int64()),)))
    assert plan.names is None
    assert plan.schema.names == ["prediction"]
    assert plan.build(np.array([7, 8]), 2).to_pydict() == {"prediction": [7, 8]}


def test_several_onnx_outputs_make_one_column_per_output_name():
    plan = OutputPlan(ONNX_OUTPUTS)
    assert plan.names == ["label", "probs"]
    out = plan.build([np.array([1, 0]), np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)], 2)
    assert out.schema == pa.schema([("label", pa.int64()), ("probs", pa.list_(pa.float32(), 2))])
    assert out.to_pydict() == {"label": [1, 0], "probs": [[0.25, 0.75], [0.5, 0.5]]}


def test_a_dict_keeps_its_keys_as_column_names():
    out = UNSIGNED.build({"label": np.array([1, 0]), 3: np.array([[0.1, 0.9], [0.6, 0.4]])}, 2)
    assert out.schema.names == ["label", "3"]
    assert out.column("3").type == pa.list_(pa.float64(), 2)


def test_dataframe_columns_keep_their_names():
    out = UNSIGNED.build(pd.DataFrame({"p0": [0.1, 0.2], "p1": [0.9, 0.8]}), 2)
    assert out.schema.names == ["p0", "p1"]
    assert out.column("p1").to_pylist() == [0.9, 0.8]


@pytest.mark.parametrize("plan, width, names", [
    (UNSIGNED, 1, ["prediction"]),
    (UNSIGNED, 3, ["prediction_0", "prediction_1", "prediction_2"]),
    (OutputPlan(ONNX_OUTPUTS), 2, ["label", "probs"]),  # as many columns as signature names: those names
])
def test_unnamed_dataframe_columns(plan, width, names):
    out = plan.build(pd.DataFrame(np.arange(2 * width).reshape(2, width)), 2)
    assert out.schema.names == names
    assert out.column(width - 1).to_pylist() == [width - 1, 2 * width - 1]


def test_a_pandas_series_is_the_single_output():
    out = UNSIGNED.build(pd.Series([1.5, 2.5], name="ignored"), 2)
    assert out.to_pydict() == {"prediction": [1.5, 2.5]}


def test_arrow_and_polars_results_pass_through_by_name():
    pl = pytest.importorskip("polars")
    assert UNSIGNED.build(pl.DataFrame({"y": [1, 2]}), 2).to_pydict() == {"y": [1, 2]}
    assert UNSIGNED.build(pa.table({"y": pa.chunked_array([[1], [2]])}), 2).to_pydict() == {"y": [1, 2]}
    empty = UNSIGNED.build(pa.table({"y": pa.array([], pa.int16())}), 0)
    assert empty.num_rows == 0 and empty.schema == pa.schema([("y", pa.int16())])


def test_lists_of_strings_and_of_dicts():
    assert UNSIGNED.build(["cat", "dog"], 2).to_pydict() == {"prediction": ["cat", "dog"]}
    # ONNX ZipMap: {class: probability} per row; int keys -> a map column, string keys -> a struct
    zipmap = UNSIGNED.build([{0: 0.1, 1: 0.9}, {0: 0.7, 1: 0.3}], 2).column(0)
    assert zipmap.type == pa.map_(pa.int64(), pa.float64())
    assert zipmap.to_pylist()[1] == [(0, 0.7), (1, 0.3)]
    named = UNSIGNED.build([{"no": 0.1, "yes": 0.9}], 1).column(0)
    assert named.type == pa.struct([("no", pa.float64()), ("yes", pa.float64())])


@pytest.mark.parametrize("raw", [np.array([1.0, 2.0, 3.0]), pd.DataFrame({"a": [1]}), [1, 2, 3]])
def test_one_prediction_per_row_or_scoring_error(raw):
    with pytest.raises(ScoringError, match=r"returned \d rows for 2 input rows; a model must return one"):
        UNSIGNED.build(raw, 2)


@pytest.mark.parametrize("raw", [3.0, np.float64(3.0), 7, np.array(3.0), "ab"])
def test_a_single_value_is_refused_not_split(raw):
    # "ab" for 2 rows once became the rows 'a' and 'b'; 3.0 raised a bare TypeError
    with pytest.raises(SchemaError, match="the model returned a scalar"):
        UNSIGNED.build(raw, 2)


@pytest.mark.parametrize("specs, expected", [
    ([_tensor("out", "float32", (-1,))], pa.schema([("prediction", pa.float32())])),
    ([_tensor("out", "float32", (-1, 1))], pa.schema([("prediction", pa.float32())])),
    ([_tensor("out", "float64", (-1, 2, 3))], pa.schema([("prediction", pa.list_(pa.list_(pa.float64(), 3), 2))])),
    (ONNX_OUTPUTS.outputs, pa.schema([("label", pa.int64()), ("probs", pa.list_(pa.float32(), 2))])),
    ([_tensor("out", "float32", (-1, -1))], None),  # variable width: not knowable before scoring
    ([_tensor("label", "object", (-1,))], None),
    ([_tensor("label", "str", (-1,))], None),
])
def test_schema_from_tensors(specs, expected):
    got = schema_from_tensors(specs)
    assert got is None if expected is None else got.equals(expected)


@pytest.mark.parametrize("shape", [(-1,), (-1, 1), (-1, 4), (-1, 1, 3)])
def test_schema_from_tensors_is_what_build_produces(shape):
    spec = _tensor("y", "float32", shape)
    raw = np.zeros((2, *shape[1:]), np.float32)
    assert UNSIGNED.build(raw, 2).schema == schema_from_tensors([spec])
