"""engine.model.payload: MLflow's serving request formats <-> Arrow, and prediction files by extension."""

from __future__ import annotations

import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError
from engine.model.payload import decode_json, encode_json, jsonable, read_input, write_output
from without import run_without


def _decode(doc, names=None):
    return decode_json(json.dumps(doc).encode(), names)


def test_dataframe_split_with_columns_and_params():
    table, params = _decode({"dataframe_split": {"columns": ["a", "b"], "index": [7, 8],
                                                 "data": [[1, "x"], [2, None]]}, "params": {"k": 2}})
    assert table.schema == pa.schema([("a", pa.int64()), ("b", pa.string())])
    assert table.to_pydict() == {"a": [1, 2], "b": ["x", None]}  # the index is accepted and dropped
    assert params == {"k": 2}


def test_dataframe_split_without_columns_numbers_them():
    table, params = _decode({"dataframe_split": {"data": [[1.5, 2], [3.5, 4]]}})
    assert table.to_pydict() == {"f0": [1.5, 3.5], "f1": [2, 4]} and params is None


def test_dataframe_records_with_nulls():
    table, _ = decode_json('{"dataframe_records": [{"x": 1.0, "s": "u"}, {"x": null, "s": "v"}]}')
    assert table.schema == pa.schema([("x", pa.float64()), ("s", pa.string())])
    assert table.to_pydict() == {"x": [1.0, None], "s": ["u", "v"]}


def test_records_take_keys_from_every_record_not_only_the_first():
    # Arrow's from_pylist reads only the first record's keys: "y" was dropped
    for key in ("dataframe_records", "instances"):
        table, _ = _decode({key: [{"x": 1}, {"x": 2, "y": 5.5}]})
        assert table.to_pydict() == {"x": [1, 2], "y": [None, 5.5]}


@pytest.mark.parametrize("names, expected", [(None, {"f0": [1.0, 3.0], "f1": [2.0, 4.0]}),
                                             (["a", "b"], {"a": [1.0, 3.0], "b": [2.0, 4.0]})])
def test_instances_matrix_one_column_per_feature(names, expected):
    table, _ = _decode({"instances": [[1.0, 2.0], [3.0, 4.0]]}, names)
    assert table.to_pydict() == expected


def test_instances_vector_is_one_column_and_3d_a_tensor_column():
    assert _decode({"instances": [1.5, 2.5]}, ["x"])[0].to_pydict() == {"x": [1.5, 2.5]}
    table, _ = _decode({"inputs": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]})
    assert table.schema.names == ["input"]
    assert table.column(0).type == pa.list_(pa.list_(pa.int64(), 2), 2)
    assert table.column(0).to_pylist()[1] == [[5, 6], [7, 8]]


def test_inputs_dict_of_columns():
    table, params = _decode({"inputs": {"id": [1, 2], "img": [[0.5, 1.5], [2.5, 3.5]], "s": ["a", None]},
                             "params": {"t": 0.3}})
    assert table.schema == pa.schema([("id", pa.int64()), ("img", pa.list_(pa.float64(), 2)), ("s", pa.string())])
    assert table.column("img").to_pylist() == [[0.5, 1.5], [2.5, 3.5]] and params == {"t": 0.3}


@pytest.mark.parametrize("body, message", [
    (b"not json", r"the input is not valid JSON \(Expecting value"),
    (b"\xff\xfe", r"not valid JSON"),
    (b"[1, 2]", r"must be an object with one of the keys \['dataframe_split', 'dataframe_records'"),
    (b'{"params": {"k": 1}}', r"exactly one of the keys .*; it has \['params'\]"),
    (b'{"inputs": [1], "instances": [1]}', r"exactly one of the keys .*; it has \['inputs', 'instances'\]"),
    (b'{"dataframe_split": [[1]]}', r"'dataframe_split' must be an object with 'columns' and 'data'"),
    (b'{"dataframe_split": {"data": [[1]], "dtypes": {}}}', r"unknown keys \['dtypes'\]; use columns, data, index"),
    (b'{"dataframe_split": {"columns": ["a"], "data": 5}}', r"'data' must be a list of rows, each a list"),
    (b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3]]}}',
     r"row 1 has 1 values for the 2 columns \['a', 'b'\]; every row needs one value per column"),
    (b'{"dataframe_split": {"columns": ["a", "a"], "data": [[1, 2]]}}', r"names a column twice: \['a', 'a'\]"),
    (b'{"dataframe_split": {"columns": ["a"], "data": [[1], ["x"]]}}',
     r"'dataframe_split' values cannot be read as typed columns .*one type"),
    (b'{"dataframe_records": {"x": 1}}', r"'dataframe_records' must be a list of objects, one per row"),
    (b'{"dataframe_records": [1, 2]}', r"'dataframe_records' must be a list of objects, one per row"),
    (b'{"instances": [[1, 2], [3]]}', r"rows have different shapes; every row must have the same shape"),
    (b'{"instances": [[1, [2]]]}', r"rows have different shapes; every row must have the same shape"),
    (b'{"inputs": [[]]}', r"rows hold no values \(shape \(1, 0\)\); send one value per input column"),
    (b'{"inputs": 5}', r"is one value \(5\), not a list with one entry per row"),
    (b'{"inputs": {"a": 5}}', r"'inputs' column 'a' value is one value \(5\)"),
])
def test_bad_bodies_are_config_errors(body, message):
    with pytest.raises(ConfigError, match=message):
        decode_json(body)


