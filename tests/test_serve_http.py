"""The server's HTTP layer (engine/server/http.py) on raw sockets over 127.0.0.1, and where the batcher
runs a model's calls (the event loop or its thread). Servers are `python -m engine serve` subprocesses."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pyarrow as pa
import pytest
from needs import need
from test_serve import Server, _metric, _split, call

need("uvicorn", "arrowscore serve")


def _save(tmp_path_factory, name, fn):
    import engine

    return engine.save_model(tmp_path_factory.mktemp(name) / name, fn,
                             signature=pa.schema([pa.field("x", pa.float64(), False)]))


def _doubled(df):
    """x * 2 after SLOW_MODEL_S seconds (set in the server's environment)."""
    import os as _os
    import time as _time

    _time.sleep(float(_os.environ.get("SLOW_MODEL_S", "0")))
    return df["x"] * 2.0


@pytest.fixture(scope="module")
def doubler(tmp_path_factory):
    return _save(tmp_path_factory, "doubler", _doubled)


@pytest.fixture(scope="module")
def server(doubler):
    """Quick model, a 10 KiB body limit."""
    s = Server([doubler, "--max-body-mb", "0.01"])
    yield s
    s.stop()


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None, version: str = "1.1") -> bytes:
    head = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1"]
    if body and "Transfer-Encoding" not in (headers or {}):
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _post(xs, headers: dict | None = None, version: str = "1.1") -> bytes:
    return _request("POST", "/invocations", json.dumps(_split(xs)).encode(),
                    {"Content-Type": "application/json", **(headers or {})}, version)


