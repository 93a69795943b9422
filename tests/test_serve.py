"""arrowscore serve, run for real: `python -m engine serve` subprocesses answering HTTP on 127.0.0.1,
models logged by MLflow, and MLflow's own predictions as the answer key."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from compare import columns_of_expected
from needs import need

ROOT = Path(__file__).resolve().parents[1]
ARROW, PARQUET = "application/vnd.apache.arrow.stream", "application/vnd.apache.parquet"


# ---- a server, its client ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None, headers=None, timeout=60):
    """(status, headers, body) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Server:
    """``python -m engine serve ARGS`` on a free port of 127.0.0.1, ready once /ping answers 200."""

    def __init__(self, args, env=None, port=None, ping="/ping", port_flag=True, headers=None, startup_s=120):
        self.port, self.headers = port or _free_port(), headers or {}
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        for key in [k for k, v in full_env.items() if v is None]:
            full_env.pop(key)
        command = [sys.executable, "-m", "engine", "serve", *map(str, args), "--host", "127.0.0.1"]
        if port_flag:
            command += ["--port", str(self.port)]
        self.proc = subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []  # its output so far, read by a thread so that a test can wait for a line
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.stop()}")
            try:
                if call(self.port, "GET", ping, timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not answer {ping} within {startup_s} s")
            time.sleep(0.1)

    def __call__(self, method, path, body=None, headers=None, timeout=60):
        return call(self.port, method, path, body, {**self.headers, **(headers or {})}, timeout)

    def json(self, method, path, body=None, headers=None, expect=200):
        status, _, out = self(method, path, body, headers)
        assert status == expect, out
        return json.loads(out) if out.strip() else None

    def metrics(self) -> str:
        status, _, out = self("GET", "/metrics")
        assert status == 200
        return out.decode()

    def wait_for(self, text: str, count: int = 1, timeout_s: float = 120) -> None:
        """Until the output holds ``text`` ``count`` times (work the server does in the background)."""
        deadline = time.monotonic() + timeout_s
        while "".join(self.lines).count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not {count} times within {timeout_s} s:\n{''.join(self.lines)}"
            assert self.proc.poll() is None, f"the server exited with {self.proc.returncode}:\n{self.stop()}"
            time.sleep(0.1)

    def stop(self) -> str:
        """SIGTERM, then the output (SIGKILL after a generous wait)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=60)
        return "".join(self.lines)


@pytest.fixture
def serve():
    """Start servers in a test; every one is stopped at its end."""
    started = []

    def start(*args, **kwargs) -> Server:
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def _metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = {k: str(v) for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.partition("{")[0] != name:
            continue
        if all(_labels(head).get(k) == v for k, v in want.items()):
            total += float(value)
    return total


def _labels(line: str) -> dict[str, str]:
    """The labels of one Prometheus sample line (values hold no commas here)."""
    rest = line.partition("{")[2].rpartition("}")[0]
    return {k: v.strip('"') for k, v in (part.split("=", 1) for part in rest.split(",") if part)}


# ---- answers compared with MLflow's ------------------------------------------------------------
def _same(got: dict[str, np.ndarray], expected, what: str, rtol=1e-6):
    theirs = columns_of_expected(expected)
    assert len(got) == len(theirs), f"{what}: columns differ: {list(got)} vs {list(theirs)}"
    pairs = zip(got.values(), theirs.values()) if len(got) == 1 else ((got[k], theirs[k]) for k in theirs)
    for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        a = a.reshape(len(a), -1)[:, 0] if a.ndim == 2 and a.shape[1] == 1 else a
        b = b.reshape(len(b), -1)[:, 0] if b.ndim == 2 and b.shape[1] == 1 else b
        assert a.shape == b.shape, f"{what}: shapes differ: {a.shape} vs {b.shape}"
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=1e-12, err_msg=what)
        else:
            np.testing.assert_array_equal(a, b, err_msg=what)


def _from_json(doc) -> dict[str, np.ndarray]:
    preds = doc["predictions"]
    if preds and isinstance(preds[0], dict):
        return {k: np.asarray([r[k] for r in preds]) for k in preds[0]}
    return {"prediction": np.asarray(preds)}


def _from_table(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: np.asarray(col.to_pylist()) for name, col in zip(table.column_names, table.columns)}


def _from_v2(doc) -> dict[str, np.ndarray]:
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}


def _mlflow_bodies(case) -> dict[str, dict]:
    """Each MLflow JSON format that applies to the model, as a body (params included)."""
    table = case.arrow_input
    columns = table.to_pydict()
    records = [dict(zip(columns, row)) for row in zip(*columns.values())]
    extra = {"params": case.params} if case.params else {}
    if isinstance(case.mlflow_input, np.ndarray):  # a tensor signature: the rows as one matrix
        matrix = case.mlflow_input.tolist()
        bodies = {"instances": {"instances": matrix}, "inputs": {"inputs": matrix}}
    else:
        bodies = {"instances": {"instances": records}, "inputs": {"inputs": columns}}
    bodies["dataframe_split"] = {"dataframe_split": {"columns": list(columns), "data": [list(r.values()) for r in records]}}
    bodies["dataframe_records"] = {"dataframe_records": records}
    return {name: {**body, **extra} for name, body in bodies.items()}


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _csv(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pcsv.write_csv(table, sink)
    return sink.getvalue()


# ---- every flavor MLflow logged, every protocol ------------------------------------------------
@pytest.fixture(scope="module")
def flavors_server(logged_models):
    """One server with every logged model, by its fixture key (also the several-models case)."""
    need("uvicorn", "arrowscore serve")
    server = Server([f"{key}={case.uris['path']}" for key, case in logged_models.items()])
    yield server
    server.stop()


def test_mlflow_formats_and_csv_answer_as_mlflow(flavors_server, logged_models):
    for key, case in logged_models.items():
        for fmt, body in _mlflow_bodies(case).items():
            doc = flavors_server.json("POST", f"/models/{key}/invocations", body)
            _same(_from_json(doc), case.expected, f"{key} {fmt}")
        if case.params:
            continue  # CSV carries no params
        status, headers, out = flavors_server("POST", f"/models/{key}/invocations", _csv(case.arrow_input),
                                              {"Content-Type": "text/csv"})
        assert status == 200, out
        _same(_from_json(json.loads(out)), case.expected, f"{key} csv")


@pytest.mark.parametrize("media", [ARROW, PARQUET])
def test_arrow_and_parquet_bodies_round_trip(flavors_server, logged_models, media):
    write, read = {ARROW: (_ipc, lambda b: pa.ipc.open_stream(b).read_all()),
                   PARQUET: (_parquet, lambda b: pq.read_table(io.BytesIO(b)))}[media]
    for key, case in logged_models.items():
        if case.params:
            continue  # a binary body carries no params
        status, headers, out = flavors_server("POST", f"/models/{key}/invocations", write(case.arrow_input),
                                              {"Content-Type": media, "Accept": media})
        assert status == 200, out
        assert headers["content-type"] == media
        table = read(out)
        assert table.num_rows == case.arrow_input.num_rows
        _same(_from_table(table), case.expected, f"{key} {media}")


def _v2_request(metadata: dict, case) -> dict:
    """An infer request built from the model's v2 metadata: a column per named input, else the matrix."""
    inputs = []
    for spec in metadata["inputs"]:
        if spec["name"] in case.arrow_input.column_names:
            values = case.arrow_input.column(spec["name"]).to_pylist()
            inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": [len(values)], "data": values})
        else:
            matrix = np.asarray(case.mlflow_input)
            inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": list(matrix.shape),
                           "data": matrix.ravel().tolist()})
    doc = {"id": "req-1", "inputs": inputs}
    return {**doc, "parameters": case.params} if case.params else doc