def test_nulls_in_tensor_rows_are_nulls_of_their_column():
    """A null among numbers (a missing value) stays a null of that column, so the signature's checks name
    it (a required column) or the model gets NaN (an optional one); before, it read as a ragged tensor."""
    table, _ = decode_json(b'{"inputs": [[null, 0.5], [1.5, 2.5]]}')
    assert table.to_pydict() == {"f0": [None, 1.5], "f1": [0.5, 2.5]}
    assert table.column("f0").null_count == 1


def test_jsonable_values():
    assert jsonable(float("nan")) is None
    assert jsonable(b"\x00\x01") == "AAE="
    assert jsonable(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)) == "2024-01-02T03:04:05+00:00"
    assert jsonable(dt.date(2024, 1, 2)) == "2024-01-02"
    assert jsonable({"a": [1.0, float("nan")], "b": ("k", float("nan"))}) == {"a": [1.0, None], "b": ["k", None]}


def test_encode_json_one_column_is_a_list_of_values():
    table = pa.table({"p": pa.array([0.5, float("nan"), None])})
    assert json.loads(encode_json(table)) == {"predictions": [0.5, None, None]}
    stamps = pa.table({"t": pa.array([0, 86400], pa.timestamp("s"))})
    assert json.loads(encode_json(stamps)) == {"predictions": ["1970-01-01T00:00:00", "1970-01-02T00:00:00"]}


def test_encode_json_several_columns_are_records():
    table = pa.table({"label": [1, 0], "probs": pa.array([[0.25, 0.75], [1.0, float("nan")]], pa.list_(pa.float64(), 2)),
                      "zipmap": pa.array([[("a", 1.0)], [("a", float("nan"))]], pa.map_(pa.string(), pa.float64()))})
    assert json.loads(encode_json(table)) == {"predictions": [
        {"label": 1, "probs": [0.25, 0.75], "zipmap": [["a", 1.0]]},
        {"label": 0, "probs": [1.0, None], "zipmap": [["a", None]]}]}


def test_encode_json_keeps_infinity_as_python_writes_it():
    # NaN becomes null, but +-inf is written as Infinity: valid for Python's json, not strict JSON
    text = encode_json(pa.table({"p": [float("inf"), -float("inf")]}))
    assert text == '{"predictions": [Infinity, -Infinity]}'
    assert json.loads(text)["predictions"] == [float("inf"), -float("inf")]


def test_read_input_by_extension(tmp_path):
    (tmp_path / "in.json").write_text('{"dataframe_records": [{"a": 1}], "params": {"k": 1}}')
    (tmp_path / "in.CSV").write_text("a,b\n1,x\n2,y\n")
    pq.write_table(pa.table({"a": [1.5]}), tmp_path / "in.pq")
    assert read_input(tmp_path / "in.json") == (pa.table({"a": [1]}), {"k": 1})
    table, params = read_input(str(tmp_path / "in.CSV"))
    assert table.to_pydict() == {"a": [1, 2], "b": ["x", "y"]} and params is None
    assert read_input(tmp_path / "in.pq")[0].to_pydict() == {"a": [1.5]}


def test_read_input_passes_names_to_json_tensors(tmp_path):
    (tmp_path / "in.json").write_text('{"instances": [[1, 2]]}')
    assert read_input(tmp_path / "in.json", ["u", "v"])[0].to_pydict() == {"u": [1], "v": [2]}


def test_read_input_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"input file '.*nope.json' does not exist"):
        read_input(tmp_path / "nope.json")
    (tmp_path / "in.txt").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"cannot read 'in.txt': the input must end in .json, .csv or .parquet"):
        read_input(tmp_path / "in.txt")


