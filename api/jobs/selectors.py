import statistics
import threading
import time
from collections.abc import Sequence

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from api.accounts.scoping import visible_to
from api.jobs.models import ACTIVE_STATES, Job, JobCheckpoint, JobEvent, JobMetric, JobStatus


def job_list(*, user: AbstractBaseUser, status: str | None = None) -> QuerySet[Job]:
    jobs = Job.objects.filter(visible_to(user)).select_related("result_version__adapter")
    return jobs.filter(status=status) if status else jobs


def job_get(*, user: AbstractBaseUser, job_id: int) -> Job:
    return get_object_or_404(Job.objects.filter(visible_to(user)).select_related("result_version__adapter"),
                             id=job_id)


def _ahead(job: Job) -> QuerySet[Job]:
    """Queued jobs a worker takes before this one: higher priority first, then older first."""
    return Job.objects.filter(status=JobStatus.QUEUED).filter(
        Q(priority__gt=job.priority) | Q(priority=job.priority, id__lt=job.id))


def job_queue_position(*, job: Job) -> int | None:
    """1 for the next job a worker will take; None once it is no longer queued."""
    if job.status != JobStatus.QUEUED:
        return None
    return _ahead(job).count() + 1


def job_queue_positions(*, jobs: Sequence[Job]) -> dict[int, int]:
    """Positions of the queued jobs among these, in one query: a job list must not count once per row."""
    queued = [job for job in jobs if job.status == JobStatus.QUEUED]
    if len(queued) <= 1:  # one job's page: a count beats reading every queued id
        return {job.id: _ahead(job).count() + 1 for job in queued}
    wanted = {job.id for job in queued}
    order = Job.objects.filter(status=JobStatus.QUEUED).order_by("-priority", "id").values_list("id", flat=True)
    return {job_id: i + 1 for i, job_id in enumerate(order) if job_id in wanted}


def queue_wait_basis() -> tuple[int, float, float]:
    """The part of a queued job's wait that is the same for every job: (busy workers, their remaining
    seconds, the median duration of recent jobs)."""
    running = list(Job.objects.filter(status__in=ACTIVE_STATES).values_list("worker", "eta_seconds"))
    workers = max(1, len({worker for worker, _ in running}))
    remaining = sum(eta for _, eta in running if eta is not None)
    recent = [
        (finished - started).total_seconds()
        for started, finished in Job.objects.filter(status=JobStatus.SUCCEEDED).exclude(started_at=None)
        .order_by("-finished_at").values_list("started_at", "finished_at")[:20]
    ]
    return workers, remaining, statistics.median(recent) if recent else 0.0


BASIS_MAX_AGE = 2.0  # seconds a web process reuses the basis: every poll of a queued job would read it again
_basis_lock = threading.Lock()
_basis: tuple[float, tuple[int, float, float]] | None = None


def queue_wait_basis_recent() -> tuple[int, float, float]:
    """queue_wait_basis, read at most once per BASIS_MAX_AGE in this process (it is the same for every job, and
    an ETA moves by the second anyway)."""
    global _basis
    with _basis_lock:
        if _basis is None or time.monotonic() - _basis[0] > BASIS_MAX_AGE:
            _basis = (time.monotonic(), queue_wait_basis())
        return _basis[1]


def job_queue_eta_seconds(*, job: Job, position: int | None = None,
                          basis: tuple[int, float, float] | None = None) -> int | None:
    """A rough wait before a worker takes this job: the work ahead of it (running jobs' remaining
    time, and the median duration of recent jobs for each queued one) shared by the workers now busy.
    position and basis, when the caller has them, save their queries."""
    if job.status != JobStatus.QUEUED:
        return None
    position = position or job_queue_position(job=job) or 1
    workers, remaining, typical = basis or queue_wait_basis()
    return round((remaining + (position - 1) * typical) / workers)


def job_checkpoints(*, job: Job) -> QuerySet[JobCheckpoint]:
    return JobCheckpoint.objects.filter(job=job).order_by("-step")


def job_events(*, job: Job, after: int = 0, limit: int = 500) -> QuerySet[JobEvent]:
    return JobEvent.objects.filter(job=job, seq__gt=after).order_by("seq")[:limit]


def job_metrics(*, job: Job, after_step: int = -1) -> QuerySet[JobMetric]:
    return JobMetric.objects.filter(job=job, step__gt=after_step).order_by("step", "id")