def test_open_inference_v2(flavors_server, logged_models):
    server = flavors_server
    assert server.json("GET", "/v2")["name"] == "arrowscore"
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert server("GET", path)[0] == 200
    for key, case in logged_models.items():
        metadata = server.json("GET", f"/v2/models/{key}")
        assert metadata["name"] == key and metadata["inputs"] and metadata["outputs"], metadata
        assert server("GET", f"/v2/models/{key}/ready")[0] == 200
        doc = server.json("POST", f"/v2/models/{key}/infer", _v2_request(metadata, case))
        assert doc["model_name"] == key and doc["id"] == "req-1"
        assert [o["name"] for o in doc["outputs"]] == [o["name"] for o in metadata["outputs"]]
        _same(_from_v2(doc), case.expected, f"{key} v2")
    status, _, out = server("GET", "/v2/models/nope")
    assert status == 404 and "no model 'nope'" in json.loads(out)["error"]


_NUMPY = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def _to_binary(doc: dict) -> tuple[bytes, dict]:
    """The v2 request with every input's data moved after the JSON (the binary tensor data extension),
    every output asked for in binary: (body, headers)."""
    inputs, blobs = [], []
    for tensor in doc["inputs"]:
        if tensor["datatype"] == "BYTES":
            blob = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in map(str, tensor["data"]))
        else:
            blob = np.asarray(tensor["data"], dtype=_NUMPY[tensor["datatype"]]).tobytes()
        blobs.append(blob)
        inputs.append({k: v for k, v in tensor.items() if k != "data"} | {"parameters": {"binary_data_size": len(blob)}})
    header = json.dumps({**doc, "inputs": inputs,
                         "parameters": {**doc.get("parameters", {}), "binary_data_output": True}}).encode()
    return header + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(header))}


def _from_binary(headers: dict, body: bytes) -> dict[str, np.ndarray]:
    length = int(headers["inference-header-content-length"])
    doc, offset, out = json.loads(body[:length]), length, {}
    for o in doc["outputs"]:
        size = o["parameters"]["binary_data_size"]
        raw = body[offset:offset + size]
        if o["datatype"] == "BYTES":
            values, i = [], 0
            while i < len(raw):
                n = int.from_bytes(raw[i:i + 4], "little")
                values.append(raw[i + 4:i + 4 + n].decode())
                i += 4 + n
            out[o["name"]] = np.asarray(values).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(raw, dtype=_NUMPY[o["datatype"]]).reshape(o["shape"])
        offset += size
    assert offset == len(body), "the answer has binary data no output claims"
    return out


