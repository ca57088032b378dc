import dataclasses
import enum
import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from api.accounts.quotas import active_jobs_quota_check, user_lock
from api.datasets.models import Dataset, DatasetStatus
from api.jobs.models import (
    ACTIVE_STATES,
    FINAL_STATES,
    ErrorCode,
    Job,
    JobCheckpoint,
    JobEvent,
    JobMetric,
    JobStatus,
)
from workers.base_models import base_model_get
from workers.methods.registry import (
    ConfigError,
    config_resolve,
    method_config_resolve,
    method_get,
    method_task_check,
)
from workers.training.estimate import job_estimate
from workers.training.hyperparameters import Hyperparameters

ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class JobInputError(ValueError):
    """Bad input for a new job; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class JobStateError(Exception):
    """The job's state does not allow the operation (HTTP 409)."""


def job_event_add(*, job_id: int, type: str, message: str, data: dict[str, Any] | None = None,
                  level: str = "info") -> JobEvent:
    """Append an event; seq is 1, 2, 3... per job, allocated under the job row's lock."""
    with transaction.atomic():
        Job.objects.filter(id=job_id).update(event_seq=F("event_seq") + 1)
        seq = Job.objects.filter(id=job_id).values_list("event_seq", flat=True).get()
        return JobEvent.objects.create(job_id=job_id, seq=seq, type=type, message=message, data=data or {},
                                       level=level)


def job_send(*, job_id: int, priority: int) -> None:
    """Put a message for the job on its train queue: with GPU_QUEUES set, the smallest GPU class its
    estimated peak memory fits (api/ops/routing.py), else `train`. Safe to repeat: only one claim can win."""
    from api.ops.routing import train_queue_for
    from workers.tasks import job_train

    peak = None
    if settings.GPU_QUEUES:
        estimate = Job.objects.filter(id=job_id).values_list("estimate", flat=True).first()
        peak = (estimate or {}).get("peak_memory_bytes")
    job_train.apply_async((job_id,), priority=9 - priority, queue=train_queue_for(peak))  # Redis takes step 0 first


def _enqueue(job: Job) -> None:
    transaction.on_commit(lambda: job_send(job_id=job.id, priority=job.priority))


def _dataset_for(user: AbstractBaseUser, dataset_id: Any, task: str, param: str) -> Dataset:
    dataset = Dataset.objects.filter(id=dataset_id, owner=user).first() if str(dataset_id).isdigit() else None
    if dataset is None:
        raise JobInputError(f"{param}: no dataset with id {dataset_id!r}", param)
    if dataset.task != task:
        raise JobInputError(f"{param}: dataset {dataset.id} was uploaded for task {dataset.task!r}, not {task!r}",
                            param)
    if dataset.status == DatasetStatus.INVALID:
        raise JobInputError(f"{param}: dataset {dataset.id} is invalid ({dataset.report.get('error_count')} "
                            "problems, see its report)", param)
    return dataset


@dataclasses.dataclass(frozen=True)
class JobInput:
    """A new job's input, checked and resolved (defaults filled in), before anything is saved."""

    base_model: str
    task: str
    dataset: Dataset
    validation_dataset: Dataset | None
    method: str
    method_config: dict[str, Any]
    hyperparameters: dict[str, Any]


def job_input_resolve(
    *, user: AbstractBaseUser, base_model: str, task: str, dataset: Any, validation_dataset: Any = None,
    method: str = "lora", method_config: Any = None, hyperparameters: Any = None,
) -> JobInput:
    try:
        entry = base_model_get(base_model)
    except LookupError as exc:
        raise JobInputError(str(exc), "base_model") from None
    if task not in entry.tasks:
        raise JobInputError(f"base model {base_model!r} supports {list(entry.tasks)}, not {task!r}", "task")
    train_set = _dataset_for(user, dataset, task, "dataset")
    eval_set = _dataset_for(user, validation_dataset, task, "validation_dataset") if validation_dataset else None
    try:
        method_task_check(method_get(method), task)
        resolved_method = method_config_resolve(method, method_config)
        resolved_hp = config_resolve(Hyperparameters, hyperparameters, param="hyperparameters")
    except ConfigError as exc:
        raise JobInputError(str(exc), exc.param) from None
    return JobInput(base_model=base_model, task=task, dataset=train_set, validation_dataset=eval_set,
                    method=method, method_config=resolved_method, hyperparameters=resolved_hp)