class Conn:
    """One raw connection: what is sent is sent as is; answers are read one by one (Content-Length bodies)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def answer(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        """(status, headers, body); ``head_only``: the answer to a HEAD request (no body follows its head)."""
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"the connection closed before an answer; got {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status == 100 or head_only:
            return status, headers, b""
        length = int(headers["content-length"])
        while len(self.buf) < length:
            assert self._fill(), "the connection closed inside a body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self, within_s: float = 10) -> bool:
        """True once the server has closed the connection (and sent nothing more)."""
        self.sock.settimeout(within_s)
        try:
            return not self._fill() and not self.buf
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def _answer_then_closed(port: int, data: bytes) -> tuple[int, dict, bytes]:
    """Send ``data`` on a new connection: its one answer, once the server has closed the connection."""
    conn = Conn(port)
    try:
        conn.send(data)
        answer = conn.answer()
        assert conn.closed(), answer
        return answer
    finally:
        conn.close()


def _predictions(body: bytes) -> list:
    return json.loads(body)["predictions"]


def test_pipelined_requests_are_answered_in_order_on_one_connection(server):
    conn = Conn(server.port)
    try:
        # three requests in one packet; the second is a probe, answered without the model
        conn.send(_post([1.0]) + _request("GET", "/ping") + _post([2.0, 3.0]))
        status, headers, body = conn.answer()
        assert status == 200 and _predictions(body) == [2.0] and "connection" not in headers
        assert conn.answer()[0] == 200
        status, _, body = conn.answer()
        assert status == 200 and _predictions(body) == [4.0, 6.0]
        conn.send(_post([5.0]))  # the connection is kept alive
        assert _predictions(conn.answer()[2]) == [10.0]
    finally:
        conn.close()


def test_connection_close_and_http_1_0_close_after_the_answer(server):
    for data in (_post([1.0], headers={"Connection": "close"}), _post([1.0], version="1.0")):
        status, headers, body = _answer_then_closed(server.port, data)
        assert status == 200 and _predictions(body) == [2.0] and headers.get("connection") == "close"


def test_expect_100_continue_and_chunked_bodies(server):
    body = json.dumps(_split([1.0, 2.0])).encode()
    conn = Conn(server.port)
    try:
        conn.send(_request("POST", "/invocations", b"", {"Content-Type": "application/json", "Expect": "100-continue",
                                                          "Content-Length": str(len(body))}))
        assert conn.answer()[0] == 100  # before the body is sent
        conn.send(body)
        status, _, out = conn.answer()
        assert status == 200 and _predictions(out) == [2.0, 4.0]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
        conn.send(_request("POST", "/invocations", chunked, {"Content-Type": "application/json",
                                                             "Transfer-Encoding": "chunked"}))
        status, _, out = conn.answer()
        assert status == 200 and _predictions(out) == [2.0, 4.0]
    finally:
        conn.close()


def test_a_body_over_the_limit_is_refused_at_once_and_the_connection_closed(server):
    # declared too large: 413 before the body is sent, even with Expect: 100-continue
    status, headers, out = _answer_then_closed(server.port, _request("POST", "/invocations", b"", {
        "Content-Type": "application/json", "Content-Length": str(1 << 20), "Expect": "100-continue"}))
    assert status == 413 and headers["connection"] == "close"
    assert "over the limit of 10,485 (--max-body-mb)" in json.loads(out)["message"]
    # chunked, no length: refused when the count passes the limit, the rest not read
    big = json.dumps(_split([1.5] * 2000)).encode()
    status, headers, out = _answer_then_closed(server.port, _request("POST", "/invocations", b"%x\r\n%s\r\n" % (
        len(big), big), {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
    assert status == 413 and "over the limit of 10,485 bytes" in json.loads(out)["message"]
    # a client that sends its whole (refused) body before reading: still gets its answer, no reset
    big = b"[" + b" " * (32 << 20) + b"]"  # more than the socket buffers hold: sent while the server answers
    status, headers, out = _answer_then_closed(server.port, _request("POST", "/invocations", big,
                                                                     {"Content-Type": "application/json"}))
    assert status == 413 and headers["connection"] == "close", out
    assert call(server.port, "POST", "/invocations", json.dumps(_split([1.0])).encode(),
                {"Content-Type": "application/json"})[0] == 200


def test_a_malformed_request_gets_400_after_the_answers_before_it(server):
    conn = Conn(server.port)
    try:
        conn.send(_post([1.0]) + b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = conn.answer()
        assert status == 200 and _predictions(body) == [2.0]
        status, headers, body = conn.answer()
        assert status == 400 and headers["connection"] == "close"
        assert "malformed HTTP request" in json.loads(body)["message"]
        assert conn.closed()
    finally:
        conn.close()


def test_headers_over_the_limit_get_431_and_a_close(server):
    from engine.server.http import MAX_HEAD

    conn = Conn(server.port)
    try:
        big = {f"X-Filler-{i}": "y" * 1000 for i in range(MAX_HEAD // 1000 + 1)}
        conn.send(_post([1.0]) + _request("GET", "/ping", headers=big))
        assert _predictions(conn.answer()[2]) == [2.0]  # the request before it is answered
        status, headers, body = conn.answer()
        assert status == 431 and headers["connection"] == "close"
        assert f"the request line and headers are over {MAX_HEAD:,} bytes" in json.loads(body)["message"]
        assert conn.closed()
    finally:
        conn.close()


def test_a_header_that_never_ends_gets_431_and_is_not_held(server):
    conn = Conn(server.port)
    try:  # the parser held an unfinished header whole: 200 MB grew the server by as much
        conn.send(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(16):
            try:
                conn.send(b"a" * 16384)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)  # separate reads, as a slow client's
        status, headers, body = conn.answer()
        assert status == 431 and headers["connection"] == "close", body
    finally:
        conn.close()


def test_what_strangers_sent_gets_what_http_says(server):
    """Found by a README-only user: each request once answered otherwise (the old answer in brackets)."""
    conn = Conn(server.port)
    try:
        body = json.dumps(_split([1.0])).encode()
        head = {"Content-Type": "application/json"}
        # the absolute form proxies send [404 "no route http://..."]
        conn.send(_request("POST", f"http://127.0.0.1:{server.port}/invocations", body, head))
        status, _, out = conn.answer()
        assert status == 200 and _predictions(out) == [2.0], out
        # HEAD of a GET route [405]; the body is left out, its length kept
        conn.send(_request("HEAD", "/version"))
        status, headers, _ = conn.answer(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        conn.send(_request("GET", "/ping"))  # nothing of a body came between
        assert conn.answer()[0] == 200
    finally:
        conn.close()
    conn = Conn(server.port)
    try:  # a request id that is not ASCII comes back byte for byte [re-encoded as UTF-8]
        conn.send(_post([1.0], headers={}).replace(b"Host:", "X-Request-Id: caf\u00e9\r\nHost:".encode("latin-1"), 1))
        assert conn.answer()[1]["x-request-id"] == "caf\u00e9".encode("latin-1").decode("latin-1")
        # a compressed body [read as plain]
        conn.send(_request("POST", "/invocations", b"\x1f\x8b", {"Content-Type": "application/json",
                                                                  "Content-Encoding": "gzip"}))
        status, _, out = conn.answer()
        assert status == 415 and "Content-Encoding 'gzip' is not supported" in json.loads(out)["message"]
    finally:
        conn.close()
    conn = Conn(server.port)
    try:  # HTTP/1.0 asking for keep-alive: closed after the answer [kept open, no Connection header back];
        # no 100 Continue to HTTP/1.0 [sent]
        body = json.dumps(_split([1.0])).encode()
        conn.send(_request("POST", "/invocations", body, {"Content-Type": "application/json", "Expect": "100-continue",
                                                          "Connection": "keep-alive"}, version="1.0"))
        status, headers, out = conn.answer()
        assert status == 200 and headers["connection"] == "close" and conn.closed()
    finally:
        conn.close()
    # JSON nested deeper than Python's stack [500 RecursionError]; a v2 shape with a 0 row size [500 ArrowInvalid]
    status, _, out = call(server.port, "POST", "/invocations", b"[" * 4000 + b"]" * 4000,
                          {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in json.loads(out)["message"], out
    v2 = {"inputs": [{"name": "x", "shape": [2, 0], "datatype": "FP64", "data": []}]}
    status, _, out = call(server.port, "POST", "/v2/models/doubler/infer", json.dumps(v2).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400 and "has a row size of 0" in json.loads(out)["error"], out


def test_a_client_that_pauses_inside_a_request_is_answered(server):
    """[closed after the 5 s keep-alive timeout, no answer]"""
    conn = Conn(server.port)
    try:
        request = _post([1.0, 2.0])
        conn.send(request[:40])
        time.sleep(6)
        conn.send(request[40:])
        status, _, out = conn.answer()
        assert status == 200 and _predictions(out) == [2.0, 4.0]
    finally:
        conn.close()


def test_without_the_token_nothing_is_uploaded_or_named(doubler):
    s = Server([doubler, "--auth-token", "t0ken"])
    try:
        conn = Conn(s.port)
        try:  # 401 from the head [after reading the whole body; a 100 Continue invited it]
            conn.send(_request("POST", "/invocations", b"", {"Content-Type": "application/json",
                                                             "Content-Length": str(90 << 20), "Expect": "100-continue"}))
            status, headers, out = conn.answer()
            assert status == 401 and headers["connection"] == "close", out
        finally:
            conn.close()
        status, _, out = call(s.port, "GET", "/v2/models/nope/ready")  # a probe: no token needed
        assert status == 404 and "doubler" not in out.decode(), out  # [it listed the served models]
        status, _, out = call(s.port, "GET", "/v2/models/nope/ready", headers={"Authorization": "Bearer t0ken"})
        assert status == 404 and "doubler" in out.decode(), out
    finally:
        s.stop()


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(server):
    conn = Conn(server.port)
    try:
        conn.send(_post([1.0]))
        assert conn.answer()[0] == 200
        started = time.monotonic()
        assert conn.closed(within_s=30)
        assert 3 < time.monotonic() - started < 20  # uvicorn's timeout_keep_alive: 5 s
    finally:
        conn.close()


def test_a_client_gone_while_queued_frees_its_place(serve_slow):
    """The request being scored holds the model 3 s; one queued behind it whose client hangs up leaves
    the queue at once (not when its timeout comes)."""
    busy = threading.Thread(target=lambda: call(serve_slow.port, "POST", "/invocations",
                                                json.dumps(_split([1.0])).encode(), {"Content-Type": "application/json"}))
    busy.start()
    try:
        time.sleep(0.5)
        conn = Conn(serve_slow.port)
        conn.send(_post([2.0]))
        deadline = time.monotonic() + 10
        while _metric(serve_slow.metrics(), "arrowscore_queue_depth", model="slow") < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.05)
        conn.close()
        deadline = time.monotonic() + 2  # the first request is still being scored
        while _metric(serve_slow.metrics(), "arrowscore_queue_depth", model="slow") > 0:
            assert time.monotonic() < deadline, "the request of a client that hung up stayed queued"
            time.sleep(0.05)
        assert busy.is_alive()
    finally:
        busy.join()


@pytest.fixture(scope="module")
def serve_slow(tmp_path_factory):
    path = _save(tmp_path_factory, "slow", _doubled)
    s = Server([path, "--timeout-s", "60"], env={"SLOW_MODEL_S": "3"})
    yield s
    s.stop()


def test_sigterm_answers_a_request_still_being_sent(doubler):
    import signal

    s = Server([doubler])
    conn = Conn(s.port)
    try:
        body = json.dumps(_split([1.0, 2.0])).encode()
        request = _request("POST", "/invocations", body, {"Content-Type": "application/json"})
        conn.send(request[:-10])  # the headers and most of the body
        time.sleep(0.3)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.send(request[-10:])
        status, headers, out = conn.answer()
        assert status == 200 and _predictions(out) == [2.0, 4.0] and headers["connection"] == "close"
        assert s.proc.wait(timeout=30) == 0
    finally:
        conn.close()
        s.stop()


def test_uvicorns_own_protocol_serves_the_same_answers(doubler):
    s = Server([doubler, "--http", "uvicorn", "--max-body-mb", "0.01"])
    try:
        assert s.json("POST", "/invocations", _split([1.0, 2.0]))["predictions"] == [2.0, 4.0]
        status, _, out = s("POST", "/invocations", json.dumps(_split([1.5] * 2000)).encode(),
                           {"Content-Type": "application/json"})
        assert status == 413 and "over the limit" in json.loads(out)["message"]
    finally:
        s.stop()


# ---- where the batcher calls a model -----------------------------------------------------------------
class _Where:
    """A real model whose calls note the thread they ran on, and may wait first: always (a model waiting
    on I/O) or only off the event loop's thread (what a wait for the GIL, held by a busy loop, adds to a
    call on the scoring thread: 3-15 ms measured beside a busy loop)."""

    def __init__(self, model, wait_s: float = 0.0, off_loop_only: bool = False):
        self.model, self.wait_s, self.off_loop_only, self.threads = model, wait_s, off_loop_only, []
        self.input_schema = model.input_schema

    def score_batch(self, batch, params=None):
        name = threading.current_thread().name
        self.threads.append(name)
        if self.wait_s and not (self.off_loop_only and name == "MainThread"):
            time.sleep(self.wait_s)
        return self.model.score_batch(batch, params)


async def _one_by_one(model: _Where, rows, n: int) -> None:
    """n requests one after another through a Batcher (``rows``: a batch, or a list of batches taken in turn)."""
    from engine.server.app import Entry
    from engine.server.batcher import Batcher

    batcher = Batcher(Entry("m", "uri", model), 1024, 0.0, 1024)
    batcher.start()
    try:
        batches = rows if isinstance(rows, list) else [rows]
        for i in range(n):
            batch = batches[i % len(batches)]
            out = await batcher.submit(batch, None, 30)
            assert out.num_rows == batch.num_rows
    finally:
        await batcher.stop()


def _onnx(logged_models, wait_s: float = 0.0, off_loop_only: bool = False) -> tuple[_Where, pa.RecordBatch]:
    import engine

    m = logged_models["onnx"]
    model = _Where(engine.load_model(m.uris["path"], shared_cpu=True), wait_s, off_loop_only)
    return model, m.arrow_input.slice(0, 1).to_batches()[0]


def test_a_quick_model_moves_to_the_event_loop_though_its_calls_on_the_thread_wait(logged_models):
    """Timed by wall clock on the thread, a 0.1 ms call looked milliseconds long (its waits for the
    GIL, which a busy loop holds) and stayed on the thread for good: 810 us per 16-row call in a server
    under load, 0.40x the floor's req/s."""
    model, rows = _onnx(logged_models, wait_s=0.003, off_loop_only=True)
    asyncio.run(_one_by_one(model, rows, 20))
    assert model.threads[0].startswith("arrowscore-"), model.threads  # the first call: not yet timed
    assert model.threads[-10:] == ["MainThread"] * 10, model.threads


