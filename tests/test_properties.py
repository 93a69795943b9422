"""Property tests: conversions and casts are lossless or raise; results do not depend on batching."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import engine
from engine import SchemaError
from engine.model import convert
from engine.model.inputs import InputPlan
from engine.model.signature import ColSpec, Signature
from flavors import Predictor

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@SETTINGS
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 6)), elements=finite))
def test_matrix_round_trip(values):
    batch = pa.record_batch({f"c{i}": values[:, i] for i in range(values.shape[1])})
    np.testing.assert_array_equal(convert.matrix(batch), values)


@SETTINGS
@given(hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.int8]),
                  st.tuples(st.integers(1, 20), st.integers(1, 4), st.integers(1, 3))))
def test_nd_output_round_trip(values):
    arr = convert.to_arrow(values)
    back = convert.list_tensor(arr, "x")
    np.testing.assert_array_equal(back.reshape(values.shape), values)  # (n, k, 1) comes back as (n, k)


def _plan(wanted: pa.DataType, kind: str = "matrix") -> InputPlan:
    """An input plan for a one-column signature; build() returns (model input, predict fn)."""
    return InputPlan(Signature(inputs=(ColSpec("x", wanted),)), Predictor(predict=lambda x, p: x, input_kind=kind))


@SETTINGS
@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), min_size=1, max_size=20))
def test_int64_to_double_is_exact_or_refused(ints):
    batch = pa.record_batch({"x": pa.array(ints, pa.int64())})
    try:
        out = _plan(pa.float64()).build(batch)[0][:, 0]
    except SchemaError as exc:
        # Arrow refuses any integer beyond 2**53 (a conservative range check): refusing is allowed,
        # changing a value is not
        assert "cannot become double without changing its values" in str(exc)
        assert any(abs(v) > 2 ** 53 for v in ints)
        return
    assert [int(v) for v in out] == ints


@SETTINGS
@given(st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), min_size=1, max_size=20))
def test_int64_to_int32_is_exact_or_refused(ints):
    plan = _plan(pa.int32(), "frame")
    try:
        frame, _ = plan.build(pa.record_batch({"x": pa.array(ints, pa.int64())}))
    except SchemaError as exc:
        assert any(not -(2 ** 31) <= v < 2 ** 31 for v in ints), str(exc)
        return
    assert frame["x"].tolist() == ints


@SETTINGS
@given(st.lists(st.floats(allow_nan=True, width=64), min_size=1, max_size=20))
def test_float_to_long_always_refused(floats):
    with pytest.raises(SchemaError, match="is double, the model's signature wants int64"):
        _plan(pa.int64(), "frame").build(pa.record_batch({"x": floats}))


@SETTINGS
@given(st.lists(st.one_of(st.none(), finite), min_size=1, max_size=20))
def test_nulls_never_slip_through_required_columns(values):
    batch = pa.record_batch({"x": pa.array(values, pa.float64())})
    if any(v is None for v in values):
        with pytest.raises(SchemaError, match="hold nulls"):
            _plan(pa.float64()).build(batch)
    else:
        np.testing.assert_array_equal(_plan(pa.float64()).build(batch)[0][:, 0], values)


@pytest.fixture(scope="module")
def batch_models(logged_models):
    return {k: engine.load_model(logged_models[k].uris["path"])
            for k in ("onnx", "xgboost_booster", "sklearn_pipeline", "pyfunc_custom")}


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("key", ["onnx", "xgboost_booster", "sklearn_pipeline", "pyfunc_custom"])
def test_results_do_not_depend_on_batching(batch_models, logged_models, key, data):
    model = batch_models[key]
    table = logged_models[key].arrow_input
    whole = model.predict(table)
    cuts = sorted(data.draw(st.lists(st.integers(1, table.num_rows - 1), max_size=6, unique=True)))
    bounds = [0, *cuts, table.num_rows]
    parts = [model.score_batch(table.slice(a, b - a).combine_chunks().to_batches()[0]) for a, b in zip(bounds, bounds[1:])]
    split = pa.Table.from_batches(parts)
    if key == "sklearn_pipeline":
        # scikit-learn itself differs in the last bit between a 1-row and a many-row call (BLAS gemv vs
        # gemm); arrowscore adds nothing to that, so compare to a few ulps here and exactly elsewhere
        np.testing.assert_allclose(convert.list_tensor(split.column(0).combine_chunks(), "p"),
                                   convert.list_tensor(whole.column(0).combine_chunks(), "p"), rtol=1e-12, atol=1e-15)
    else:
        assert split.equals(whole)