def job_input_estimate(job_input: JobInput) -> dict[str, Any]:
    """Tokens, steps and peak memory from the training set's report and the model's config; seconds when a
    worker of this kind has calibrated (else null). Empty while the training set is still validating."""
    stats = job_input.dataset.report.get("stats") if job_input.dataset.status == DatasetStatus.READY else None
    if not stats or not stats.get("rows"):
        return {}
    return job_estimate(stats=stats, base_model=job_input.base_model, task=job_input.task,
                        method=job_input.method, hyperparameters=job_input.hyperparameters, measure=False)


def worker_memory_largest() -> int | None:
    """The most memory one training process may use on any worker: the largest GPU class when GPU_QUEUES is
    set; else the largest live train worker's device (its biggest CUDA device, or its RAM on CPU). None when
    nothing is known (no classes declared and no train worker reporting): nothing can be refused then."""
    from api.ops.routing import memory_fits_any_worker, train_queues
    from api.ops.selectors import workers_list

    _, largest = memory_fits_any_worker(None)
    if largest:
        return largest
    sizes = []
    for report in workers_list():
        if set(report.get("queues", [])) & set(train_queues()):
            devices = report.get("devices", {})
            cuda = [d["memory_bytes"] for d in devices.get("cuda", [])]
            sizes.append(max(cuda) if cuda else devices.get("cpu", {}).get("memory_bytes", 0))
    return max(sizes) if sizes and all(sizes) else None


def job_memory_fits(estimate: dict[str, Any]) -> tuple[bool, int | None]:
    """(whether some worker can hold the estimated peak memory, the largest worker's bytes or None)."""
    need, largest = estimate.get("peak_memory_bytes"), worker_memory_largest()
    return not (need and largest and need > largest), largest


def job_memory_check(estimate: dict[str, Any]) -> None:
    """Refuse a job whose estimated peak memory no worker has, quoting the estimate."""
    fits, largest = job_memory_fits(estimate)
    if not fits and largest:
        need = estimate["peak_memory_bytes"]
        raise JobInputError(
            f"this job needs an estimated {need / 2**30:.1f} GiB at peak ({estimate.get('tokens')} tokens, "
            f"{estimate.get('steps')} steps); the largest worker has {largest / 2**30:.1f} GiB: lower "
            "hyperparameters.batch_size or hyperparameters.max_seq_length", "hyperparameters")


def job_create(
    *, user: AbstractBaseUser, base_model: str, task: str, dataset: Any, validation_dataset: Any = None,
    method: str = "lora", method_config: Any = None, hyperparameters: Any = None, adapter_name: str,
    priority: int = 5,
) -> Job:
    if not isinstance(adapter_name, str) or not ADAPTER_NAME.match(adapter_name):
        raise JobInputError("adapter_name: 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter "
                            "or digit", "adapter_name")
    job_input = job_input_resolve(user=user, base_model=base_model, task=task, dataset=dataset,
                                  validation_dataset=validation_dataset, method=method,
                                  method_config=method_config, hyperparameters=hyperparameters)
    estimate = job_input_estimate(job_input)
    job_memory_check(estimate)
    waiting = any(d and d.status == DatasetStatus.VALIDATING for d in (job_input.dataset,
                                                                         job_input.validation_dataset))
    with transaction.atomic():
        user_lock(user=user)
        active_jobs_quota_check(user=user)
        job = Job.objects.create(
            owner=user, base_model=base_model, task=task, dataset=job_input.dataset,
            validation_dataset=job_input.validation_dataset, method=method, method_config=job_input.method_config,
            hyperparameters=job_input.hyperparameters, adapter_name=adapter_name, estimate=estimate,
            status=JobStatus.VALIDATING_FILES if waiting else JobStatus.QUEUED, priority=priority,
            queued_at=None if waiting else timezone.now(),
        )
        job_event_add(job_id=job.id, type="created", message=f"job created: {method} on {base_model}")
        if waiting:
            job_event_add(job_id=job.id, type="validating_files", message="waiting for dataset validation")
            # the validation may have finished since the dataset was read: look again once this job is visible
            transaction.on_commit(lambda: jobs_release_for_dataset(dataset=job_input.dataset))
        else:
            job_event_add(job_id=job.id, type="queued", message="queued for a worker")
            _enqueue(job)
    return job


