"""arrowscore's predictions equal mlflow.pyfunc's, for every flavor fixture and every URI form."""

from __future__ import annotations

import pytest

import engine
from compare import assert_same_predictions
from needs import need

MODELS = ["sklearn_skops", "sklearn_pickle", "sklearn_cloudpickle", "sklearn_pipeline", "onnx",
          "xgboost_booster", "xgboost_sklearn", "lightgbm_booster", "lightgbm_sklearn", "pyfunc_custom", "pyfunc_code"]
URI_FORMS = ["path", "file", "runs", "model_id", "version", "alias"]
NATIVE = {"sklearn_skops": "sklearn", "sklearn_pickle": "sklearn", "sklearn_cloudpickle": "sklearn",
          "sklearn_pipeline": "sklearn", "onnx": "onnx", "xgboost_booster": "xgboost", "xgboost_sklearn": "xgboost",
          "lightgbm_booster": "lightgbm", "lightgbm_sklearn": "lightgbm", "pyfunc_custom": "python_function",
          "pyfunc_code": "python_function"}


@pytest.mark.parametrize("form", URI_FORMS)
@pytest.mark.parametrize("key", MODELS)
def test_same_predictions_as_mlflow(logged_models, model_cache, key, form):
    case = logged_models[key]
    model = engine.load_model(case.uris[form], cache_dir=model_cache)
    assert model.flavor == NATIVE[key]
    ours = model.predict(case.arrow_input, params=case.params)
    assert ours.num_rows == case.arrow_input.num_rows
    assert_same_predictions(ours, case.expected)


@pytest.mark.parametrize("key", MODELS)
def test_pandas_input_same_as_arrow(logged_models, key):
    case = logged_models[key]
    model = engine.load_model(case.uris["path"])
    from_pandas = model.predict(case.arrow_input.to_pandas(), params=case.params)
    assert_same_predictions(from_pandas, case.expected)


@pytest.mark.parametrize("key", ["onnx", "xgboost_booster", "sklearn_pickle"])
def test_polars_numpy_dict_inputs(logged_models, key):
    polars = need("polars", "polars inputs")
    case = logged_models[key]
    model = engine.load_model(case.uris["path"])
    table = case.arrow_input
    for data in (polars.from_arrow(table), {n: table.column(n).to_numpy() for n in table.column_names},
                 table.to_pandas().to_numpy()):
        assert_same_predictions(model.predict(data), case.expected)


def test_onnx_tensor_from_list_column(logged_models):
    """A tensor-signature model takes one fixed-size-list column as well as the scalar columns."""
    import numpy as np
    import pyarrow as pa

    case = logged_models["onnx"]
    model = engine.load_model(case.uris["path"])
    flat = pa.array(case.mlflow_input.reshape(-1))
    batch = pa.record_batch({"input": pa.FixedSizeListArray.from_arrays(flat, 16)})
    assert_same_predictions(pa.Table.from_batches([model.score_batch(batch)]), case.expected)
    # and a variable-length list column with equal lengths
    lists = pa.array([list(r) for r in case.mlflow_input.astype(np.float64)])
    assert_same_predictions(model.predict(pa.table({"x": lists})), case.expected)


def test_registry_download_is_cached(logged_models, tmp_path):
    case = logged_models["xgboost_booster"]
    from engine.model import cache

    first = engine.load_model(case.uris["alias"], cache_dir=tmp_path)
    entries = [e.path for e in cache.entries(tmp_path)]
    assert entries == [str(first.path)] and first.path.parent == tmp_path
    second = engine.load_model(case.uris["version"], cache_dir=tmp_path)  # same model id: same cache entry
    assert second.path == first.path
    assert [e.path for e in cache.entries(tmp_path)] == entries
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name, first.path.name + ".json"]
