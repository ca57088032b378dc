from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl, make_client


def test_other_users_dataset_job_and_adapter_are_404(worker: object, alice: APIClient, bob: APIClient) -> None:
    dataset = dataset_ready(alice, jsonl(SENTIMENT))
    job = alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification",
                                      "dataset": dataset["id"], "adapter_name": "private",
                                      "hyperparameters": {"epochs": 1, "batch_size": 40}}, format="json").data
    assert job_final(alice, job["id"])["status"] == "succeeded"

    for path in (f"/api/v1/datasets/{dataset['id']}", f"/api/v1/jobs/{job['id']}",
                 f"/api/v1/jobs/{job['id']}/events", f"/api/v1/jobs/{job['id']}/metrics",
                 "/api/v1/adapters/private", "/api/v1/adapters/private/versions/1",
                 "/api/v1/adapters/private/versions/1/download"):
        assert alice.get(path).status_code == 200, path
        response = bob.get(path)
        assert response.status_code == 404, path
        assert response.data["error"]["code"] == "not_found"
    assert bob.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 404
    for listing in ("/api/v1/datasets", "/api/v1/jobs", "/api/v1/adapters"):
        assert bob.get(listing).data["count"] == 0 and alice.get(listing).data["count"] == 1

    stolen = bob.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification",
                                       "dataset": dataset["id"], "adapter_name": "stolen"}, format="json")
    assert stolen.status_code == 400 and stolen.data["error"]["param"] == "dataset"
    assert "no dataset with id" in stolen.data["error"]["message"]

    # Staff (operators) see everyone's objects, by id, by name and in lists; they still train only on their own.
    staff = make_client("carol")
    get_user_model().objects.filter(username="carol").update(is_staff=True)
    for path in (f"/api/v1/datasets/{dataset['id']}", f"/api/v1/jobs/{job['id']}",
                 f"/api/v1/jobs/{job['id']}/events", "/api/v1/adapters/private",
                 "/api/v1/adapters/private/versions/1"):
        assert staff.get(path).status_code == 200, path
    for listing in ("/api/v1/datasets", "/api/v1/jobs", "/api/v1/adapters"):
        assert staff.get(listing).data["count"] == 1
    borrowed = staff.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification",
                                           "dataset": dataset["id"], "adapter_name": "borrowed"}, format="json")
    assert borrowed.status_code == 400 and borrowed.data["error"]["param"] == "dataset"
