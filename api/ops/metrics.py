"""Prometheus metrics of the web process at GET /metrics: requests by route, method and status, and
(collected at scrape time) the queue, the job table and the live workers.

Access: with METRICS_TOKEN set, `Authorization: Bearer <METRICS_TOKEN>` (or a staff session) and
nothing else; without it, loopback clients and staff sessions only. With several web processes
(WEB_WORKERS > 1, `python -m api.web` sets PROMETHEUS_MULTIPROC_DIR) the request counters are kept in files
that every process writes and any process's /metrics adds up (prometheus_client's multiprocess mode)."""

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from api.ops import selectors

log = logging.getLogger(__name__)

REQUESTS = Counter("foundry_http_requests", "HTTP requests answered, by route, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("foundry_http_request_duration_seconds", "Time to answer an HTTP request, by route and method",
                    ["route", "method"])
UNMATCHED = "<unmatched>"  # 404s for paths no route matches: one label value, not one per path


def _route(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return f"/{match.route}" if match is not None and match.route else UNMATCHED


def _observe(request: HttpRequest, response: HttpResponse, started: float) -> None:
    route, method = _route(request), request.method or ""
    REQUESTS.labels(route, method, str(response.status_code)).inc()
    LATENCY.labels(route, method).observe(time.perf_counter() - started)


@sync_and_async_middleware
def metrics_middleware(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    if iscoroutinefunction(get_response):
        async def middleware_async(request: HttpRequest) -> HttpResponse:
            started = time.perf_counter()
            response = await get_response(request)
            _observe(request, response, started)
            return response

        return middleware_async

    def middleware(request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = get_response(request)
        _observe(request, response, started)
        return response

    return middleware


class FoundryCollector(Collector):
    """Queue depths, jobs by status, failures by code, queued jobs' wait and live workers, read when
    Prometheus scrapes. A source that cannot be read sets foundry_scrape_error{source} to 1."""

    def describe(self) -> list[Metric]:
        return []  # registering must not query Redis and the database (it would, to learn the names)

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily("foundry_scrape_error", "1 when a source could not be read at this scrape",
                                   labels=["source"])
        for source, read in (("redis", self._queues), ("database", self._jobs), ("workers", self._workers)):
            try:
                yield from read()
                errors.add_metric([source], 0)
            except Exception:
                log.warning("metrics: could not read %s", source, exc_info=True)
                errors.add_metric([source], 1)
        yield errors

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("foundry_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
        for queue, n in selectors.queue_depths().items():
            depth.add_metric([queue], n)
        yield depth

    def _jobs(self) -> Iterator[Metric]:
        summary = selectors.jobs_summary()
        jobs = GaugeMetricFamily("foundry_jobs", "Jobs by status", labels=["status"])
        for status, n in summary["by_status"].items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("foundry_jobs_running", "Jobs a worker holds (running or uploading)",
                                value=len(summary["running"]))
        failures = CounterMetricFamily("foundry_job_failures", "Failed jobs by error code", labels=["code"])
        for code, n in summary["failures_by_code"].items():
            failures.add_metric([code], n)
        yield failures
        wait = summary["queued_wait_seconds"]
        yield SummaryMetricFamily("foundry_queued_job_wait_seconds", "How long the jobs now queued have waited",
                                  count_value=wait["count"], sum_value=wait["sum"])
        yield GaugeMetricFamily("foundry_queued_job_oldest_wait_seconds", "Wait of the longest-queued job",
                                value=wait["oldest"])

    def _workers(self) -> Iterator[Metric]:
        per_queue: dict[str, int] = dict.fromkeys(selectors.queue_names(), 0)
        for report in selectors.workers_list():
            for queue in report.get("queues", []):
                per_queue[queue] = per_queue.get(queue, 0) + 1
        workers = GaugeMetricFamily("foundry_workers", "Live workers consuming a queue", labels=["queue"])
        for queue, n in sorted(per_queue.items()):
            workers.add_metric([queue], n)
        yield workers


FOUNDRY = FoundryCollector()
REGISTRY.register(FOUNDRY)


def registry() -> CollectorRegistry:
    """This process's registry, or, with several web processes, one that reads all their counters' files."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    shared = CollectorRegistry()
    multiprocess.MultiProcessCollector(shared)
    shared.register(FOUNDRY)
    return shared


def _loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics_allowed(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    if settings.METRICS_TOKEN:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), settings.METRICS_TOKEN.encode())
    return _loopback(request)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    if not metrics_allowed(request):
        return HttpResponse("metrics need METRICS_TOKEN as a bearer token (or a loopback client when unset)\n",
                            status=403, content_type="text/plain")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))  # text, or OpenMetrics if asked
    return HttpResponse(encoder(registry()), content_type=content_type)
