import statistics

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from api.jobs.models import ACTIVE_STATES, Job, JobCheckpoint, JobEvent, JobMetric, JobStatus


def job_list(*, user: AbstractBaseUser, status: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(owner=user).select_related("result_version__adapter")
    return jobs.filter(status=status) if status else jobs


def job_get(*, user: AbstractBaseUser, job_id: int) -> Job:
    return get_object_or_404(Job.objects.select_related("result_version__adapter"), id=job_id, owner=user)


def _ahead(job: Job) -> QuerySet[Job]:
    """Queued jobs a worker takes before this one: higher priority first, then older first."""
    return Job.objects.filter(status=JobStatus.QUEUED).filter(
        Q(priority__gt=job.priority) | Q(priority=job.priority, id__lt=job.id))


def job_queue_position(*, job: Job) -> int | None:
    """1 for the next job a worker will take; None once it is no longer queued."""
    if job.status != JobStatus.QUEUED:
        return None
    return _ahead(job).count() + 1


def job_queue_eta_seconds(*, job: Job) -> int | None:
    """A rough wait before a worker takes this job: the work ahead of it (running jobs' remaining
    time, and the median duration of recent jobs for each queued one) shared by the workers now busy."""
    if job.status != JobStatus.QUEUED:
        return None
    running = Job.objects.filter(status__in=ACTIVE_STATES)
    workers = max(1, running.values("worker").distinct().count())
    remaining = sum(running.exclude(eta_seconds=None).values_list("eta_seconds", flat=True))
    recent = [
        (finished - started).total_seconds()
        for started, finished in Job.objects.filter(status=JobStatus.SUCCEEDED).exclude(started_at=None)
        .order_by("-finished_at").values_list("started_at", "finished_at")[:20]
    ]
    typical = statistics.median(recent) if recent else 0.0
    return round((remaining + _ahead(job).count() * typical) / workers)


def job_checkpoints(*, job: Job) -> QuerySet[JobCheckpoint]:
    return JobCheckpoint.objects.filter(job=job).order_by("-step")


def job_events(*, job: Job, after: int = 0, limit: int = 500) -> QuerySet[JobEvent]:
    return JobEvent.objects.filter(job=job, seq__gt=after).order_by("seq")[:limit]


def job_metrics(*, job: Job, after_step: int = -1) -> QuerySet[JobMetric]:
    return JobMetric.objects.filter(job=job, step__gt=after_step).order_by("step", "id")
