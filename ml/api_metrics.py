"""Prometheus metrics of the lookup API: request counts and latency per route template (a pure ASGI middleware),
lookup hits and misses, and which published version is served.

With ``PROMETHEUS_MULTIPROC_DIR`` set (several uvicorn workers), values live in that directory and ``/metrics``
aggregates every worker. Label values are bounded: routes are templates (``/v1/users/{user_id}/...``), never paths.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ApiMetrics:
    """Prometheus metrics of one app (its own registry, so several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("propensity_api_requests", "HTTP requests.", ["route", "method", "status"], registry=r)
        self.latency = Histogram(
            "propensity_api_request_seconds", "Request latency, seconds.", ["route"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.lookups = Counter("propensity_api_lookups", "Score lookups by result.", ["kind", "result"], registry=r)
        self.served_version = Gauge(
            "propensity_api_served_version", "Redis publish version served by the last lookup.", registry=r,
            multiprocess_mode="mostrecent",
        )
        self.served_info = Gauge(
            "propensity_api_served_info", "1 for the (version, model_version, score_date) served, 0 for earlier.",
            ["version", "model_version", "score_date"], registry=r, multiprocess_mode="mostrecent",
        )
        self._last: tuple[str, str, str] | None = None
        self._last_served: tuple[int, str, dt.date] | None = None
        # label children, bound once per label set (a labels() lookup per request costs more than the increment)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._lookup_children: dict[tuple[str, bool], Any] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request of ``route`` (a template) and observe its latency."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self.requests.labels(route, method, str(status)),
                                                       self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def lookup(self, kind: str, hit: bool) -> None:
        """Count one score lookup of ``kind`` (recommendations, pair) as a hit or a miss."""
        child = self._lookup_children.get((kind, hit))
        if child is None:
            child = self._lookup_children[(kind, hit)] = self.lookups.labels(kind, "hit" if hit else "miss")
        child.inc()

    def served(self, version: int, model_version: str, score_date: dt.date) -> None:
        """Record that ``version`` (of ``model_version``, ``score_date``) answered; cheap when it did last time too."""
        if (version, model_version, score_date) == self._last_served:
            return
        self._last_served = (version, model_version, score_date)
        labels = (str(version), model_version, score_date.isoformat())
        if labels != self._last:
            if self._last is not None:
                self.served_info.labels(*self._last).set(0)
            self.served_info.labels(*labels).set(1)
            self.served_version.set(version)
            self._last = labels

    def exposition(self) -> bytes:
        """The Prometheus text exposition (every worker's values in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by route template (bounded label values)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            self.metrics.request(getattr(route, "path", "unmatched"), scope["method"], status[0],
                                 time.perf_counter() - started)
