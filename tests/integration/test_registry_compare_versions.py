from rest_framework.test import APIClient

from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl

JOB = {"base_model": "tiny-bert", "task": "classification", "adapter_name": "cmp", "method": "lora"}


def test_compare_shows_config_hyperparameter_and_metric_differences(worker: object, alice: APIClient,
                                                                     bob: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    for r, epochs in ((4, 1), (8, 2)):
        created = alice.post("/api/v1/jobs", {**JOB, "dataset": train["id"], "validation_dataset": train["id"],
                                              "method_config": {"r": r, "target_modules": ["query", "value"]},
                                              "hyperparameters": {"epochs": epochs, "batch_size": 20}},
                             format="json").data
        assert job_final(alice, created["id"])["status"] == "succeeded"
    alice.put("/api/v1/adapters/cmp/aliases/production", {"version": 2}, format="json")

    response = alice.get("/api/v1/adapters/cmp/compare?a=1&b=production")
    assert response.status_code == 200, response.content
    body = response.data
    assert (body["a"], body["b"], body["identical"]) == (1, 2, False)
    config = {row["key"]: (row["a"], row["b"]) for row in body["differences"]["config"]}
    assert config["method_config.r"] == (4, 8)
    hyper = {row["key"]: (row["a"], row["b"]) for row in body["differences"]["hyperparameters"]}
    assert hyper["hyperparameters.epochs"] == (1, 2)
    metrics = {row["key"]: row for row in body["differences"]["metrics"]}
    loss = metrics["metrics.eval_loss"]
    assert abs(loss["delta"] - (loss["b"] - loss["a"])) < 1e-12
    assert any(row["key"] == "job_id" for row in body["differences"]["lineage"])
    assert all(not row["key"].startswith("created_at") for rows in body["differences"].values() for row in rows)

    same = alice.get("/api/v1/adapters/cmp/compare?a=2&b=latest").data
    assert same["identical"] is True
    assert alice.get("/api/v1/adapters/cmp/compare?a=1").status_code == 400
    assert alice.get("/api/v1/adapters/cmp/compare?a=1&b=9").status_code == 404
    assert bob.get("/api/v1/adapters/cmp/compare?a=1&b=2").status_code == 404
