"""Prometheus metrics of `softnpu serve` (prometheus-client), one registry per server.

Served in the text exposition format at TF Serving's path, /monitoring/prometheus/metrics, on
the REST port (host/serving/rest.py):

  softnpu_requests_total{method, model, version, status}          calls answered, by gRPC status
  softnpu_request_latency_seconds{method, model, version, status} histogram of their latency
  softnpu_device_cycles{model, version}                           histogram of NPU cycles per request
  softnpu_queue_depth                                             requests waiting for a device
  softnpu_inflight_bytes                                          memory reserved by admitted requests
  softnpu_rejected_total{reason}                                  unauthenticated calls, ...
  softnpu_device_restarts_total                                   device processes the watcher restarted
  softnpu_batch_size, softnpu_batch_requests                      histograms of examples and requests per
                                                                  batch (with --enable-batching)

`version` is the version that answered, or the one asked for ("" = latest) when none did.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

__all__ = ["ServingMetrics", "METRICS_PATH", "CONTENT_TYPE"]

METRICS_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, float("inf"))
_CYCLE_BUCKETS = tuple(10 ** e * m for e in range(3, 11) for m in (1, 3)) + (float("inf"),)


class _Callbacks:
    """Counters read from the server's own tallies when scraped (nothing to keep in step)."""

    def __init__(self, rejected, restarted):
        self._rejected, self._restarted = rejected, restarted

    def collect(self):
        rejected = CounterMetricFamily("softnpu_rejected", "calls refused before their handler ran",
                                       labels=["reason"])
        for reason, count in sorted(self._rejected().items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily("softnpu_device_restarts", "device processes restarted by the watcher",
                                  value=self._restarted())


class ServingMetrics:
    def __init__(self, queue_depth=lambda: 0, inflight_bytes=lambda: 0, rejected=dict,
                 restarted=lambda: 0):
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["method", "model", "version", "status"]
        self.requests = Counter("softnpu_requests", "calls answered", labels, registry=self.registry)
        self.latency = Histogram("softnpu_request_latency_seconds", "latency of the calls answered",
                                 labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.cycles = Histogram("softnpu_device_cycles", "NPU cycles per request (all its examples)",
                                ["model", "version"], buckets=_CYCLE_BUCKETS, registry=self.registry)
        Gauge("softnpu_queue_depth", "requests waiting for a device",
              registry=self.registry).set_function(queue_depth)
        Gauge("softnpu_inflight_bytes", "bytes reserved by admitted requests",
              registry=self.registry).set_function(inflight_bytes)
        self.registry.register(_Callbacks(rejected, restarted))
        self.batch_size = Histogram("softnpu_batch_size", "examples per batch the batcher dispatched",
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("softnpu_batch_requests", "requests per batch the batcher dispatched",
                                        buckets=_BATCH_BUCKETS, registry=self.registry)

    def batch(self, examples: int, requests: int) -> None:
        self.batch_size.observe(examples)
        self.batch_requests.observe(requests)

    def observe(self, method: str, model: str, version, status: str, seconds: float) -> None:
        values = (method, model or "-", str(version or ""), status)
        self.requests.labels(*values).inc()
        self.latency.labels(*values).observe(seconds)

    def device_cycles(self, model: str, version, cycles: int) -> None:
        self.cycles.labels(model, str(version)).observe(cycles)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