def test_open_inference_v2_binary_tensors(flavors_server, logged_models):
    """Inputs as raw bytes after the JSON, outputs asked for the same way (KServe's and Triton's clients)."""
    assert "binary_tensor_data" in flavors_server.json("GET", "/v2")["extensions"]
    for key, case in logged_models.items():
        metadata = flavors_server.json("GET", f"/v2/models/{key}")
        body, headers = _to_binary(_v2_request(metadata, case))
        status, answer_headers, out = flavors_server("POST", f"/v2/models/{key}/infer", body, headers)
        assert status == 200, out
        assert answer_headers["content-type"] == "application/octet-stream"
        _same(_from_binary(answer_headers, out), case.expected, f"{key} v2 binary")


def test_open_inference_v2_binary_mistakes_get_400(flavors_server, logged_models):
    key, case = next((k, c) for k, c in logged_models.items() if not c.params)
    metadata = flavors_server.json("GET", f"/v2/models/{key}")
    body, headers = _to_binary(_v2_request(metadata, case))
    length = int(headers["Inference-Header-Content-Length"])
    cases = [
        (body + b"\0" * 8, headers, "bytes of binary data that no input's binary_data_size claims"),
        (body[:-1], headers, "runs past the body's binary data"),
        (body, {"Content-Type": "application/octet-stream"}, "needs the Inference-Header-Content-Length header"),
        (body, {**headers, "Inference-Header-Content-Length": str(len(body) + 1)}, "is not a length within the body"),
    ]
    doc = json.loads(body[:length])
    asked = {**doc, "outputs": [{"name": "nope"}]}
    header = json.dumps(asked).encode()
    cases.append((header + body[length:], {**headers, "Inference-Header-Content-Length": str(len(header))},
                  "the request asks for outputs ['nope']"))
    for request, request_headers, message in cases:
        status, _, out = flavors_server("POST", f"/v2/models/{key}/infer", request, request_headers)
        assert status == 400 and message in json.loads(out)["error"], (message, out)


def test_several_models_each_on_its_route(flavors_server, logged_models):
    """`serve a=URI b=URI2`: each name has its routes; /invocations is the first model's."""
    first, other = list(logged_models)[0], "pyfunc_code"
    for key in (first, other):
        case = logged_models[key]
        body = _mlflow_bodies(case)["dataframe_split"]
        _same(_from_json(flavors_server.json("POST", f"/models/{key}/invocations", body)), case.expected, key)
    case = logged_models[first]
    _same(_from_json(flavors_server.json("POST", "/invocations", _mlflow_bodies(case)["dataframe_split"])),
          case.expected, "/invocations")
    version = flavors_server.json("GET", "/version")
    assert set(version["models"]) == set(logged_models)
    status, _, out = flavors_server("POST", "/models/nope/invocations", _mlflow_bodies(case)["dataframe_split"])
    assert status == 404 and "no model 'nope'" in out.decode()


# ---- a slow model: batching, limits, drain -----------------------------------------------------
def _slow_double(df):
    """x * 2 after SLOW_MODEL_S seconds (set in the server's environment); a negative x raises."""
    import os as _os
    import time as _time

    _time.sleep(float(_os.environ.get("SLOW_MODEL_S", "0")))
    if (df["x"] < 0).any():
        raise ValueError(f"x must not be negative, got {df['x'].min()}")
    return df["x"] * 2.0


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    import engine

    need("uvicorn", "arrowscore serve")
    path = tmp_path_factory.mktemp("slow") / "slow"
    return engine.save_model(path, _slow_double, signature=pa.schema([pa.field("x", pa.float64(), False)]))


def _split(xs) -> dict:
    return {"dataframe_split": {"columns": ["x"], "data": [[x] for x in xs]}}


@pytest.fixture(scope="module")
def batching_server(slow_model):
    server = Server([slow_model], env={"SLOW_MODEL_S": "0.2"})
    yield server
    server.stop()


def _merged_batches(server, before: str) -> tuple[float, float]:
    """(model calls, calls of more than 4 rows) since the ``before`` metrics text."""
    after = server.metrics()
    calls = [_metric(t, "arrowscore_batch_rows_count", model="slow") for t in (before, after)]
    small = [_metric(t, "arrowscore_batch_rows_bucket", model="slow", le="4.0") for t in (before, after)]
    return calls[1] - calls[0], (calls[1] - small[1]) - (calls[0] - small[0])


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows(batching_server):
    before = batching_server.metrics()

    def one(i):
        xs = [i * 100.0 + j for j in range(3)]
        return xs, batching_server("POST", "/invocations", _split(xs))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for xs, (status, _, out) in results:
        assert status == 200, out
        assert json.loads(out)["predictions"] == [2 * x for x in xs]
    calls, merged = _merged_batches(batching_server, before)
    assert calls < 16 and merged >= 1  # 3 rows a request: a call of more than 4 rows merged requests