def jobs_release_for_dataset(*, dataset: Dataset) -> None:
    """After a dataset validated: queue the jobs that waited on it, or fail them if it is invalid."""
    waiting = Job.objects.filter(status=JobStatus.VALIDATING_FILES).filter(
        Q(dataset_id=dataset.id) | Q(validation_dataset_id=dataset.id)
    )
    for job in waiting:
        datasets = [d for d in (job.dataset, job.validation_dataset) if d is not None]
        bad = [d for d in datasets if d.status == DatasetStatus.INVALID]
        if bad:
            job_fail(job_id=job.id, code=ErrorCode.INVALID_FILE, param="dataset" if bad[0] == job.dataset
                     else "validation_dataset",
                     message=f"dataset {bad[0].id} is invalid ({bad[0].report.get('error_count')} problems)",
                     from_states=(JobStatus.VALIDATING_FILES,))
        elif all(d.status == DatasetStatus.READY for d in datasets):
            estimate = job_input_estimate(JobInput(
                base_model=job.base_model, task=job.task, dataset=job.dataset,
                validation_dataset=job.validation_dataset, method=job.method, method_config=job.method_config,
                hyperparameters=job.hyperparameters))
            try:
                job_memory_check(estimate)
            except JobInputError as exc:
                Job.objects.filter(id=job.id).update(estimate=estimate)
                job_fail(job_id=job.id, code=ErrorCode.INVALID_CONFIG, param=exc.param, message=str(exc),
                         from_states=(JobStatus.VALIDATING_FILES,))
                continue
            with transaction.atomic():
                moved = Job.objects.filter(id=job.id, status=JobStatus.VALIDATING_FILES).update(
                    status=JobStatus.QUEUED, queued_at=timezone.now(), estimate=estimate)
                if moved:
                    job_event_add(job_id=job.id, type="queued", message="files validated; queued for a worker")
                    _enqueue(job)


def job_cancel(*, job: Job) -> Job:
    """Cancel now if no worker has it; otherwise ask the worker, which stops within one step."""
    with transaction.atomic():
        if Job.objects.filter(id=job.id, status__in=[JobStatus.VALIDATING_FILES, JobStatus.QUEUED]).update(
            status=JobStatus.CANCELLED, cancel_requested=True, finished_at=timezone.now()
        ):
            job_event_add(job_id=job.id, type="cancelled", message="cancelled before it started")
        elif Job.objects.filter(id=job.id, status__in=[JobStatus.RUNNING, JobStatus.UPLOADING],
                                cancel_requested=False).update(cancel_requested=True):
            job_event_add(job_id=job.id, type="cancel_requested", message="cancel requested; stopping at next step")
        else:
            job.refresh_from_db()
            if job.status in FINAL_STATES and job.status != JobStatus.CANCELLED:
                raise JobStateError(f"job {job.id} already {job.status}")
    job.refresh_from_db()
    return job


class Claim(enum.Enum):
    CLAIMED = "claimed"
    NOT_QUEUED = "not_queued"  # taken by someone else, cancelled, finished or unknown
    OVER_LIMIT = "over_limit"  # the owner already runs MAX_RUNNING_JOBS_PER_USER jobs


