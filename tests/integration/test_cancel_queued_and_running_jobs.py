from rest_framework.test import APIClient

from api.jobs.models import Job
from api.registry.models import AdapterVersion
from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl, wait_for
from workers.training.runner import job_train_run

LONG_JOB = {"base_model": "tiny-bert", "task": "classification", "adapter_name": "long",
            "hyperparameters": {"epochs": 100, "batch_size": 2}}


def test_cancel_a_queued_job_and_the_worker_skips_it(alice: APIClient) -> None:
    from api.datasets.models import Dataset

    dataset = Dataset.objects.create(owner=alice.user, name="d", task="classification", format="jsonl",
                                     filename="d.jsonl", sha256="0" * 64, size_bytes=1, base_model="tiny-bert",
                                     status="ready", rows=2)
    # db (not transactional_db): on_commit never fires, so no worker takes the job while we look at it.
    created = alice.post("/api/v1/jobs", {**LONG_JOB, "dataset": dataset.id}, format="json").data
    assert created["status"] == "queued" and created["queue_position"] == 1
    cancelled = alice.post(f"/api/v1/jobs/{created['id']}/cancel").data
    assert cancelled["status"] == "cancelled" and cancelled["queue_position"] is None
    job_train_run(job_id=created["id"], worker="late-worker")  # the delivery that was already queued
    job = Job.objects.get(id=created["id"])
    assert job.status == "cancelled" and job.started_at is None and job.worker == ""
    again = alice.post(f"/api/v1/jobs/{created['id']}/cancel")
    assert again.status_code == 200 and again.data["status"] == "cancelled"


def test_cancel_a_running_job_stops_within_a_step(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    created = alice.post("/api/v1/jobs", {**LONG_JOB, "dataset": train["id"]}, format="json").data
    running = wait_for(lambda: alice.get(f"/api/v1/jobs/{created['id']}").data,
                       lambda j: j["status"] == "running" and j["progress"]["step"] >= 3)
    assert running["progress"]["total_steps"] == 2000 and running["progress"]["eta_seconds"] > 0
    response = alice.post(f"/api/v1/jobs/{created['id']}/cancel")
    assert response.status_code == 200 and response.data["cancel_requested"] is True
    job = job_final(alice, created["id"], timeout=60)
    assert job["status"] == "cancelled" and job["progress"]["step"] < 2000 and job["result"] is None
    types = [e["type"] for e in alice.get(f"/api/v1/jobs/{created['id']}/events").data["data"]]
    assert types[-2:] == ["cancel_requested", "cancelled"]
    assert not AdapterVersion.objects.filter(job_id=created["id"]).exists()


def test_cancelling_a_finished_job_is_a_conflict(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    created = alice.post("/api/v1/jobs", {**LONG_JOB, "dataset": train["id"],
                                          "hyperparameters": {"epochs": 1, "batch_size": 40}}, format="json").data
    assert job_final(alice, created["id"])["status"] == "succeeded"
    response = alice.post(f"/api/v1/jobs/{created['id']}/cancel")
    assert response.status_code == 409 and "already succeeded" in response.data["error"]["message"]
