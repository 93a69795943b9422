"""The server's HTTP/1.1 layer: an asyncio protocol on httptools that hands whole requests to
``App.respond`` and writes each answer in one ``write``.

uvicorn still runs the server (sockets, worker processes, signals, lifespan, graceful shutdown) and
builds one of these per connection (``uvicorn.run(..., http=Protocol)``); what it no longer does per
request is the ASGI cycle: a scope dict, receive/send messages, a header check per name, an Event,
a keep-alive timer and two writes (head, then body). Measured with ``benchmarks/bench_serve.py``
(1-row JSON to an ONNX MLP, 32 connections): see docs/benchmarks.md. ``--http uvicorn`` serves
through uvicorn's own httptools protocol and the app's ASGI interface instead.

What a client sees: keep-alive (HTTP/1.1's default; ``Connection: close`` and HTTP/1.0 close after the
answer), pipelined requests answered in order, ``Expect: 100-continue``, chunked request bodies, 413
as soon as a body's declared or received size passes the limit (then the connection closes), 400 and
a close on a malformed request, idle connections closed after uvicorn's ``timeout_keep_alive``
(5 s), and on shutdown the requests in flight answered, then every connection closed.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
from urllib.parse import unquote

import httptools

__all__ = ["Protocol"]

log = logging.getLogger("arrowscore.serve")

_STATUS = {code: b"HTTP/1.1 %d %s\r\n" % (code, http.HTTPStatus(code).phrase.encode()) for code in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_PIPELINE = 16  # requests read ahead of their answers on one connection before reading pauses
_JOIN_UNDER = 64 * 1024  # bodies smaller than this are copied behind the head (one write); larger: writelines
LINGER_S = 2.0
REQUEST_IDLE_S = 60.0  # a connection inside a request that sends nothing for this long is closed
MAX_HEAD = 64 * 1024  # request line and headers; past it, 431 and the connection closes (memory stays bounded)


def _status_line(code: int) -> bytes:
    return _STATUS.get(code) or b"HTTP/1.1 %d \r\n" % code


class _HeadTooLarge(Exception):
    pass


class _Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive", "error")

    def __init__(self, method, path, headers, body, keep_alive, error=None):
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.keep_alive, self.error = keep_alive, error


class Protocol(asyncio.Protocol):
    """One connection. uvicorn constructs it as it constructs its own protocols."""

    def __init__(self, config, server_state, app_state=None, _loop=None):
        if not config.loaded:
            config.load()
        app = config.loaded_app
        while not hasattr(app, "respond") and hasattr(app, "app"):  # uvicorn's middlewares, if any
            app = app.app
        self.app = app
        self.loop = _loop or asyncio.get_event_loop()
        self.state = server_state
        self.keep_alive_s = config.timeout_keep_alive
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.client = None
        self.pending: collections.deque[_Request] = collections.deque()
        self.task: asyncio.Task | None = None  # the request being answered
        self.closing = False  # answer what was read, then close (shutdown, Connection: close, an error)
        self.last_closes = False  # the last request read ends the connection: later ones are not answered
        self.in_message = False  # a request is being read (shutdown waits for it)
        self.headed = self.began = False  # its head was read; it began in the data being parsed
        self.linger = False  # the connection closes on an error with the client maybe still sending: read, discard
        self.discard = False
        self.reading = True
        self.writable = True
        self.idle_timer = None
        self.last_active = 0.0
        self._head_cache = (None, b"")  # (uvicorn's default headers list, its bytes): the date changes each second
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.path, self.method, self.http11 = "/", "GET", True
        self.head = 0  # bytes of the request line and headers so far
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.too_large = False

    # ---- connection ----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client = transport.get_extra_info("peername")
        self.state.connections.add(self)
        self.last_active = self.loop.time()
        self._arm_idle()

    def connection_lost(self, exc) -> None:
        self.state.connections.discard(self)
        self.closing = True
        self.pending.clear()
        self.parser = None  # and with it whatever part of a request it held
        self._reset()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # its place in the model's queue is freed; nobody is left to answer
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    # eof_received: the default (the transport closes, the request in flight is cancelled). A client that
    # half-closes after its request (`nc -N`) cannot be told from one that left, and a queued request of a
    # client that left must free its place; nginx too counts that as the client gone (its 499).

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: answer what was read, then close; an idle connection closes now."""
        self.closing = True
        if self.task is None and not self.pending and not self.in_message:
            self.transport.close()

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading its requests
        self.writable = False
        self._pause()

    def resume_writing(self) -> None:
        self.writable = True
        self._resume()

    def _pause(self) -> None:
        if self.reading:
            self.reading = False
            self.transport.pause_reading()

    def _resume(self) -> None:
        if not self.reading and self.writable and len(self.pending) < _PIPELINE and not self.transport.is_closing():
            self.reading = True
            self.transport.resume_reading()

    def _arm_idle(self) -> None:
        """One timer per connection, re-armed when it fires early (not one per request)."""
        if self.idle_timer is None and not self.closing:
            self.idle_timer = self.loop.call_at(self.last_active + self.keep_alive_s, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if self.task is not None or self.pending or self.transport.is_closing():
            return
        # between requests: uvicorn's keep-alive timeout; inside one (a client that pauses while sending): longer
        limit = max(self.keep_alive_s, REQUEST_IDLE_S) if self.in_message else self.keep_alive_s
        if self.loop.time() - self.last_active >= limit:
            self.transport.close()
        else:
            self.idle_timer = self.loop.call_at(self.last_active + limit, self._idle)

    def data_received(self, data: bytes) -> None:
        if self.discard or self.parser is None:
            return
        self.last_active = self.loop.time()
        self.began = False
        try:
            self.parser.feed_data(data)
            # a header that never ends is held by the parser, not passed to on_header: count what arrives
            # while the head is unfinished (from the next read on after the request began)
            if self.in_message and not self.headed and not self.began:
                self._count(len(data))
        except httptools.HttpParserUpgrade:  # no upgrades (websockets, h2c): what was read is answered, then close
            self.closing = self.last_closes = True
            if self.task is None and not self.pending:
                self.transport.close()
        except (httptools.HttpParserError, _HeadTooLarge) as exc:  # answered in its turn, then the connection closes
            self._refuse(exc)

    def _refuse(self, exc: Exception) -> None:
        """A request the parser cannot go on from: 400 (431 for a head too large) after the answers before it;
        what the client sends after it is dropped."""
        self.discard = True
        if not (self.last_closes or self.transport.is_closing()):
            self.last_closes = self.linger = True
            cause = exc if isinstance(exc, _HeadTooLarge) else exc.__context__  # a callback's own exception
            error = self.app.head_too_large(str(cause)) if isinstance(cause, _HeadTooLarge) else self.app.malformed(exc)
            self._enqueue(_Request("-", "-", {}, None, False, error))

    # ---- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self.in_message = self.began = True
        self.headed = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        self._count(len(name) + len(value))

    def _count(self, size: int) -> None:
        self.head += size
        if self.head > MAX_HEAD:
            raise _HeadTooLarge(f"the request line and headers are over {MAX_HEAD:,} bytes")

    def on_headers_complete(self) -> None:
        self.headed = True
        self.path = self._path()
        self.method = self.parser.get_method().decode("ascii")
        self.http11 = self.parser.get_http_version() == "1.1"
        refused = self.app.refuse_early(self.method, self.path, self.headers)
        if refused is not None:  # answered at once; the body is not read, the connection closes after
            self.too_large = self.linger = True
            self._queue(refused)
            return
        if self.headers.get("expect", "").lower() == "100-continue" and self.http11:
            self.transport.write(_CONTINUE)

    def _path(self) -> str:
        url = self.url
        if not url.startswith(b"/"):  # absolute form (http://host/path), as proxies send it
            try:
                url = httptools.parse_url(url).path or b"/"
            except httptools.HttpParserInvalidURLError:
                pass
        path = url.split(b"?", 1)[0].decode("latin-1")
        return unquote(path) if "%" in path else path

    def on_body(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self.size += len(chunk)
        if self.size > self.app.max_body:
            self.too_large = self.linger = True
            self.body = []
            self._queue(self.app.too_large(None))
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.in_message = False
        if not self.too_large:
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self._queue(body)

    # ---- requests and answers -------------------------------------------------------------------
    def _queue(self, body) -> None:
        """A request read whole (or refused from its head, ``body`` then the error): answered in order."""
        # HTTP/1.0 closes after its answer (keep-alive there would need a Connection header back)
        keep_alive = self.http11 and not self.too_large and self.parser.should_keep_alive()
        error = body if isinstance(body, Exception) else None
        request = _Request(self.method, self.path, self.headers, None if error else body, keep_alive, error)
        if self.last_closes or self.transport.is_closing():
            return
        self.last_closes = not keep_alive
        self._enqueue(request)

    def _enqueue(self, request: _Request) -> None:
        self.pending.append(request)
        if len(self.pending) >= _PIPELINE:
            self._pause()
        if self.task is None:
            self._next()

    def _next(self) -> None:
        request = self.pending.popleft()
        self.task = task = self.loop.create_task(self._answer(request))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    async def _answer(self, request: _Request) -> None:
        try:
            status, body, headers = await self.app.respond(request.method, request.path, request.headers,
                                                           request.body, self.client, request.error)
        except Exception as exc:  # noqa: BLE001 - a bug outside the app's own handling: a 500, then close
            log.error("%s %s -> 500: %s: %s", request.method, request.path, type(exc).__name__, exc, exc_info=True)
            status, headers = 500, [(b"content-type", b"application/json")]
            body = b'{"error_code": "INTERNAL_ERROR", "message": "the server failed this request"}'
            request.keep_alive = False
        finally:
            self.task = None
        self.state.total_requests += 1
        keep_alive = request.keep_alive and not (self.closing and not self.pending and not self.in_message)
        if self.transport.is_closing():
            return
        self._write(status, headers, b"" if request.method == "HEAD" else body, keep_alive, len(body))
        if not keep_alive:
            self._close()
            return
        self.last_active = self.loop.time()
        if self.pending:
            self._next()
        else:
            self._resume()
            self._arm_idle()

    def _close(self) -> None:
        """After the last answer. When the client may still be sending (a refused body, a malformed
        request), the server stops writing, then reads and drops what comes for up to LINGER_S: a
        close with unread data would reset the connection, and the client could lose the answer."""
        self.closing = True
        self.pending.clear()
        if self.linger and self.transport.can_write_eof():
            self.discard = True
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
            self._resume()
        else:
            self.transport.close()

    def _write(self, status: int, headers: list, body: bytes, keep_alive: bool, length: int | None = None) -> None:
        defaults, encoded = self._head_cache
        if defaults is not self.state.default_headers:  # uvicorn replaces the list (date) each second
            defaults = self.state.default_headers
            encoded = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
            self._head_cache = (defaults, encoded)
        parts = [_status_line(status), encoded]
        parts.extend(b"%s: %s\r\n" % pair for pair in headers)
        parts.append(b"content-length: %d\r\n" % (len(body) if length is None else length))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if len(body) < _JOIN_UNDER:
            parts.append(body)
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines([b"".join(parts), body])
