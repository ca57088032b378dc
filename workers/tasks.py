"""Thin Celery tasks: take an id, call one domain function."""

import logging
import os
import socket

import redis
from celery import shared_task
from django.conf import settings

from storage.s3 import StorageError

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
        job_train.apply_async((job_id,), countdown=OVER_LIMIT_RETRY_SECONDS)


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
