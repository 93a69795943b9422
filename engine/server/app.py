"""The ASGI application: routes, protocols, errors, auth, metrics; every request ends in its model's
``Batcher`` and so in ``Model.score_batch``.

Routes (``NAME`` is a served model's name; ``/invocations`` serves the first model):

    GET  /ping  /health                       200 when every model is loaded (also AIP_HEALTH_ROUTE)
    GET  /version                             arrowscore's version, the worker's pid, each model's URI and version
    GET  /metrics                             Prometheus text
    POST /invocations  /models/NAME/invocations   MLflow's protocol, Arrow IPC, Parquet (also AIP_PREDICT_ROUTE)
    GET  /v2  /v2/health/live  /v2/health/ready   Open Inference Protocol v2
    GET  /v2/models/NAME[/versions/V][/ready]
    POST /v2/models/NAME[/versions/V]/infer
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import itertools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from ..errors import ConfigError, EngineError, ModelLoadError, SchemaError, ScoringError
from . import protocols
from .batcher import Batcher, Overloaded
from .options import ServeOptions
from .contracts import Routes

__all__ = ["App", "Entry", "Routes"]

log = logging.getLogger("arrowscore.serve")
access = logging.getLogger("arrowscore.access")

# the request headers read here (ASGI servers give names in lower case); the others are not decoded
_V2_HEADER = "inference-header-content-length"  # the v2 binary tensor data extension: the JSON part's length
_HEADERS = {b"content-type", b"accept", b"content-length", b"x-request-id", b"authorization", b"content-encoding",
            _V2_HEADER.encode()}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST", headers=(), v2: bool = False):
        super().__init__(message)
        self.status, self.code, self.headers, self.v2 = status, code, list(headers), v2

    def body(self) -> bytes:
        if self.v2:
            return orjson.dumps({"error": str(self)})
        return orjson.dumps({"error_code": self.code, "message": str(self)})


@dataclass
class Entry:
    """One served model: what answers now (swapped whole on reload) and where it came from."""

    name: str
    uri: str
    model: object
    version: str | None = None
    load_seconds: float = 0.0
    batcher: Batcher | None = field(default=None, repr=False)
    _schema: tuple = field(default=(None, None), repr=False)

    @property
    def input_schema(self):
        """The answering model's input schema, computed once per model (not per request)."""
        model, schema = self._schema
        if model is not self.model:
            self._schema = (self.model, self.model.input_schema)
        return self._schema[1]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("arrowscore")
    except PackageNotFoundError:
        return "0+unknown"


