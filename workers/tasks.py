"""Thin Celery tasks: take an id, call one domain function."""

import logging
import os
import socket
from typing import Any

import redis
from celery import shared_task
from celery.signals import task_postrun, task_prerun
from django.conf import settings

from api.ops.logs import TRAIN_TASK, job_id_var
from storage.s3 import StorageError
from workers import capabilities  # noqa: F401 (connects the capability report and WORKER_QUEUES to the worker)

log = logging.getLogger(__name__)
OVER_LIMIT_RETRY_SECONDS = 10


@shared_task(name="workers.tasks.dataset_validate_task", autoretry_for=(StorageError,), retry_backoff=True,
             max_retries=5)
def dataset_validate_task(dataset_id: int) -> None:
    from api.datasets.services import dataset_validate

    dataset_validate(dataset_id=dataset_id)


@shared_task(name="workers.tasks.job_train")
def job_train(job_id: int) -> None:
    from api.jobs.services import Claim
    from workers.training.runner import job_train_run

    claim = job_train_run(job_id=job_id, worker=f"{socket.gethostname()}:{os.getpid()}")
    if claim is Claim.OVER_LIMIT:  # the owner's other jobs hold every slot they may use: ask again later
        queue = (job_train.request.delivery_info or {}).get("routing_key") or "train"  # its GPU class, if any
        job_train.apply_async((job_id,), countdown=OVER_LIMIT_RETRY_SECONDS, queue=queue)


@task_prerun.connect
def _job_log_context_enter(task: Any = None, args: Any = None, **_: Any) -> None:
    """Every log line from here to task_postrun (Celery's "succeeded" line included) names the job."""
    if getattr(task, "name", "") == TRAIN_TASK and args:
        job_id_var.set(int(args[0]))


@task_postrun.connect
def _job_log_context_exit(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", "") == TRAIN_TASK:
        job_id_var.set(None)


@shared_task(name="workers.tasks.jobs_reap_task")
def jobs_reap_task() -> None:
    """Periodic (beat). Single-flight: a Redis lock keeps two schedulers from reaping at once."""
    from api.jobs.services import jobs_reap

    client = redis.Redis.from_url(settings.REDIS_URL)
    lock = client.lock(f"{settings.CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix']}foundry:reaper",
                       timeout=300, blocking=False)
    if not lock.acquire():
        return
    try:
        counts = jobs_reap()
        if any(counts.values()):
            log.warning("reaper: %s", counts)
    finally:
        lock.release()


@shared_task(name="workers.tasks.adapter_merge_task")
def adapter_merge_task(merge_id: int) -> None:
    """On the default (light) queue: a merge loads the sources into one base model, no training."""
    from workers.merge import adapter_merge_run

    adapter_merge_run(merge_id=merge_id)