def test_write_output_by_extension_round_trips(tmp_path):
    table = pa.table({"label": [1, 0], "score": [0.25, 0.75]})
    for name in ("out.parquet", "out.csv"):
        write_output(table, tmp_path / name)
        assert read_input(tmp_path / name)[0].to_pydict() == table.to_pydict()
    write_output(table, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text())["predictions"][1] == {"label": 0, "score": 0.75}


def test_write_output_without_path_writes_json_to_out():
    out = io.StringIO()
    write_output(pa.table({"p": [1.0, 2.0]}), None, out)
    assert out.getvalue() == '{"predictions": [1.0, 2.0]}\n'


def test_write_output_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot write 'out.txt': the output must end in .json, .csv or .parquet"):
        write_output(pa.table({"p": [1]}), tmp_path / "out.txt")
    probs = pa.table({"probs": pa.array([[0.1, 0.9]], pa.list_(pa.float64(), 2))})
    with pytest.raises(ConfigError, match=r"CSV has no cell type for the list/struct/map columns \['probs'\]"):
        write_output(probs, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_read_input_refuses_directories_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"input '.*' is a directory; predict reads one file .*arrowscore score"):
        read_input(tmp_path)
    pq.write_table(pa.table({"a": [1.5] * 100}), tmp_path / "whole.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "whole.parquet").read_bytes()[:60])
    with pytest.raises(ConfigError, match=r"cannot read 'cut.parquet' as Parquet \(.*magic bytes.*\); .*rewrite it"):
        read_input(tmp_path / "cut.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match=r"input 'empty.csv' is empty; a CSV input needs a header line"):
        read_input(tmp_path / "empty.csv")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ConfigError, match=r"input 'ragged.csv' cannot be read as CSV \(.*\); send a header line"):
        read_input(tmp_path / "ragged.csv")


def test_write_output_into_a_missing_or_wrong_place(tmp_path):
    target = tmp_path / "no" / "out.json"
    with pytest.raises(ConfigError, match=r"output directory '.*/no' does not exist; create it"):
        write_output(pa.table({"p": [1]}), target)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ConfigError, match=r"output '.*dir.json' is a directory; name a file"):
        write_output(pa.table({"p": [1]}), tmp_path / "dir.json")
    assert not (tmp_path / "no").exists()


def test_json_numbers_take_the_signature_types():
    """JSON has one number type: a float32 input gets float32 (it was refused as 'double' for every request
    to a float32 model), ints become floats only when exact, and a null is never a NaN."""
    import pyarrow as pa

    from engine.model.payload import decode_doc

    schema = pa.schema([("a", pa.float32()), ("b", pa.float64()), ("c", pa.int32())])
    split = {"dataframe_split": {"columns": ["a", "b"], "data": [[0.1, 2.5], [1.0, 3.0]]}}
    table, _ = decode_doc(split, schema=schema)
    assert table.schema.types == [pa.float32(), pa.float64()] and table.column("b").to_pylist() == [2.5, 3.0]
    records = {"dataframe_records": [{"a": 1.5, "b": 2, "c": 7}]}
    table, _ = decode_doc(records, schema=schema)
    assert table.schema.types == [pa.float32(), pa.float64(), pa.int32()]
    big = {"dataframe_records": [{"b": 2**53 + 1}]}  # not exact as a double: left for the signature to refuse
    assert decode_doc(big, schema=schema)[0].schema.field("b").type == pa.int64()
    nulls = {"dataframe_split": {"columns": ["a", "b"], "data": [[None, 1.0]]}}
    assert decode_doc(nulls, schema=schema)[0].column("a").null_count == 1


def test_json_requests_decode_without_pandas():
    """Found by `make demo` (which installs no pandas): every JSON request to `arrowscore serve` was a 500,
    "No module named 'pandas'", from pyarrow's to_pandas_dtype in the float fast path and the v2 metadata."""
    # a finder that fails the import as a missing install does: pyarrow's pandas shim trips over the
    # None that run_without puts in sys.modules
    hide = ("import importlib.abc\n"
            "class Missing(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'pandas':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Missing())\n")
    code = (hide + "import pyarrow as pa\n"
            "from engine.model.payload import decode_doc\n"
            "from engine.server.protocols import v2_type\n"
            "schema = pa.schema([('a', pa.float32()), ('b', pa.float64())])\n"
            "split = {'dataframe_split': {'columns': ['a', 'b'], 'data': [[0.5, 2.5]]}}\n"
            "rows, _ = decode_doc(split, schema=schema, float_rows=True)\n"
            "print(rows.to_batch().schema.types, v2_type(pa.float32()), v2_type(pa.list_(pa.int64())),"
            " v2_type(pa.string()))\n"
            "assert 'pandas' not in sys.modules\n")
    out = run_without([], code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[DataType(float),", "DataType(double)]", "FP32", "INT64", "BYTES"]