def test_a_bad_request_in_a_merged_batch_fails_alone(batching_server):
    before = batching_server.metrics()
    bodies = [_split([i * 100.0 + 1, i * 100.0 + 2]) for i in range(8)]
    bodies[3] = {"dataframe_records": [{"x": 301.0}, {"x": None}]}  # a null in a required column
    bodies[5] = _split([501.0, -5.0])                                # a value the model raises on
    with ThreadPoolExecutor(9) as pool:
        busy = pool.submit(batching_server, "POST", "/invocations", _split([7.0]))  # the others queue behind it
        time.sleep(0.05)
        results = list(pool.map(lambda b: batching_server("POST", "/invocations", b), bodies))
        assert busy.result()[0] == 200
    for i, (status, _, out) in enumerate(results):
        if i == 3:
            assert status == 400 and "['x'] hold nulls" in json.loads(out)["message"], out
        elif i == 5:
            assert status == 400 and "x must not be negative, got -5.0" in json.loads(out)["message"], out
        else:
            assert status == 200, out
            assert json.loads(out)["predictions"] == [2 * (i * 100.0 + 1), 2 * (i * 100.0 + 2)]
    _, merged = _merged_batches(batching_server, before)
    assert merged >= 1


@pytest.mark.parametrize("body, ctype, message", [
    (b'{"dataframe_split": {"columns": ["x"], "data": [[1.0]]', "application/json", "the body is not valid JSON"),
    (b'{"dataframe_records": [{"y": 1.0}]}', "application/json",
     "the model needs columns ['x'] that the input lacks (it has ['y'])"),
    (b'{"dataframe_records": [{"x": "one"}]}', "application/json",
     "column 'x' is string, the model's signature wants double"),
    (b'{"dataframe_records": [{"x": null}]}', "application/json", "column 'x' is null"),
    (b"y\n1.0\n", "text/csv", "the model needs columns ['x'] that the input lacks (it has ['y'])"),
    (b'{"inputs": [[null]]}', "application/json", "column 'x' is null"),
    (b'{"inputs": [[]]}', "application/json", "rows hold no values"),
    (b'{"inputs": [[1.0], ["one"]]}', "application/json", "position 0 (column 'x') mix types (['float', 'str'])"),
], ids=["bad-json", "missing-column", "wrong-type", "null", "csv-missing-column", "inputs-null", "inputs-empty-row",
        "inputs-string-among-numbers"])
def test_bad_requests_get_400_naming_the_column(batching_server, body, ctype, message):
    status, _, out = batching_server("POST", "/invocations", body, {"Content-Type": ctype})
    assert status == 400, out
    doc = json.loads(out)
    assert message in doc["message"] and doc["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")


def _f_and_g(df):
    return np.where(np.isnan(df["f"]), -1.0, df["f"] * 2.0) + df["g"].fillna(100.0)


def test_csv_bodies_read_as_pandas_reads_them_for_mlflow(serve, tmp_path):
    """CSV as MLflow's server reads it (pandas): `nan` is a number, an empty cell or NA is missing (NaN in an
    optional column; 400 naming a required one), a float32 column takes its CSV numbers; a CSV without its header line
    gets 400 saying so (it answered 200 [] before, its one row read as the header)."""
    import engine

    signature = pa.schema([pa.field("f", pa.float32()), pa.field("g", pa.float64())])
    server = serve([engine.save_model(tmp_path / "fg", _f_and_g, signature=signature, optional=["g"])])
    csv = {"Content-Type": "text/csv"}
    assert (server.json("POST", "/invocations", b"f,g\n1.5,1\n2.5,\nnan,1\n1,NA\n", csv)["predictions"]
            == [4.0, 105.0, 0.0, 102.0])
    for body, message in [(b"f,g\n,1\n", "'f'"), (b"f,g\nNA,1\n", "'f'"), (b"1.5,2\n", "has a header line and no rows")]:
        status, _, out = server("POST", "/invocations", body, csv)
        assert status == 400 and message in json.loads(out)["message"], out


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory):
    """A model quick enough to be called on the event loop, with an int64 and a double input."""
    import engine

    need("uvicorn", "arrowscore serve")
    path = engine.save_model(tmp_path_factory.mktemp("fast") / "fast", _a_plus_b,
                             signature=pa.schema([pa.field("a", pa.float64(), False), pa.field("b", pa.int64(), False)]))
    server = Server([f"fast={path}"])
    yield server
    server.stop()


def _a_plus_b(df):
    return df["a"] * 2 + df["b"]


def _v2(a, b, kind_b="INT64") -> dict:
    return {"inputs": [{"name": "a", "shape": [len(a)], "datatype": "FP64", "data": a},
                       {"name": "b", "shape": [len(b)], "datatype": kind_b, "data": b}]}


