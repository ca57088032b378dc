"""Polling and listing stay cheap under load (bench/api_load.py): a page of queued jobs reads the queue
once, not once per row, and its positions and waits are the ones each job's own page shows."""

from typing import Any

from rest_framework.test import APIClient

from api.datasets.models import Dataset


def test_a_page_of_queued_jobs_costs_the_same_queries_as_one_and_agrees_with_each_job(
        alice: APIClient, django_assert_max_num_queries: Any) -> None:
    dataset = Dataset.objects.create(owner=alice.user, name="d", task="classification", format="jsonl",  # type: ignore[attr-defined]
                                     filename="d.jsonl", sha256="0" * 64, size_bytes=1, base_model="tiny-bert",
                                     status="ready", rows=2)
    for i in range(12):  # db, not transactional_db: on_commit never fires, so they stay queued
        created = alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification",
                                              "dataset": dataset.id, "adapter_name": f"q{i}", "priority": i % 3},
                             format="json")
        assert created.status_code == 201, created.data
    with django_assert_max_num_queries(8):  # session, token, count, page, positions, running, recent
        listed = alice.get("/api/v1/jobs").data["results"]
    assert len(listed) == 12
    assert sorted(j["queue_position"] for j in listed) == list(range(1, 13))
    for job in listed[:4]:
        alone = alice.get(f"/api/v1/jobs/{job['id']}").data
        assert (alone["queue_position"], alone["queue_eta_seconds"]) == (job["queue_position"],
                                                                        job["queue_eta_seconds"])
    first = min(listed, key=lambda j: j["queue_position"])
    assert first["adapter_name"] == "q2"  # highest priority (2), then oldest