def test_calls_of_many_rows_after_calls_of_one_stay_on_the_event_loop(logged_models):
    """A call's cost is mostly fixed: scaled from the last 1-row call, a 64-row call looked 64 times as
    long, so under load every other call (1 row, then the 31 queued meanwhile) went to the thread."""
    import engine

    m = logged_models["onnx"]
    model = _Where(engine.load_model(m.uris["path"], shared_cpu=True))
    rows = pa.concat_tables([m.arrow_input] * (64 // m.arrow_input.num_rows + 1)).combine_chunks()
    asyncio.run(_one_by_one(model, [rows.slice(0, 1).to_batches()[0], rows.slice(0, 64).to_batches()[0]], 24))
    assert model.threads[-12:] == ["MainThread"] * 12, model.threads


def test_a_model_that_waits_seldom_or_never_runs_on_the_event_loop(logged_models):
    from engine.server.batcher import PROBE_WALL_S

    model, rows = _onnx(logged_models, wait_s=0.01)  # tried on the loop once, then kept off it
    asyncio.run(_one_by_one(model, rows, 12))
    assert model.threads.count("MainThread") == 1, model.threads
    model, rows = _onnx(logged_models, wait_s=PROBE_WALL_S * 1.2)  # never on the loop
    asyncio.run(_one_by_one(model, rows, 6))
    assert all(t.startswith("arrowscore-") for t in model.threads), model.threads