def job_claim(*, job_id: int, worker: str, token: str) -> Claim:
    """queued -> running with a lease, only if still queued and the owner is under the limit.

    Exactly one claimer wins; the owner's row is locked so two workers cannot both take
    the owner's last free slot."""
    with transaction.atomic():
        owner_id = Job.objects.filter(id=job_id, status=JobStatus.QUEUED).values_list("owner_id", flat=True).first()
        if owner_id is None:
            return Claim.NOT_QUEUED
        get_user_model().objects.select_for_update().filter(pk=owner_id).first()
        running = Job.objects.filter(owner_id=owner_id, status__in=ACTIVE_STATES).count()
        if running >= settings.MAX_RUNNING_JOBS_PER_USER:
            return Claim.OVER_LIMIT
        now = timezone.now()
        claimed = Job.objects.filter(id=job_id, status=JobStatus.QUEUED).update(
            status=JobStatus.RUNNING, started_at=now, worker=worker, attempts=F("attempts") + 1,
            lease_owner=token, lease_expires_at=now + timedelta(seconds=settings.JOB_LEASE_SECONDS),
        )
        if not claimed:
            return Claim.NOT_QUEUED
        attempt = Job.objects.values_list("attempts", flat=True).get(id=job_id)
        job_event_add(job_id=job_id, type="started", message=f"running on {worker} (attempt {attempt})",
                      data={"attempt": attempt, "worker": worker})
    return Claim.CLAIMED


def job_heartbeat(*, job_id: int, token: str) -> bool:
    """Renew the lease. False means it is no longer ours: stop, and touch nothing."""
    return bool(Job.objects.filter(id=job_id, lease_owner=token, status__in=ACTIVE_STATES).update(
        lease_expires_at=timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)))


def job_requeue(*, job_id: int, reason: str, token: str | None = None, count_attempt: bool = True) -> bool:
    """running/uploading -> queued (a lost worker, or a worker shutting down after a checkpoint)."""
    with transaction.atomic():
        jobs = Job.objects.filter(id=job_id, status__in=ACTIVE_STATES)
        if token is not None:
            jobs = jobs.filter(lease_owner=token)
        fields: dict[str, Any] = {"status": JobStatus.QUEUED, "lease_owner": "", "lease_expires_at": None,
                                  "queued_at": timezone.now(), "eta_seconds": None}
        if not count_attempt:
            fields["attempts"] = F("attempts") - 1
        if not jobs.update(**fields):
            return False
        job_event_add(job_id=job_id, type="requeued", level="warning", message=reason)
        priority = Job.objects.values_list("priority", flat=True).get(id=job_id)
        transaction.on_commit(lambda: job_send(job_id=job_id, priority=priority))
    return True


def jobs_reap() -> dict[str, int]:
    """Find expired leases: re-queue the job, or fail it after JOB_MAX_ATTEMPTS. Re-send the
    message of jobs queued for long (a broker that lost it); the claim makes that harmless."""
    now = timezone.now()
    counts = {"requeued": 0, "failed": 0, "resent": 0}
    for job in Job.objects.filter(status__in=ACTIVE_STATES, lease_expires_at__lt=now):
        if job.attempts >= settings.JOB_MAX_ATTEMPTS:
            if job_fail(job_id=job.id, code=ErrorCode.WORKER_LOST, lease_owner=job.lease_owner,
                        message=f"the worker running this job was lost {job.attempts} times "
                                f"(last on {job.worker}); giving up after {settings.JOB_MAX_ATTEMPTS} attempts"):
                counts["failed"] += 1
        elif job_requeue(job_id=job.id, token=job.lease_owner,
                         reason=f"worker {job.worker} stopped renewing its lease; re-queued to resume "
                                f"from the last checkpoint (attempt {job.attempts} of {settings.JOB_MAX_ATTEMPTS})"):
            counts["requeued"] += 1
    stale = now - timedelta(seconds=settings.JOB_QUEUE_RESEND_SECONDS)
    for job in Job.objects.filter(status=JobStatus.QUEUED, queued_at__lt=stale):
        if Job.objects.filter(id=job.id, status=JobStatus.QUEUED, queued_at=job.queued_at).update(queued_at=now):
            job_send(job_id=job.id, priority=job.priority)
            counts["resent"] += 1
    return counts