def test_requests_without_rows_do_not_stop_the_model(fast_server):
    """Found by a README-only user: one empty request left every later request of the model at 504."""
    one = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2]]}}
    for _ in range(3):  # quick calls: the model runs on the event loop
        assert fast_server.json("POST", "/invocations", one)["predictions"] == [4.0]
    empty = {"dataframe_split": {"columns": ["a", "b"], "data": []}}
    assert fast_server.json("POST", "/invocations", empty)["predictions"] == []
    stream = pa.BufferOutputStream()
    pa.ipc.new_stream(stream, pa.schema([("a", pa.float64()), ("b", pa.int64())])).close()  # no batches
    status, _, out = fast_server("POST", "/invocations", stream.getvalue().to_pybytes(), {"Content-Type": ARROW})
    assert status == 200 and json.loads(out)["predictions"] == [], out
    status, _, out = fast_server("POST", "/v2/models/fast/infer", _v2([], []))
    assert status in (200, 400), out
    assert fast_server.json("POST", "/invocations", one)["predictions"] == [4.0]
    assert fast_server.json("POST", "/v2/models/fast/infer", _v2([1.0], [2]))["outputs"][0]["data"] == [4.0]


@pytest.mark.parametrize("request_doc, message", [
    (_v2([0.1], [2.5]), "input 'b': 2.5 is not an INT64"),
    (_v2([0.1], [300], "UINT8"), "input 'b': 300 is out of range for UINT8"),
    (_v2([None], [1]), "input 'a' holds null"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0],
                  "parameters": {"binary_data_size": 8}}]}, "input 'a' has both 'data' and binary_data_size"),
], ids=["float-as-int", "out-of-range", "null", "data-and-binary"])
def test_open_inference_v2_values_that_do_not_fit_get_400(fast_server, request_doc, message):
    """Found by a README-only user: 2.5 sent as INT64 became 2, 300 as UINT8 was a 500, a null became NaN."""
    status, _, out = fast_server("POST", "/v2/models/fast/infer", request_doc)
    assert status == 400 and message in json.loads(out)["error"], out


def test_accept_with_quality_values_and_unsupported_types(fast_server):
    one = {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2]]}}
    status, headers, out = fast_server("POST", "/invocations", one,
                                       {"Accept": f"application/json;q=0.5, {ARROW};q=0.9"})
    assert status == 200 and headers["content-type"] == ARROW, headers
    assert pa.ipc.open_stream(out).read_all().column(0).to_pylist() == [4.0]
    status, _, out = fast_server("POST", "/invocations", one, {"Accept": "text/html"})
    assert status == 406 and "text/html" in json.loads(out)["message"], out
    status, headers, _ = fast_server("POST", "/invocations", one, {"Accept": "text/html, */*;q=0.1"})
    assert status == 200 and headers["content-type"] == "application/json"


TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def limits_server(slow_model):
    """A model slower (2 s) than the timeout (0.5 s), a queue of 2, a 10 KiB body limit and a token."""
    server = Server([slow_model, "--max-queue", "2", "--timeout-s", "0.5", "--max-body-mb", "0.01",
                     "--auth-token", TOKEN], env={"SLOW_MODEL_S": "2"}, headers=AUTH)
    yield server
    server.stop()


def test_timeout_gets_504_and_frees_its_queue_place(limits_server):
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(limits_server, "POST", "/invocations", _split([1.0]))  # the model is busy 2 s
        time.sleep(0.1)
        queued = list(pool.map(lambda _: limits_server("POST", "/invocations", _split([2.0])), range(2)))
        assert first.result()[0] == 504
    for status, _, out in queued:
        assert status == 504 and "no answer within 0.5 s (--timeout-s)" in json.loads(out)["message"]
    # the two that timed out no longer hold the queue's two places, though the model is still busy
    status, _, out = limits_server("POST", "/invocations", _split([3.0]))
    assert status == 504, out


def test_a_full_queue_gets_503_with_retry_after(limits_server):
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: limits_server("POST", "/invocations", _split([1.0])), range(10)))
    full = [(h, out) for status, h, out in results if status == 503]
    assert full and all(status in (503, 504) for status, _, _ in results)
    for headers, out in full:
        assert headers["retry-after"] == "1"
        assert "has 2 requests waiting (--max-queue); retry later" in json.loads(out)["message"]
    assert _metric(limits_server.metrics(), "arrowscore_rejected_total", model="slow", reason="overloaded") >= len(full)


def test_a_body_over_the_limit_gets_413(limits_server):
    big = json.dumps(_split([1.5] * 2000)).encode()
    assert len(big) > 0.01 * (1 << 20)
    status, _, out = limits_server("POST", "/invocations", big, {"Content-Type": "application/json"})
    assert status == 413
    assert f"the body is {len(big):,} bytes, over the limit of 10,485 (--max-body-mb)" in json.loads(out)["message"]
    # no Content-Length (http.client sends an iterator chunked): counted while it is read
    status, _, out = limits_server("POST", "/invocations", iter([big[:6000], big[6000:]]),
                                   {"Content-Type": "application/json"})
    assert status == 413 and "the body is over the limit of 10,485 bytes (--max-body-mb)" in json.loads(out)["message"]


