"""Prometheus metrics of a server (prometheus-client): requests by route and status, latency, batch
sizes, queue depth, rejected requests, each model's version and load time. With several workers the
counters of all of them are summed (prometheus-client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import os

__all__ = ["Metrics"]

LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series double the output and say nothing here

        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("arrowscore_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("arrowscore_request_seconds", "time to answer a request", ["route"],
                                 buckets=LATENCY, registry=r)
        self.batch_rows = Histogram("arrowscore_batch_rows", "rows per model call (merged requests)", ["model"],
                                    buckets=ROWS, registry=r)
        self.batch_seconds = Histogram("arrowscore_batch_seconds", "time of one model call", ["model"],
                                       buckets=LATENCY, registry=r)
        self.queue_depth = Gauge("arrowscore_queue_depth", "requests waiting for their model", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.rejected = Counter("arrowscore_rejected", "requests refused: overloaded (503) or timed out (504)",
                                ["model", "reason"], registry=r)
        self.info = Gauge("arrowscore_model_info", "the model answering (1) by name, URI, version and flavor",
                          ["model", "uri", "version", "flavor"], registry=r, multiprocess_mode="liveall")
        self.load_seconds = Gauge("arrowscore_model_load_seconds", "time to load the model answering", ["model"],
                                  registry=r, multiprocess_mode="liveall")
        self.reloads = Counter("arrowscore_model_reloads", "alias checks that found a new version: swapped, "
                               "refused (did not load or score a sample) or unavailable (not downloaded; tried "
                               "again)", ["model", "outcome"], registry=r)
        self._labels = {}
        self._children = {}

    def loaded(self, entry, previous=None) -> None:
        if previous is not None:  # 0: in multiprocess mode the old series stays in the worker's file (no remove())
            self.info.labels(*previous).set(0)
            if not self.multiprocess:
                self.info.remove(*previous)
        labels = (entry.name, entry.uri, str(entry.version), entry.model.flavor)
        self.info.labels(*labels).set(1)
        self._labels[entry.name] = labels
        self.load_seconds.labels(entry.name).set(entry.load_seconds)

    def labels_of(self, name: str):
        return self._labels.get(name)

    def request(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:  # routes are labels, statuses HTTP codes: a bounded set
            children = self._children[(route, status)] = (self.requests.labels(route, str(status)),
                                                           self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
