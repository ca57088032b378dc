"""Reads for operators: queue depths (Redis), live workers (their reports in Redis) and the job table's
state (database). Used by the Prometheus collector, the operators' page and GET /api/v1/ops/workers."""

import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone

from api.jobs.models import ACTIVE_STATES, Job, JobStatus
from api.ops import broker
from api.ops.routing import train_queues

PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: priority step N of queue Q is the list "Q\x06\x16N"
WORKER_KEY = "foundry:worker:"


def queue_names() -> list[str]:
    return [settings.CELERY_TASK_DEFAULT_QUEUE, *train_queues()]


def queue_depths(*, names: list[str] | None = None) -> dict[str, int]:
    """Messages waiting in each queue: the sum over its priority-step lists (step 0 is the bare name)."""
    names = names or queue_names()
    steps = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("priority_steps") or [0]
    pipe = broker.client().pipeline(transaction=False)
    for name in names:
        for step in steps:
            pipe.llen(broker.key(name if not step else f"{name}{PRIORITY_SEP}{step}"))
    lengths = pipe.execute()
    return {name: sum(lengths[i * len(steps):(i + 1) * len(steps)]) for i, name in enumerate(names)}


def _escape_glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def workers_list() -> list[dict[str, Any]]:
    """Workers whose report has not expired, by name, each with `running_jobs` (ids of the jobs it holds)."""
    client = broker.client()
    keys = sorted(client.scan_iter(match=_escape_glob(broker.key(WORKER_KEY)) + "*", count=500))
    reports = [json.loads(raw) for raw in client.mget(keys) if raw] if keys else []
    holders: dict[str, list[int]] = {}
    for job_id, worker in Job.objects.filter(status__in=ACTIVE_STATES).values_list("id", "worker"):
        holders.setdefault(worker, []).append(job_id)
    for report in reports:
        report["running_jobs"] = sorted(holders.get(f"{report.get('host')}:{report.get('pid')}", []))
    return sorted(reports, key=lambda r: r.get("name", ""))


def _seconds_since(moment: datetime | None, now: datetime) -> float:
    return max((now - moment).total_seconds(), 0.0) if moment else 0.0


def jobs_summary() -> dict[str, Any]:
    """Counts by status, failures by error code, the wait of queued jobs (count, sum, oldest) and the
    running jobs, from the job table."""
    now = timezone.now()
    by_status = dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by())
    failures = dict(Job.objects.filter(status=JobStatus.FAILED).values_list("error_code")
                    .annotate(n=Count("id")).order_by())
    queued = Job.objects.filter(status=JobStatus.QUEUED).exclude(queued_at=None)
    waits = queued.aggregate(count=Count("id"), oldest=Min("queued_at"))
    # sum(now - queued_at) = count * now - sum(queued_at), done in Python to stay database-neutral
    total_wait = sum(_seconds_since(t, now) for t in queued.values_list("queued_at", flat=True)[:10000])
    running = list(Job.objects.filter(status__in=ACTIVE_STATES).select_related("owner").order_by("started_at")
                   .values("id", "status", "owner__username", "worker", "step", "total_steps", "started_at"))
    return {
        "by_status": {status: by_status.get(status, 0) for status in JobStatus.values},
        "failures_by_code": {code or "unknown": n for code, n in failures.items()},
        "queued_wait_seconds": {"count": waits["count"], "sum": round(total_wait, 3),
                                "oldest": round(_seconds_since(waits["oldest"], now), 3)},
        "running": running,
    }