def test_an_unknown_content_type_gets_415(limits_server):
    status, _, out = limits_server("POST", "/invocations", b"x=1", {"Content-Type": "text/plain"})
    assert status == 415
    assert "content type 'text/plain' is not supported; send application/json, text/csv" in json.loads(out)["message"]
    status, _, out = limits_server("POST", "/invocations", b"x\n1.0\n", {"Content-Type": "text/csv; charset=latin-1"})
    assert status == 415 and "charset 'latin-1' is not supported; send utf-8" in json.loads(out)["message"]


def test_the_token_is_required_but_not_for_health(limits_server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (("POST", "/invocations"), ("GET", "/metrics"), ("GET", "/version"),
                             ("GET", "/v2/models/slow"), ("POST", "/v2/models/slow/infer")):
            status, h, out = call(limits_server.port, method, path, b"{}", headers)
            assert status == 401 and h["www-authenticate"] == "Bearer", (path, out)
            assert "needs 'Authorization: Bearer <token>'" in out.decode()
    for path in ("/ping", "/health", "/v2/health/live", "/v2/health/ready", "/v2/models/slow/ready"):
        assert call(limits_server.port, "GET", path)[0] == 200  # probes need no token
    assert limits_server("GET", "/version")[0] == 200  # this client sends the token
    assert call(limits_server.port, "GET", "/version", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200


def test_sigterm_drains_requests_in_flight_then_exits_0(serve, slow_model):
    server = serve([slow_model], env={"SLOW_MODEL_S": "1"})
    n = 4
    with ThreadPoolExecutor(n) as pool:
        # the first alone, so that it is being scored (1 s) when the others come and must queue behind it
        # (sent together, the batcher could take all four into one batch and nothing would stay queued)
        futures = [pool.submit(server, "POST", "/invocations", _split([0.0]))]
        time.sleep(0.5)
        futures += [pool.submit(server, "POST", "/invocations", _split([float(i)])) for i in range(1, n)]
        deadline = time.monotonic() + 30
        while _metric(server.metrics(), "arrowscore_queue_depth", model="slow") < n - 1:  # one scoring, the rest queued
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # new connections are refused while the requests in flight finish
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.02)
        assert not all(f.done() for f in futures)
        results = [f.result() for f in futures]
    for i, (status, _, out) in enumerate(results):
        assert status == 200 and json.loads(out)["predictions"] == [2.0 * i], out
    assert server.proc.wait(timeout=60) == 0, server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


# ---- an alias moved while requests flow ----------------------------------------------------------
def _times_two(df):
    return df["x"] * 2.0


def _times_three(df):
    return df["x"] * 3.0


def _broken(df):
    raise RuntimeError("this version cannot score anything")


def _wait_for(what: str, check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


def _registry(tmp_path, fns) -> tuple:
    """(MlflowClient, tracking uri) of a sqlite registry holding model 'doubler', one version per function."""
    import engine
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("serve", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("doubler")
    for version, fn in enumerate(fns, 1):
        model = engine.save_model(tmp_path / f"v{version}{fn.__name__}", fn, signature=pa.schema([pa.field("x", pa.float64(), False)]))
        run = client.create_run(experiment).info.run_id
        client.log_artifacts(run, str(model), "model")
        client.set_terminated(run)
        client.create_model_version("doubler", f"runs:/{run}/model", run)
    return client, uri


def test_an_alias_moved_while_requests_flow(serve, tmp_path):
    import threading

    need("uvicorn", "arrowscore serve")
    client, uri = _registry(tmp_path, (_times_two, _times_three, _broken))  # versions 1, 2, 3
    client.set_registered_model_alias("doubler", "live", "1")
    server = serve(["models:/doubler@live", "--reload-every-s", "0.5", "--cache-dir", tmp_path / "cache"],
                   env={"MLFLOW_TRACKING_URI": uri})
    assert server.json("GET", "/version")["models"]["doubler"]["version"] == "1"

    answers, stop = [], threading.Event()

    def flow():
        while not stop.is_set():
            status, _, out = server("POST", "/invocations", _split([1.0, 2.0]))
            answers.append((status, out))

    sender = threading.Thread(target=flow)
    sender.start()
    try:
        _wait_for("answers from version 1", lambda: len(answers) > 5)
        client.set_registered_model_alias("doubler", "live", "2")
        _wait_for("/version names version 2", lambda: server.json("GET", "/version")["models"]["doubler"]["version"] == "2")
        assert server.json("POST", "/invocations", _split([1.0]))["predictions"] == [3.0]
        assert server.json("GET", "/v2/models/doubler")["versions"] == ["2"]
        seen = len(answers)
        _wait_for("answers from version 2", lambda: len(answers) > seen + 5)

        client.set_registered_model_alias("doubler", "live", "3")  # a version that cannot score its sample
        _wait_for("version 3 refused",
                  lambda: _metric(server.metrics(), "arrowscore_model_reloads_total", outcome="refused") >= 1)
        time.sleep(1.5)  # three more checks of the alias: the refused version is not loaded again
        assert _metric(server.metrics(), "arrowscore_model_reloads_total", outcome="refused") == 1
        assert server.json("GET", "/version")["models"]["doubler"]["version"] == "2"
        assert server.json("POST", "/invocations", _split([1.0]))["predictions"] == [3.0]
    finally:
        stop.set()
        sender.join()
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    predictions = [json.loads(out)["predictions"] for _, out in answers]
    assert set(map(tuple, predictions)) == {(2.0, 4.0), (3.0, 6.0)}
    first_new = predictions.index([3.0, 6.0])
    assert all(p == [3.0, 6.0] for p in predictions[first_new:])  # never the old version after the swap
    assert "version 3 of models:/doubler@live did not load or score a sample; still serving version 2" in server.stop()


def test_workers_follow_the_alias_and_keep_serving_when_a_version_cannot_be_downloaded(serve, tmp_path):
    import shutil

    client, uri = _registry(tmp_path, (_times_two, _times_three, _times_three))  # versions 1, 2, 3
    missing = client.get_model_version("doubler", "3")
    shutil.rmtree(tmp_path / "artifacts" / missing.run_id)  # version 3's files are gone from the store
    client.set_registered_model_alias("doubler", "live", "1")
    server = serve(["models:/doubler@live", "--workers", "2", "--reload-every-s", "0.5",
                    "--cache-dir", tmp_path / "cache"], env={"MLFLOW_TRACKING_URI": uri})

    def versions_by_worker(rounds=8) -> dict:
        seen = {}
        for _ in range(rounds):
            with ThreadPoolExecutor(8) as pool:
                for doc in pool.map(lambda _: server.json("GET", "/version"), range(8)):
                    seen[doc["pid"]] = doc["models"]["doubler"]["version"]
        return seen

    _wait_for("both workers answer", lambda: len(versions_by_worker()) == 2)
    client.set_registered_model_alias("doubler", "live", "3")
    _wait_for("both workers failed to download version 3", lambda: _metric(
        server.metrics(), "arrowscore_model_reloads_total", outcome="unavailable") >= 2)
    assert set(versions_by_worker().values()) == {"1"}
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: server.json("POST", "/invocations", _split([float(i)])), range(16)))
    assert [o["predictions"] for o in outs] == [[2.0 * i] for i in range(16)]  # still version 1, every worker

    client.set_registered_model_alias("doubler", "live", "2")
    _wait_for("both workers serve version 2", lambda: set(versions_by_worker().values()) == {"2"})
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: server.json("POST", "/invocations", _split([float(i)])), range(16)))
    assert [o["predictions"] for o in outs] == [[3.0 * i] for i in range(16)]
    assert _metric(server.metrics(), "arrowscore_model_reloads_total", outcome="swapped") == 2  # one per worker
    log = server.stop()
    assert log.count("cannot download version 3 of models:/doubler@live; still serving version 1") >= 2