def job_cancel_requested(*, job_id: int) -> bool:
    return Job.objects.filter(id=job_id, cancel_requested=True).exists()


def job_checkpoint_record(*, job_id: int, step: int, epoch: float, prefix: str, files: list[dict[str, Any]],
                          metrics: dict[str, float]) -> list[str]:
    """Record a complete checkpoint; return the S3 prefixes of those beyond CHECKPOINT_KEEP to delete."""
    JobCheckpoint.objects.update_or_create(job_id=job_id, step=step, defaults={
        "epoch": epoch, "prefix": prefix, "files": files, "metrics": metrics})
    job_event_add(job_id=job_id, type="checkpoint", message=f"checkpoint at step {step}", data={"step": step})
    old = list(JobCheckpoint.objects.filter(job_id=job_id).order_by("-step")[settings.CHECKPOINT_KEEP:])
    JobCheckpoint.objects.filter(id__in=[c.id for c in old]).delete()
    return [c.prefix for c in old]


def job_checkpoint_latest(*, job_id: int) -> JobCheckpoint | None:
    return JobCheckpoint.objects.filter(job_id=job_id).order_by("-step").first()


def job_metrics_truncate(*, job_id: int, after_step: int) -> None:
    """On resume, drop the rows the lost attempt wrote after the checkpoint, so the curve continues."""
    JobMetric.objects.filter(job_id=job_id, step__gt=after_step).delete()


def job_progress_update(*, job_id: int, step: int, total_steps: int, epoch: float, eta_seconds: int | None) -> None:
    Job.objects.filter(id=job_id).update(step=step, total_steps=total_steps, epoch=epoch, eta_seconds=eta_seconds)


def job_metric_add(*, job_id: int, step: int, epoch: float, **values: float | None) -> None:
    JobMetric.objects.create(job_id=job_id, step=step, epoch=epoch, **values)


def job_transition(*, job_id: int, from_state: str, to_state: str, message: str,
                   data: dict[str, Any] | None = None, lease_owner: str | None = None) -> bool:
    """A conditional state change; with lease_owner, only while that lease holds the job."""
    with transaction.atomic():
        fields: dict[str, Any] = {"status": to_state}
        if to_state in FINAL_STATES:
            fields.update(finished_at=timezone.now(), eta_seconds=0 if to_state == JobStatus.SUCCEEDED else None,
                          lease_owner="", lease_expires_at=None)
        jobs = Job.objects.filter(id=job_id, status=from_state)
        if lease_owner is not None:
            jobs = jobs.filter(lease_owner=lease_owner)
        moved = jobs.update(**fields)
        if moved:
            job_event_add(job_id=job_id, type=to_state, message=message, data=data)
    return bool(moved)


def job_fail(*, job_id: int, code: str, message: str, param: str = "",
             from_states: tuple[str, ...] = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.UPLOADING),
             lease_owner: str | None = None) -> bool:
    with transaction.atomic():
        jobs = Job.objects.filter(id=job_id, status__in=from_states)
        if lease_owner is not None:
            jobs = jobs.filter(lease_owner=lease_owner)
        moved = jobs.update(
            status=JobStatus.FAILED, error_code=code, error_message=message[:2000], error_param=param,
            finished_at=timezone.now(), eta_seconds=None, lease_owner="", lease_expires_at=None,
        )
        if moved:
            job_event_add(job_id=job_id, type="failed", level="error", message=message[:2000],
                          data={"code": code, "param": param})
    return bool(moved)