class App:
    """The server's ASGI callable; ``load`` gives it its models (in the worker process, at startup)."""

    def __init__(self, load, options: ServeOptions, routes: Routes = Routes(), auth_token: str | None = None):
        from .metrics import Metrics

        self._load, self.options, self.routes = load, options, routes
        self.token = auth_token.encode() if auth_token else None
        self.entries: dict[str, Entry] = {}
        self.metrics = Metrics()
        self.ready = False
        self._tasks: list[asyncio.Task] = []
        self._max_body = int(options.max_body_mb * (1 << 20))
        # request ids: unique per process and start, without a uuid4 (os.urandom) per request
        self._ids = itertools.count()
        self._id_prefix = uuid.uuid4().hex[:12]

    # ---- ASGI ----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    log.error("cannot start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(None, self._load)
        for entry in entries:
            entry.batcher = Batcher(entry, self.options.max_batch_rows, self.options.max_delay_ms / 1000,
                                    self.options.max_queue, self.metrics)
            entry.batcher.start()
            self.entries[entry.name] = entry
            self.metrics.loaded(entry)
        if self.options.reload_every_s:
            from .reload import follow

            for entry in self.entries.values():
                if "@" in entry.uri and entry.uri.startswith("models:/"):
                    self._tasks.append(loop.create_task(follow(entry, self.options, self.metrics)))
        # the loaded models are long-lived: out of the collector's sight, full collections stop costing
        # tens of ms (the p99 of a busy server was one full collection over ~130k objects)
        gc.collect()
        gc.freeze()
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for entry in self.entries.values():
            await entry.batcher.stop()

    # ---- HTTP ----------------------------------------------------------------------------------
    async def _http(self, scope, receive, send):
        """ASGI: the body read, then ``respond`` (``--http uvicorn``, or any ASGI server)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _HEADERS}
        body, error = None, self.refuse_early(scope["method"], scope["path"], headers)
        if error is None:
            try:
                body = await self._body(headers, receive)
            except HTTPError as exc:
                error = exc
        status, body, response = await self.respond(scope["method"], scope["path"], headers, body,
                                                    scope.get("client"), error)
        response.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": response})
        await send({"type": "http.response.body", "body": body})

    async def respond(self, method: str, path: str, headers: dict, body: bytes | None, client=None,
                      error: Exception | None = None) -> tuple[int, bytes, list]:
        """(status, body, headers but content-length) for a request read whole; ``error``: the request
        was refused before its body was read (413, a malformed request). Every HTTP layer ends here."""
        started = time.perf_counter()
        rid = headers.get("x-request-id") or f"{self._id_prefix}{next(self._ids):08x}"
        route = _label(path, self.routes)
        try:
            if error is not None:
                raise error
            status, body, ctype, extra = await self._route(method, path, headers, body)
        except HTTPError as exc:
            status, body, ctype, extra = exc.status, exc.body(), "application/json", exc.headers
            if status >= 500 or status == 413:
                log.warning("%s %s -> %d: %s (request %s)", method, path, status, exc, rid)
            else:
                log.info("%s %s -> %d: %s (request %s)", method, path, status, exc, rid)
        except Exception as exc:  # a bug: one line in the log, a JSON 500, never a traceback to the client
            log.error("%s %s -> 500: %s: %s (request %s)", method, path, type(exc).__name__, exc,
                      rid, exc_info=log.isEnabledFor(logging.DEBUG))
            status, ctype, extra = 500, "application/json", []
            body = HTTPError(500, f"{type(exc).__name__}: {exc}", "INTERNAL_ERROR", v2=path.startswith("/v2")).body()
        response = [(b"content-type", ctype.encode()), (b"x-request-id", rid.encode("latin-1"))]  # as it came
        if extra:
            response.extend((k.encode(), v.encode()) for k, v in extra)
        seconds = time.perf_counter() - started
        self.metrics.request(route, status, seconds)
        if self.options.access_log:
            access.info('%s "%s %s" %d %.1f ms %s', (client or ("-",))[0], method, path, status, seconds * 1000, rid)
        return status, body, response

    def refuse_early(self, method: str, path: str, headers: dict) -> HTTPError | None:
        """The refusal of a request that its head alone decides (no token, a body declared too large,
        a content coding not taken), before its body is read: no upload is invited, nothing buffered."""
        try:
            self._check_auth(method, path, headers)
        except HTTPError as exc:
            return exc
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self._max_body:
            return self.too_large(int(length))
        coding = headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("identity", ""):
            return HTTPError(415, f"Content-Encoding {coding!r} is not supported; send the body uncompressed",
                             "UNSUPPORTED_MEDIA_TYPE")
        return None

    @property
    def max_body(self) -> int:
        return self._max_body

    def too_large(self, length: int | None) -> HTTPError:
        """413 for a body of ``length`` bytes (None: not declared, and past the limit as it came)."""
        if length is None:
            return HTTPError(413, f"the body is over the limit of {self._max_body:,} bytes (--max-body-mb)",
                             "REQUEST_TOO_LARGE")
        return HTTPError(413, f"the body is {length:,} bytes, over the limit of {self._max_body:,} "
                              "(--max-body-mb)", "REQUEST_TOO_LARGE")

    @staticmethod
    def malformed(exc: Exception) -> HTTPError:
        return HTTPError(400, f"malformed HTTP request: {exc}", "BAD_REQUEST")

    @staticmethod
    def head_too_large(message: str) -> HTTPError:
        return HTTPError(431, message, "REQUEST_HEADER_FIELDS_TOO_LARGE")

    async def _body(self, headers: dict, receive) -> bytes:
        """The body as it comes (a declared length over the limit was refused by ``refuse_early``)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(499, "the client went away", "CLIENT_CLOSED")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise self.too_large(None)
            if not message.get("more_body"):
                if not chunks:  # the whole body in one message: no copy
                    return chunk
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    def _check_auth(self, method: str, path: str, headers: dict) -> None:
        """Every route needs the token but the probes (health, readiness: what Kubernetes and the clouds call)."""
        if self.token is None or path in ("/ping", "/health", "/v2/health/live", "/v2/health/ready") \
                or path in self.routes.health or (method in ("GET", "HEAD") and path.startswith("/v2/models/")
                                                  and path.rstrip("/").endswith("/ready")):
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token)):
            raise HTTPError(401, "this server needs 'Authorization: Bearer <token>'", "UNAUTHENTICATED",
                            [("www-authenticate", "Bearer")])

    async def _route(self, method: str, path: str, headers: dict, body: bytes):
        self._check_auth(method, path, headers)
        if method == "HEAD":  # a GET whose body the HTTP layer leaves out
            method = "GET"
        if method == "GET" and (path in ("/ping", "/health") or path in self.routes.health):
            if not self.ready:
                raise HTTPError(503, "the models are loading", "NOT_READY", [("retry-after", "1")])
            return 200, b"\n", "application/json", []
        if method == "POST" and (path == "/invocations" or path in self.routes.predict):
            return await self._invocations(self._entry(None), headers, body)
        if path.startswith("/models/") and path.endswith("/invocations") and method == "POST":
            name = path[len("/models/"):-len("/invocations")]
            return await self._invocations(self._entry(name), headers, body)
        if path == "/version" and method == "GET":
            doc = {"arrowscore": _version(), "pid": os.getpid(),  # which worker answered
                   "models": {e.name: {"uri": e.uri, "version": e.version, "flavor": e.model.flavor}
                              for e in self.entries.values()}}
            return 200, orjson.dumps(doc), "application/json", []
        if path == "/metrics" and method == "GET":
            body, ctype = self.metrics.render()
            return 200, body, ctype, []
        if path == "/v2" or path.startswith("/v2/"):
            return await self._v2(method, path, headers, body)
        if path in ("/ping", "/health", "/invocations", "/version", "/metrics"):
            raise HTTPError(405, f"{method} is not allowed on {path}", "METHOD_NOT_ALLOWED")
        raise HTTPError(404, f"no route {path}; see /v2 and /invocations", "NOT_FOUND")

    def _authorized(self, headers: dict) -> bool:
        """The request may learn what this server serves (no token is set, or it sent the token)."""
        try:
            self._check_auth("POST", "/", headers)
        except HTTPError:
            return False
        return True

    def _entry(self, name: str | None, v2: bool = False, named: bool = True) -> Entry:
        if not self.ready:
            raise HTTPError(503, "the models are loading", "NOT_READY", [("retry-after", "1")], v2=v2)
        if name is None:
            return next(iter(self.entries.values()))
        entry = self.entries.get(name)
        if entry is None:
            served = f"; this server has {list(self.entries)}" if named else ""  # not to probes without the token
            raise HTTPError(404, f"no model {name!r}{served}", "NOT_FOUND", v2=v2)
        return entry

    async def _score(self, entry: Entry, batch, params, v2: bool = False):
        try:
            params = entry.model.check_params(params)
            return await entry.batcher.submit(batch, params, self.options.timeout_s)
        except Overloaded:
            self.metrics.rejected.labels(entry.name, "overloaded").inc()
            raise HTTPError(503, f"model {entry.name!r} has {self.options.max_queue} requests waiting (--max-queue); "
                                 "retry later", "OVERLOADED", [("retry-after", "1")], v2=v2) from None
        except asyncio.TimeoutError:
            self.metrics.rejected.labels(entry.name, "timeout").inc()
            raise HTTPError(504, f"no answer within {self.options.timeout_s} s (--timeout-s)", "TIMEOUT",
                            v2=v2) from None
        except (ConfigError, SchemaError) as exc:
            raise HTTPError(400, str(exc), "INVALID_PARAMETER_VALUE", v2=v2) from None
        except ScoringError as exc:  # the model raised on these rows: as MLflow, a 400 naming the error
            raise HTTPError(400, str(exc), "BAD_REQUEST", v2=v2) from None
        except (EngineError, ValueError, TypeError) as exc:
            raise HTTPError(400, f"{type(exc).__name__}: {exc}", "BAD_REQUEST", v2=v2) from None

    async def _invocations(self, entry: Entry, headers: dict, body: bytes):
        try:
            batch, params = protocols.decode(headers.get("content-type"), body, entry.input_schema)
        except protocols.Unsupported as exc:
            raise HTTPError(415, str(exc), "UNSUPPORTED_MEDIA_TYPE") from None
        except ConfigError as exc:
            raise HTTPError(400, str(exc), "BAD_REQUEST") from None
        try:
            answer = protocols.negotiate(headers.get("accept"))
        except protocols.Unsupported as exc:
            raise HTTPError(406, str(exc), "NOT_ACCEPTABLE") from None
        out = await self._score(entry, batch, params)
        body, ctype = protocols.encode_mlflow(out, answer)
        return 200, body, ctype, []

    # ---- Open Inference Protocol v2 --------------------------------------------------------------
    async def _v2(self, method: str, path: str, headers: dict, body: bytes):
        parts = path.rstrip("/").split("/")[2:]  # after "/v2"
        if method == "GET" and not parts:
            doc = {"name": "arrowscore", "version": _version(), "extensions": ["binary_tensor_data"]}
            return 200, orjson.dumps(doc), "application/json", []
        if method == "GET" and parts in (["health", "live"], ["health", "ready"]):
            if parts[1] == "ready" and not self.ready:
                raise HTTPError(503, "the models are loading", "NOT_READY", v2=True)
            return 200, b"", "application/json", []
        if len(parts) >= 2 and parts[0] == "models":
            name, rest = parts[1], parts[2:]
            entry = self._entry(name, v2=True, named=self._authorized(headers))
            if len(rest) >= 2 and rest[0] == "versions":
                if entry.version is None or rest[1] != str(entry.version):
                    raise HTTPError(404, f"model {name!r} has no version {rest[1]!r} here (it serves "
                                         f"{entry.version!r})", v2=True)
                rest = rest[2:]
            if method == "GET" and not rest:
                return 200, orjson.dumps(_v2_metadata(entry)), "application/json", []
            if method == "GET" and rest == ["ready"]:
                return 200, b"", "application/json", []
            if method == "POST" and rest == ["infer"]:
                try:
                    batch, params, request = protocols.decode_v2(body, headers.get(_V2_HEADER))
                except ConfigError as exc:
                    raise HTTPError(400, str(exc), v2=True) from None
                out = await self._score(entry, batch, params, v2=True)
                try:
                    body, header_length = protocols.encode_v2(pa.Table.from_batches([out]), entry.name,
                                                              entry.version, request)
                except ConfigError as exc:
                    raise HTTPError(400, str(exc), v2=True) from None
                if header_length is None:
                    return 200, body, "application/json", []
                return 200, body, protocols.BINARY, [(_V2_HEADER, str(header_length))]
        raise HTTPError(404, f"no route {path} in the v2 protocol", "NOT_FOUND", v2=True)