# ---- several workers ---------------------------------------------------------------------------
def test_two_workers_both_answer_and_metrics_add_up(serve, slow_model):
    server = serve([slow_model, "--workers", "2"])
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2:  # connections go to whichever worker accepts first
        assert time.monotonic() < deadline, f"only worker {pids} answered"
        with ThreadPoolExecutor(8) as pool:
            pids |= {doc["pid"] for doc in pool.map(lambda _: server.json("GET", "/version"), range(8))}
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: server.json("POST", "/invocations", _split([float(i)])), range(20)))
    assert [o["predictions"] for o in outs] == [[2.0 * i] for i in range(20)]
    for _ in range(6):  # whichever worker answers /metrics counts both workers' requests
        text = server.metrics()
        assert _metric(text, "arrowscore_requests_total", route="invocations", status="200") == 20
        assert _metric(text, "arrowscore_batch_rows_sum", model="slow") == 20
        # each worker's own gauge, read from both workers' files
        assert {int(_labels(line)["pid"]) for line in text.splitlines()
                if line.startswith("arrowscore_model_info{")} == pids


# ---- cloud platforms -----------------------------------------------------------------------------
PLATFORM_ENV = ("SAGEMAKER_BIND_TO_PORT", "AIP_HTTP_PORT", "AIP_HEALTH_ROUTE", "AIP_PREDICT_ROUTE",
                "AIP_STORAGE_URI", "ARROWSCORE_MODEL")


def test_sagemaker_port_and_model_from_the_environment(serve, logged_models):
    from engine.server import platform

    case = logged_models["xgboost_booster"]
    port = _free_port()
    env = {**dict.fromkeys(PLATFORM_ENV), "SAGEMAKER_BIND_TO_PORT": str(port), "ARROWSCORE_MODEL": case.uris["path"]}
    assert platform({k: v for k, v in env.items() if v}).host == "0.0.0.0"  # without --host; here 127.0.0.1
    server = serve([], env=env, port=port, port_flag=False)  # no model, no --port
    status, _, out = server("POST", "/invocations", _csv(case.arrow_input), {"Content-Type": "text/csv"})
    assert status == 200, out
    _same(_from_json(json.loads(out)), case.expected, "sagemaker csv")
    _same(_from_json(server.json("POST", "/invocations", _mlflow_bodies(case)["dataframe_split"])), case.expected,
          "sagemaker json")


