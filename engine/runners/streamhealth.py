"""Health and Prometheus metrics of a running stream (``--metrics-port``), for Kubernetes probes and
Prometheus scrapes; the buckets are the server's (``engine.server.metrics``).

    GET /health    200 while the loop turns (liveness); 503 when no turn ended for ``stale_s``
    GET /ready     200 while the loop turns and the brokers answer (readiness); 503 otherwise
    GET /metrics   arrowscore_stream_messages_total, _rows_total, _dead_lettered_total, _batches_total,
                   arrowscore_stream_batch_seconds and _batch_rows (histograms), arrowscore_stream_lag
                   (messages behind the partitions' ends), arrowscore_stream_up (brokers answer: 1/0)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import ConfigError, require

__all__ = ["StreamMonitor"]


class StreamMonitor:
    """The endpoint's state, fed by the stream loop after each turn and batch."""

    def __init__(self, host: str, port: int, stale_s: float):
        prom = require("prometheus_client", "serve", "--metrics-port")
        from ..server.metrics import LATENCY, ROWS

        self.stale_s, self.last_turn, self.up, self._lag_at = stale_s, time.monotonic(), False, 0.0
        self.registry = r = prom.CollectorRegistry()
        self.messages = prom.Counter("arrowscore_stream_messages", "input messages scored or dead-lettered", registry=r)
        self.rows = prom.Counter("arrowscore_stream_rows", "rows scored", registry=r)
        self.dead = prom.Counter("arrowscore_stream_dead_lettered", "messages sent to the dead-letter topic", registry=r)
        self.batches = prom.Counter("arrowscore_stream_batches", "micro-batches delivered and committed", registry=r)
        self.seconds = prom.Histogram("arrowscore_stream_batch_seconds", "time of one micro-batch: decode, score, "
                                      "produce, commit", buckets=LATENCY + (30.0, 60.0), registry=r)
        self.batch_rows = prom.Histogram("arrowscore_stream_batch_rows", "rows per micro-batch",
                                         buckets=ROWS, registry=r)
        self.lag = prom.Gauge("arrowscore_stream_lag", "messages behind the ends of the assigned partitions",
                              registry=r)
        self.up_gauge = prom.Gauge("arrowscore_stream_up", "1 while the Kafka brokers answer", registry=r)
        self._render = lambda: prom.generate_latest(r)
        try:
            self.server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as exc:
            raise ConfigError(f"--metrics-port: cannot listen on {host}:{port} ({exc.strerror or exc}); pass "
                              "another port") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="arrowscore-stream-metrics", daemon=True).start()

    def _handler(self):
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/metrics":
                    self._send(200, monitor._render(), "text/plain; version=0.0.4; charset=utf-8")
                elif self.path in ("/health", "/ready"):
                    status = monitor.status(ready=self.path == "/ready")
                    self._send(200 if status["status"] == "ok" else 503, json.dumps(status).encode(),
                               "application/json")
                else:
                    self._send(404, b'{"error": "not found: GET /health, /ready or /metrics"}', "application/json")

            def _send(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds: not worth a log line each
                pass

        return Handler

    def status(self, ready: bool) -> dict:
        idle = time.monotonic() - self.last_turn
        if idle > self.stale_s:
            return {"status": "stalled", "reason": f"no loop turn for {idle:.0f} s"}
        if ready and not self.up:
            return {"status": "unavailable", "reason": "the Kafka brokers do not answer"}
        return {"status": "ok"}

    def turned(self, up: bool, lag) -> None:
        """After each loop turn: alive; the brokers' state; the lag (at most once a second)."""
        now = time.monotonic()
        self.last_turn, self.up = now, up
        self.up_gauge.set(1 if up else 0)
        if up and now - self._lag_at >= 1.0:
            self._lag_at = now
            self.lag.set(lag())

    def batch(self, messages: int, rows: int, dead: int, seconds: float) -> None:
        self.messages.inc(messages)
        self.rows.inc(rows)
        self.dead.inc(dead)
        self.batches.inc()
        self.seconds.observe(seconds)
        self.batch_rows.observe(rows)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
