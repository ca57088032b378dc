from typing import Any

from rest_framework.test import APIClient

from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl
from workers.training import engine


def test_a_job_over_its_time_budget_fits_its_schedule_and_says_so(worker: object, alice: APIClient,
                                                                   monkeypatch: Any) -> None:
    """40 rows, batch 8, 4 epochs: 20 planned steps. The worker's training clock reads 6 s later at every look, so
    the 60 s budget ends after step 10; the job records that its learning rate now falls to 0 there, stops at
    step 10 and publishes its adapter."""
    now = iter(range(0, 100_000, 6))
    monkeypatch.setattr(engine, "clock", lambda: next(now))  # the worker runs in this process (a thread)
    train = dataset_ready(alice, jsonl(SENTIMENT))
    created = alice.post("/api/v1/jobs", {
        "base_model": "tiny-bert", "task": "classification", "method": "lora", "dataset": train["id"],
        "hyperparameters": {"epochs": 4, "batch_size": 8, "max_train_seconds": 60}, "adapter_name": "budgeted",
    }, format="json")
    assert created.status_code == 201, created.content
    assert created.data["hyperparameters"]["schedule_fits_budget"] is True  # the default, shown on the job
    job = job_final(alice, created.data["id"])
    assert job["status"] == "succeeded", job["error"]
    events = alice.get(f"/api/v1/jobs/{job['id']}/events").data["data"]
    fitted = [e for e in events if e["type"] == "schedule_fitted"]
    assert len(fitted) == 1, [e["type"] for e in events]
    assert fitted[0]["data"] == {"step": 1, "end_step": 10, "seconds_per_step": 6.0, "max_train_seconds": 60}
    assert "ends near step 10" in fitted[0]["message"]
    metrics = alice.get(f"/api/v1/jobs/{job['id']}/metrics").data["data"]
    rates = [m["learning_rate"] for m in metrics if m["loss"] is not None]
    assert len(rates) == 10 and rates[-1] < rates[1] / 8  # on a line from step 2 to 0 after step 10
    assert job["result"]["ref"] == "budgeted@1"