def test_vertex_routes_port_and_model_from_the_environment(serve, logged_models):
    from engine.server import platform

    case = logged_models["pyfunc_custom"]
    port = _free_port()
    env = {**dict.fromkeys(PLATFORM_ENV), "AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/vertex/health",
           "AIP_PREDICT_ROUTE": "/vertex/predict", "AIP_STORAGE_URI": case.uris["path"]}
    assert platform({k: v for k, v in env.items() if v}).host == "0.0.0.0"  # without --host; here 127.0.0.1
    server = serve([], env=env, port=port, port_flag=False, ping="/vertex/health")
    records = _mlflow_bodies(case)["instances"]["instances"]
    doc = server.json("POST", "/vertex/predict", {"instances": records, "parameters": case.params})
    assert list(doc) == ["predictions"]
    _same(_from_json(doc), case.expected, "vertex")


# ---- a model that cannot load ------------------------------------------------------------------
def _corrupt(root: Path, slow_model) -> Path:
    import shutil

    broken = root / "broken"
    shutil.copytree(slow_model, broken)
    (broken / "callable.pkl").write_bytes(b"not a pickle")
    return broken


@pytest.mark.parametrize("case", ["no-such-path", "not-a-model", "corrupt", "corrupt-2-workers"])
def test_a_model_that_cannot_load_exits_2_naming_it(tmp_path, slow_model, case):
    need("uvicorn", "arrowscore serve")
    (tmp_path / "empty").mkdir()
    path = {"no-such-path": tmp_path / "missing", "not-a-model": tmp_path / "empty"}.get(case) or \
        _corrupt(tmp_path, slow_model)
    workers = ["--workers", "2"] if case.endswith("workers") else []
    out = subprocess.run([sys.executable, "-m", "engine", "serve", f"good={slow_model}", f"bad={path}", *workers,
                          "--port", str(_free_port())], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr, out.stderr
    assert lines[-1].startswith(f"arrowscore: ModelLoadError: model 'bad' ({path})"), out.stderr


def test_a_port_in_use_is_refused_before_the_models_load(slow_model):
    """Found by a README-only user: the server loaded its models, then uvicorn's error and exit 3."""
    need("uvicorn", "arrowscore serve")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "engine", "serve", str(slow_model), "--port", str(port)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"arrowscore: ConfigError: cannot listen on 127.0.0.1:{port}")
    assert "loaded" not in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_following_an_alias_needs_one(serve, slow_model):
    server = serve([slow_model, "--reload-every-s", "1"])
    assert server("GET", "/ping")[0] == 200
    assert "--reload-every-s follows models:/NAME@ALIAS URIs; slow" in server.stop()


def test_a_model_that_loads_but_cannot_score_is_said_at_start(serve, tmp_path):
    """A model missing a package it needs only to predict (an image built without it) answers /ping:
    the server says at start that it could not score a sample, instead of only every request's 500."""
    import engine

    path = engine.save_model(tmp_path / "broken", _broken, signature=pa.schema([pa.field("x", pa.float64(), False)]))
    server = serve([path])
    assert server("GET", "/ping")[0] == 200
    out = server.stop()
    assert "could not score a sample of its signature (rows of zeros): ScoringError" in out, out
    assert "this version cannot score anything" in out


def test_a_served_forest_answers_single_rows_as_mlflow(serve, tmp_path):
    """A scikit-learn forest (fitted on a DataFrame, logged by MLflow) served: lone 1-row requests, the
    compiled small-batch path's domain, answer what MLflow predicts (within its stated tolerance)."""
    import mlflow
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from flavors import compiled

    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"])
    y = frame["a"] * 2 + np.sin(frame["b"])
    keys = {"reg": RandomForestRegressor(20, max_depth=6, random_state=0).fit(frame, y),
            "clf": RandomForestClassifier(20, max_depth=6, random_state=0).fit(frame, np.where(y > 0, "up", "down"))}
    for key, model in keys.items():
        mlflow.sklearn.save_model(model, str(tmp_path / key), skops_trusted_types=["sklearn.tree._tree.Tree"],
                                  pip_requirements=["scikit-learn"],
                                  signature=mlflow.models.infer_signature(frame, model.predict(frame)))
    server = serve([f"{key}={tmp_path / key}" for key in keys])
    server.wait_for("take the compiled path", 2)  # built in the background (the library answers meanwhile)
    for key in keys:
        expected = mlflow.pyfunc.load_model(str(tmp_path / key)).predict(frame)
        for i in (0, 1, 2, 299):
            doc = server.json("POST", f"/models/{key}/invocations",
                              {"dataframe_split": {"columns": list(frame.columns), "data": [frame.iloc[i].tolist()]}})
            _same(_from_json(doc), expected[i:i + 1], f"{key} row {i}", rtol=compiled.RTOL)
    assert server.stop().count("take the compiled path") == 2  # one line per model
