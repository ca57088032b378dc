from pathlib import Path

from rest_framework.test import APIClient

from api.jobs.models import Job
from api.registry.models import AdapterVersion
from api.registry.services import adapter_version_publish
from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl
from workers.training.runner import job_train_run

JOB = {"base_model": "tiny-bert", "task": "classification", "adapter_name": "shared-name",
       "hyperparameters": {"epochs": 1, "batch_size": 20}}


def test_a_job_publishes_at_most_one_version(worker: object, alice: APIClient, tmp_path: Path) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    first = alice.post("/api/v1/jobs", {**JOB, "dataset": train["id"]}, format="json").data
    assert job_final(alice, first["id"])["result"]["version"] == 1

    job_train_run(job_id=first["id"], worker="duplicate-delivery")  # a second delivery of the same task
    job = Job.objects.get(id=first["id"])
    (tmp_path / "adapter_config.json").write_text("{}")
    again = adapter_version_publish(job=job, directory=tmp_path, metadata={"retry": True})
    assert again.version == 1 and again.metadata.get("retry") is None
    assert AdapterVersion.objects.filter(job=job).count() == 1

    second = alice.post("/api/v1/jobs", {**JOB, "dataset": train["id"]}, format="json").data
    assert job_final(alice, second["id"])["result"]["version"] == 2
    adapter = alice.get("/api/v1/adapters/shared-name").data
    assert adapter["version_count"] == 2 and adapter["latest_version"] == 2
    assert [v["version"] for v in adapter["versions"]] == [2, 1]
    assert [v["job"] for v in adapter["versions"]] == [second["id"], first["id"]]
