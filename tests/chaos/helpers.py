from typing import Any

from django.contrib.auth import get_user_model

from api.datasets.models import Dataset
from api.jobs.models import Job, JobEvent
from api.jobs.services import job_create
from storage import keys, s3
from tests.conftest import SENTIMENT, jsonl, wait_for


def ready_dataset(username: str = "chaos") -> Dataset:
    """A validated dataset stored in S3, made without a worker."""
    user, _ = get_user_model().objects.get_or_create(username=username)
    content = jsonl(SENTIMENT)
    import hashlib

    sha = hashlib.sha256(content).hexdigest()
    s3.put_bytes(keys.dataset(sha), content)
    return Dataset.objects.create(owner=user, name="sentiment", task="classification", format="jsonl",
                                  filename="s.jsonl", sha256=sha, size_bytes=len(content), base_model="tiny-bert",
                                  status="ready", rows=len(SENTIMENT))


def long_job(dataset: Dataset, name: str, *, epochs: int = 30, **extra: Any) -> Job:
    """tiny-bert, batch 2 over 40 rows: 20 steps an epoch."""
    return job_create(user=dataset.owner, base_model="tiny-bert", task="classification", dataset=dataset.id,
                      adapter_name=name, hyperparameters={"epochs": epochs, "batch_size": 2}, **extra)


def job_now(job_id: int) -> Job:
    return Job.objects.get(id=job_id)


def wait_status(job_id: int, statuses: set[str], timeout: float = 180) -> Job:
    return wait_for(lambda: job_now(job_id), lambda j: j.status in statuses, timeout)


def event_types(job_id: int) -> list[str]:
    return list(JobEvent.objects.filter(job_id=job_id).order_by("seq").values_list("type", flat=True))
