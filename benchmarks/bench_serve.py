"""HTTP serving benchmark: `arrowscore serve` against `mlflow models serve`, a hand-written floor, and itself.

Every point is one server started as a subprocess on a free port, waited for on /ping, checked with one
request (status 200, predictions equal to the in-process model's), warmed up, loaded with wrk (one
thread, a Lua script that POSTs the same body on every request), then stopped with SIGTERM. The same
model and the same request body go to every server in a case, one server after another:

  1 json    1-row JSON (dataframe_split) to a 16-feature ONNX MLP, 32 connections: arrowscore vs
            `mlflow models serve --env-manager local` at its default workers (1) and at --workers 2
  2 floor   the same against a minimal ASGI app (uvicorn + uvloop + httptools, orjson, the
            onnxruntime session called directly): what any Python server could at best do
  3 batch   1-row JSON to XGBoost (100 trees), 64 connections: dynamic batching on (default) vs off
            (--max-batch-rows 1); and the compiled small-batch path (default) vs --no-compiled-trees
  4 arrow   10,000-row Arrow IPC bodies (Accept: Arrow) to the ONNX model, 4 connections: rows/s vs
            the in-process scorer (engine.load_model(path).score_batch on the same batch, here)

    python benchmarks/bench_serve.py                 # full run: 8 s per point, about 3 minutes
    python benchmarks/bench_serve.py --quick         # 2 s per point, to check that it runs
    python benchmarks/bench_serve.py --cases json,floor --json out.json

Each point also reports the server's CPU time per request (all its processes, from /proc): on a shared
machine req/s moves with the neighbours' load, CPU us/request much less, so it tells a slow server from
a busy machine. Needs wrk (apt-get install wrk). wrk counts a response as an error when its status is
>= 400; the check request before each run makes sure the server answers 200 at all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import engine  # noqa: E402

N_FEATURES = 16
NAMES = [f"f{i}" for i in range(N_FEATURES)]
JSON, ARROW = "application/json", "application/vnd.apache.arrow.stream"
ARROW_ROWS = 10_000
CASES = ("json", "floor", "batch", "arrow")

# wrk's done() hook: the numbers it prints, as one JSON line (latency in microseconds)
_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "{ctype}"
wrk.headers["Accept"] = "{accept}"
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {{"requests": %d, "duration_us": %d, "non2xx": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass
class Point:
    """One server under one load."""

    server: str
    connections: int
    req_s: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    cpu_us_per_req: float  # the server's CPU time (all its processes) per request: steadier than req/s under load
    rows_s: float = 0.0


# ---- models and bodies ---------------------------------------------------------------------------
def build_models(root: Path, quick: bool) -> dict:
    """{'onnx': path, 'xgboost': path}, saved with MLflow's own flavors and a signature of 16 double
    columns, as inferred from a pandas frame (JSON numbers are doubles; the ONNX graph itself takes float32)."""
    import mlflow
    import pandas as pd
    import xgboost as xgb
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, N_FEATURES))
    y = X[:, 0] * 2 + np.sin(X[:, 1])
    frame = pd.DataFrame(X[:5], columns=NAMES)
    mlp = MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=30 if quick else 200, random_state=0).fit(X, y)
    onnx_path = root / "onnx"
    mlflow.onnx.save_model(to_onnx(mlp, X[:1].astype(np.float32)), str(onnx_path),
                           signature=mlflow.models.infer_signature(frame, mlp.predict(X[:5]).astype(np.float32)))
    trees = xgb.XGBRegressor(n_estimators=100, max_depth=6, random_state=0).fit(X, y)
    xgb_path = root / "xgboost"
    mlflow.xgboost.save_model(trees, str(xgb_path),
                              signature=mlflow.models.infer_signature(frame, trees.predict(X[:5])))
    return {"onnx": onnx_path, "xgboost": xgb_path}


def json_body(row: np.ndarray) -> bytes:
    return json.dumps({"dataframe_split": {"columns": NAMES, "data": [[float(v) for v in row]]}}).encode()


def arrow_batch(rows: int) -> pa.RecordBatch:
    X = np.random.default_rng(1).normal(size=(rows, N_FEATURES))
    return pa.record_batch([pa.array(X[:, i]) for i in range(N_FEATURES)], names=NAMES)


def arrow_body(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


# ---- the floor: a minimal ASGI app -------------------------------------------------------------------
def floor_app():
    """uvicorn's app factory for the floor: parse dataframe_split with orjson, call the onnxruntime
    session in the event loop, answer {"predictions": [...]}. Nothing else (no schema, no batching)."""
    import onnxruntime as ort
    import orjson

    session = ort.InferenceSession(os.environ["BENCH_FLOOR_ONNX"], providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    headers = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "GET":  # /ping
            out = b"\n"
        else:
            x = np.asarray(orjson.loads(body)["dataframe_split"]["data"], dtype=np.float32)
            out = orjson.dumps({"predictions": session.run(None, {feed: x})[0].ravel().tolist()})
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


# ---- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_MODELS_WORKERS"}  # "default" means default
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow runs `uvicorn`
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT)
    return {**env, **extra}


def command(kind: str, model: Path, port: int, *flags: str) -> tuple[list[str], dict]:
    if kind == "arrowscore":
        return [sys.executable, "-m", "engine", "serve", str(model), "--port", str(port), *flags], _env()
    if kind == "mlflow":
        return [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(model),
                "--env-manager", "local", "-p", str(port), *flags], _env()
    if kind == "floor":
        return [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "benchmarks"), "--factory",
                "bench_serve:floor_app", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                "--lifespan", "off", "--no-access-log", "--log-level", "warning"], \
            _env(BENCH_FLOOR_ONNX=str(model / "model.onnx"))
    raise ValueError(kind)


class Server:
    """A server subprocess in its own process group: started, waited for on /ping, stopped with SIGTERM
    to the whole group (uvicorn's workers included), SIGKILL after 20 s."""

    def __init__(self, argv: list[str], env: dict, port: int, log: Path):
        self.argv, self.env, self.port, self.log = argv, env, port, log
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"{' '.join(self.argv)} exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise RuntimeError(f"{' '.join(self.argv)} did not answer /ping in 180 s:\n{self._tail()}")

    def __exit__(self, *exc) -> None:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(self.proc.pid):
                self.proc.poll()
                time.sleep(0.1)
            if not _group_alive(self.proc.pid):
                break
        self.proc.wait()
        self._out.close()

    def cpu_s(self) -> float:
        """CPU seconds used so far by the live processes of the server's group."""
        ticks = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit() and _pgid(pid) == self.proc.pid:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    ticks += int(fields[11]) + int(fields[12])  # utime, stime
                except (OSError, IndexError, ValueError):
                    pass
        return ticks / os.sysconf("SC_CLK_TCK")

    def _tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def post(self, body: bytes, ctype: str, accept: str) -> bytes:
        req = urllib.request.Request(self.url + "/invocations", body, {"Content-Type": ctype, "Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{' '.join(self.argv[:4])} answered {exc.code}: {exc.read()[:2000]!r}") from None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # a zombie leader still counts; one that is reaped and alone is gone
    return any(_pgid(p) == pgid and not _zombie(p) for p in os.listdir("/proc") if p.isdigit())


def _pgid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def predictions(body: bytes, ctype: str) -> np.ndarray:
    """The numbers in a response: JSON {"predictions": ...} in any nesting MLflow uses, or an Arrow stream."""
    if ctype == ARROW:
        return pa.ipc.open_stream(body).read_all().column(0).to_numpy().astype(np.float64)
    doc = json.loads(body)
    doc = doc.get("predictions", doc) if isinstance(doc, dict) else doc

    def flat(v):
        if isinstance(v, dict):
            return [x for item in v.values() for x in flat(item)]
        if isinstance(v, list):
            return [x for item in v for x in flat(item)]
        return [v]

    return np.asarray(flat(doc), dtype=np.float64)


# ---- load ----------------------------------------------------------------------------------------
def wrk(url: str, script: Path, connections: int, duration_s: float) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", "--timeout", "10s",
            "-s", str(script), url + "/invocations"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    line = [line for line in res.stdout.splitlines() if line.startswith("BENCH ")]
    if res.returncode != 0 or not line:
        raise RuntimeError(f"wrk failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return json.loads(line[-1][len("BENCH "):])


def measure(name: str, argv_env: tuple, port: int, body: Path, ctype: str, expected: np.ndarray,
            connections: int, warm_s: float, run_s: float, root: Path, rows: int = 1) -> Point:
    """Start the server, check one answer, warm up, load it, stop it."""
    argv, env = argv_env
    script = body.with_suffix(".lua")
    script.write_text(_LUA.format(ctype=ctype, accept=ctype, body=body))
    with Server(argv, env, port, root / (re.sub(r"[^A-Za-z0-9]+", "_", name) + ".log")) as server:
        got = predictions(server.post(body.read_bytes(), ctype, ctype), ctype)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
        wrk(server.url, script, connections, warm_s)
        cpu = server.cpu_s()
        r = wrk(server.url, script, connections, run_s)
        cpu = server.cpu_s() - cpu
    req_s = r["requests"] / (r["duration_us"] / 1e6)
    point = Point(name, connections, req_s, r["p50_us"] / 1000, r["p99_us"] / 1000, r["non2xx"],
                  r["connect"] + r["read"] + r["write"] + r["timeout"], cpu / max(r["requests"], 1) * 1e6, req_s * rows)
    print(f"  {name:<40} c={connections:<3} {req_s:>9,.0f} req/s  p50 {point.p50_ms:6.1f} ms  "
          f"p99 {point.p99_ms:6.1f} ms  non-2xx {point.non2xx}  socket errors {point.socket_errors}  "
          f"server CPU {point.cpu_us_per_req:,.0f} us/req", flush=True)
    return point


def in_process_rows_s(model_path: Path, batch: pa.RecordBatch, budget_s: float) -> float:
    """Rows/s of Model.score_batch on the batch, in this process: the median of 5-call rounds (not the
    best: the server's side is a throughput over seconds, noise included, so the baseline is too)."""
    model = engine.load_model(model_path)
    model.score_batch(batch)
    rounds = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(rounds) < 3:
        t0 = time.perf_counter()
        for _ in range(5):
            model.score_batch(batch)
        rounds.append((time.perf_counter() - t0) / 5)
    return batch.num_rows / float(np.median(rounds))


# ---- cases ---------------------------------------------------------------------------------------
def run(cases: list[str], warm_s: float, run_s: float, quick: bool) -> tuple[list[dict], list[Point]]:
    import pandas as pd

    rows, points = [], []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp)
        models = build_models(root, quick)
        row = np.random.default_rng(2).normal(size=N_FEATURES)
        one = pd.DataFrame([row], columns=NAMES)
        one_batch = pa.RecordBatch.from_pandas(one, preserve_index=False)
        (root / "one.json").write_bytes(json_body(row))
        expect = {k: engine.load_model(p).score_batch(one_batch).column(0).to_numpy().astype(np.float64)
                  for k, p in models.items()}

        def point(name, kind, model, *flags, connections, body="one.json", ctype=JSON, expected=None, n=1):
            port = free_port()
            p = measure(name, command(kind, models[model], port, *flags), port, root / body, ctype,
                        expect[model] if expected is None else expected, connections, warm_s, run_s, root, n)
            points.append(p)
            return p

        if "json" in cases or "floor" in cases:
            print("1-row JSON, ONNX MLP (16 features), 32 connections", flush=True)
            ours = point("arrowscore serve", "arrowscore", "onnx", connections=32)
            if "json" in cases:
                peers = [point("mlflow models serve (default: 1 worker)", "mlflow", "onnx", connections=32),
                         point("mlflow models serve --workers 2", "mlflow", "onnx", "--workers", "2", connections=32)]
                best = max(peers, key=lambda p: p.req_s)
                for label, peer in (("default workers", peers[0]), (f"best workers: {best.server}", best)):
                    rows.append(_row(f"1 JSON 1 row ONNX c32: vs MLflow ({label})", ours, peer, 10.0, p99_ms=25.0))
            if "floor" in cases:
                floor = point("floor ASGI app (uvicorn+orjson+ort)", "floor", "onnx", connections=32)
                rows.append(_row("2 JSON 1 row ONNX c32: vs floor ASGI app", ours, floor, 0.8))
        if "batch" in cases:
            print("1-row JSON, XGBoost (100 trees), 64 connections", flush=True)
            # batching on vs off with XGBoost answering every call (the compiled path would shrink the
            # per-call cost that batching saves); then the compiled small-batch path (the default) vs that
            on = point("arrowscore serve --no-compiled-trees", "arrowscore", "xgboost", "--no-compiled-trees",
                       connections=64)
            off = point("... --max-batch-rows 1 --no-compiled-trees", "arrowscore", "xgboost", "--max-batch-rows", "1",
                        "--no-compiled-trees", connections=64)
            rows.append(_row("3 JSON 1 row XGBoost c64: batching on vs off", on, off, 3.0, p99_ms=50.0))
            compiled = point("arrowscore serve (default)", "arrowscore", "xgboost", connections=64)
            rows.append(_row("3b JSON 1 row XGBoost c64: compiled small-batch path vs XGBoost alone", compiled, on, 1.0))
        if "arrow" in cases:
            print(f"{ARROW_ROWS:,}-row Arrow IPC bodies, ONNX MLP, 4 connections", flush=True)
            batch = arrow_batch(ARROW_ROWS)
            (root / "big.arrow").write_bytes(arrow_body(batch))
            expected = engine.load_model(models["onnx"]).score_batch(batch).column(0).to_numpy().astype(np.float64)
            ours = point("arrowscore serve (Arrow in/out)", "arrowscore", "onnx", connections=4, body="big.arrow",
                         ctype=ARROW, expected=expected, n=ARROW_ROWS)
            local = in_process_rows_s(models["onnx"], batch, min(run_s, 5.0))
            print(f"  {'in-process Model.score_batch':<40} {local:>15,.0f} rows/s", flush=True)
            peer = Point("in-process Model.score_batch", 0, local / ARROW_ROWS, 0, 0, 0, 0, 1e6 * ARROW_ROWS / local,
                         local)
            rows.append(_row(f"4 Arrow {ARROW_ROWS // 1000}k rows ONNX c4: rows/s vs in-process", ours, peer, 0.5,
                             rows_s=True))
    return rows, points


def _row(case: str, ours: Point, peer: Point, goal_ratio: float, p99_ms: float | None = None,
         rows_s: bool = False) -> dict:
    ratio = ours.rows_s / peer.rows_s if rows_s else ours.req_s / peer.req_s
    met = (ratio >= goal_ratio and ours.non2xx == 0 and ours.socket_errors == 0
           and (p99_ms is None or ours.p99_ms <= p99_ms))
    goal = f">= {goal_ratio:g}x" + (f", p99 <= {p99_ms:g} ms" if p99_ms else "") + ", no non-2xx"
    return {"case": case, "ours": asdict(ours), "peer": asdict(peer), "ratio": ratio, "goal": goal, "met": met}


def _fmt(p: dict, rows_s: bool) -> str:
    if rows_s:
        return f"{p['rows_s']:,.0f} rows/s" + (f", p99 {p['p99_ms']:.1f} ms" if p["connections"] else "")
    return f"{p['req_s']:,.0f} req/s, p99 {p['p99_ms']:.1f} ms" + (f", {p['non2xx']} non-2xx" if p["non2xx"] else "")


def table(rows: list[dict]) -> str:
    lines = ["| case | ours | peer | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    for r in rows:
        rs = "rows/s" in r["case"]
        lines.append(f"| {r['case']} | {_fmt(r['ours'], rs)} | {r['peer']['server']}: {_fmt(r['peer'], rs)} | "
                     f"{r['ratio']:.2f}x | {r['goal']} | {'yes' if r['met'] else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per point and a smaller model: checks that it runs")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--seconds", type=float, help="measured seconds per point (default 8, --quick 2)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench_serve: wrk is not installed; apt-get install wrk", file=sys.stderr)
        return 2
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    run_s = args.seconds or (2.0 if args.quick else 8.0)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} on {os.cpu_count()} CPUs (other work on the machine moves req/s; "
          "server CPU us/req moves less)", flush=True)
    rows, points = run(cases, 1.0 if args.quick else 2.0, run_s, args.quick)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"seconds_per_point": run_s, "load_average_before": load[0], "cases": rows,
                                         "points": [asdict(p) for p in points]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
