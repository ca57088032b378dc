from rest_framework.test import APIClient

from api.datasets.models import Dataset
from api.jobs.models import JobCheckpoint


def _dataset(client: APIClient) -> Dataset:
    return Dataset.objects.create(owner=client.user, name="d", task="classification", format="jsonl",  # type: ignore[attr-defined]
                                  filename="d.jsonl", sha256="0" * 64, size_bytes=1, base_model="tiny-bert",
                                  status="ready", rows=2)


def test_queued_jobs_are_ordered_by_priority_then_age(alice: APIClient) -> None:
    dataset = _dataset(alice)
    # db (not transactional_db): on_commit never fires, so the jobs stay queued for us to look at.
    made = {p: alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification", "dataset": dataset.id,
                                          "adapter_name": f"p{p}", "priority": p}, format="json").data
            for p in (5, 9, 1)}
    positions = {job["adapter_name"]: alice.get(f"/api/v1/jobs/{job['id']}").data["queue_position"]
                 for job in made.values()}
    assert positions == {"p9": 1, "p5": 2, "p1": 3}
    listed = alice.get("/api/v1/jobs?status=queued").data["results"]
    assert all(isinstance(j["queue_eta_seconds"], int) and j["queue_eta_seconds"] >= 0 for j in listed)
    bad = alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification", "dataset": dataset.id,
                                      "adapter_name": "x", "priority": 10}, format="json")
    assert bad.status_code == 400 and bad.data["error"]["param"] == "priority"


def test_checkpoints_are_listed_newest_first_and_only_to_the_owner(alice: APIClient, bob: APIClient) -> None:
    dataset = _dataset(alice)
    job = alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification", "dataset": dataset.id,
                                      "adapter_name": "ck"}, format="json").data
    for step in (50, 100):
        JobCheckpoint.objects.create(job_id=job["id"], step=step, epoch=step / 50, prefix=f"jobs/{job['id']}/x/",
                                     files=[{"name": "adapter_model.safetensors", "size": 1, "sha256": "0" * 64}])
    listed = alice.get(f"/api/v1/jobs/{job['id']}/checkpoints").data["data"]
    assert [c["step"] for c in listed] == [100, 50]
    assert bob.get(f"/api/v1/jobs/{job['id']}/checkpoints").status_code == 404
