"""Prometheus metrics: what happens (counters, histograms) and what is (instances, read at scrape).

Under gunicorn every worker counts for itself; ``postgraas-server serve`` points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before any worker imports prometheus_client, and a
scrape sums the workers' files. Without that variable (tests, the reaper command) the counts of
this process are served as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from flask import Flask
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from .errors import PostgraasError
from .models import ALL_STATUSES, DBInstance, db

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "postgraas_http_requests",
    "HTTP requests answered, by method, route (the URL rule, not the path) and status.",
    ["method", "route", "status"],
)
CREATE_DURATION = Histogram(
    "postgraas_create_duration_seconds",
    "Time to create an instance in its backend until a login works, for creates that succeeded; "
    'source "pool" when a pooled instance was taken over, "new" otherwise.',
    ["backend", "source"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120),
)
CREATE_FAILURES = Counter(
    "postgraas_create_failures",
    "Creates that did not end ready, by backend and reason.",
    ["backend", "reason"],
)
REAPER_ACTIONS = Counter(
    "postgraas_reaper_actions",
    "What the reaper did, by action and backend.",
    ["action", "backend"],
)

# The reason label of a failed create: one short word per error class, so the label stays bounded.
_REASONS = {
    "InvalidRequest": "invalid",
    "Unprocessable": "invalid",
    "Conflict": "conflict",
    "QuotaExceeded": "quota",
    "CapacityExhausted": "capacity",
    "BackendUnavailable": "backend_unavailable",
    "BackendTimeout": "timeout",
    "BackendError": "backend_error",
}


def failure_reason(error: BaseException) -> str:
    if isinstance(error, PostgraasError):
        for cls in type(error).__mro__:
            if cls.__name__ in _REASONS:
                return _REASONS[cls.__name__]
        return "other"
    return "internal"


# Methods the API answers; anything else (gunicorn accepts any upper-case token) counts as "other",
# so a client cannot add series to /metrics.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


_CONVERTER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def route_label(rule: str | None) -> str:
    """``/postgraas_instances/<int(max=...):instance_id>`` -> ``/postgraas_instances/<instance_id>``;
    a path that matched no route is "unmatched", so scanners cannot grow the label set."""
    return _CONVERTER.sub(r"<\1>", rule) if rule else "unmatched"


class InstancesCollector(Collector):
    """Instances by backend and status, counted in the meta db at scrape time: right whichever
    worker (or replica) made them."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "postgraas_instances", "Instances in the meta db, by backend and status.", labels=["backend", "status"]
        )
        # Every configured backend and status, zero when none: an absent series reads as "unknown".
        counts = {
            (backend, status): 0
            for backend in self.app.extensions["postgraas"].backends.backends
            for status in ALL_STATUSES
        }
        with self.app.app_context():
            try:
                query = select(DBInstance.backend, DBInstance.status, func.count()).group_by(
                    DBInstance.backend, DBInstance.status
                )
                counts.update({(backend, status): count for backend, status, count in db.session.execute(query)})
            except SQLAlchemyError:
                # /ready says the meta db is down; the other metrics are still worth serving.
                return
            finally:
                db.session.remove()
        for (backend, status), count in counts.items():
            gauge.add_metric([backend, status], count)
        yield gauge


class _ThisProcess(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition(app: Flask) -> tuple[bytes, str]:
    """The text exposition format of every metric, summed over the workers when there are several."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_DIR_ENV):
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(InstancesCollector(app))
    return generate_latest(registry), CONTENT_TYPE_LATEST