def _label(path: str, routes: Routes) -> str:
    """The route label of a path in the metrics (bounded: never the raw path)."""
    if path in ("/ping", "/health") or path in routes.health or path.startswith("/v2/health"):
        return "health"
    if path == "/invocations" or path in routes.predict or (path.startswith("/models/") and path.endswith("/invocations")):
        return "invocations"
    if path.endswith("/infer"):
        return "v2_infer"
    if path.startswith("/v2"):
        return "v2_metadata"
    return path[1:] if path in ("/version", "/metrics") else "other"


def _v2_metadata(entry: Entry) -> dict:
    def tensors(schema):
        out = []
        for f in schema or []:
            shape, kind = [-1], f.type
            while protocols.is_list(kind):
                shape.append(kind.list_size if hasattr(kind, "list_size") and kind.list_size > 0 else -1)
                kind = kind.value_type
            out.append({"name": f.name, "datatype": protocols.v2_type(f.type), "shape": shape})
        return out

    model = entry.model
    return {"name": entry.name, "versions": [str(entry.version)] if entry.version is not None else [],
            "platform": f"mlflow_{model.flavor}", "inputs": tensors(model.input_schema),
            "outputs": tensors(model.output_schema)}


def load_entries(specs: list[tuple], options: ServeOptions) -> list[Entry]:
    """Load each (name, uri, local path, registry version) once; a model that cannot load stops the
    server with its name."""
    from ..model import load_model

    entries = []
    for name, uri, path, version in specs:
        started = time.perf_counter()
        try:
            # shared_cpu: the event loop shares the cores; ONNX Runtime's idle threads must not spin on them
            model = load_model(path, flavor=options.flavor, model_config=options.model_config,
                               cache_dir=options.cache_dir, shared_cpu=True, small_batches=True)
        except ModelLoadError as exc:
            raise type(exc)(f"model {name!r} ({uri}): {exc}") from exc
        except Exception as exc:  # the model's own loading code raised (a corrupt pickle, a load_context bug)
            raise ModelLoadError(f"model {name!r} ({uri}) did not load: {type(exc).__name__}: {exc}") from exc
        entries.append(Entry(name, uri, model, version, time.perf_counter() - started))
        log.info("serving %s (%s, flavor %s, version %s) loaded in %.2f s", name, uri, model.flavor, version,
                 entries[-1].load_seconds)
        _probe(name, model)
    return entries


def _probe(name: str, model) -> None:
    """Score rows of zeros in the signature once: a model that loads but cannot score (a package missing
    from an image) is said at start, not by every request's 500. A warning only: zeros may be no valid
    input for some models."""
    from .reload import sample

    rows = sample(model)
    if rows is None:
        return
    try:
        model.score_batch(rows)
    except Exception as exc:
        log.warning("model %s loaded but could not score a sample of its signature (rows of zeros): %s: %s; "
                    "requests may fail the same way", name, type(exc).__name__, exc)
