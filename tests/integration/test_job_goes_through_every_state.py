
from rest_framework.test import APIClient

from api.datasets.models import Dataset
from api.jobs.models import JobStatus
from api.jobs.services import job_create
from api.registry.models import AdapterVersion
from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl

TINY_JOB = {"base_model": "tiny-bert", "task": "classification", "method": "lora",
            "method_config": {"r": 4, "alpha": 8}, "hyperparameters": {"epochs": 2, "batch_size": 8},
            "adapter_name": "tiny-sentiment"}

def test_classification_job_runs_to_a_published_version(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    dev = dataset_ready(alice, jsonl(SENTIMENT[:10]), filename="dev.jsonl")
    created = alice.post("/api/v1/jobs", {**TINY_JOB, "dataset": train["id"], "validation_dataset": dev["id"]},
                         format="json")
    assert created.status_code == 201, created.content
    assert created.data["status"] == "queued" and created.data["method_config"]["dropout"] == 0.05
    at_submission = created.data["estimate"]  # from the report and the model's config, before any worker
    assert at_submission["steps"] == 10 and at_submission["tokens"] > 0 and at_submission["peak_memory_bytes"] > 0
    job = job_final(alice, created.data["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"step": 10, "total_steps": 10, "epoch": 2.0, "eta_seconds": 0}
    assert job["result"] == {"adapter": "tiny-sentiment", "version": 1, "ref": "tiny-sentiment@1"}

    events = alice.get(f"/api/v1/jobs/{job['id']}/events").data["data"]
    types = [e["type"] for e in events]
    assert types == ["created", "queued", "started", "training", "estimated", "epoch_end", "epoch_end",
                     "evaluated", "uploading", "succeeded"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    later = alice.get(f"/api/v1/jobs/{job['id']}/events?after=8").data
    assert [e["type"] for e in later["data"]] == ["uploading", "succeeded"] and later["last_seq"] == 10
    estimated = next(e for e in events if e["type"] == "estimated")["data"]
    assert estimated["steps"] == 10 and estimated["seconds"] is not None and estimated["peak_memory_bytes"] > 0
    assert job["estimate"] == estimated  # the worker's estimate replaces the one made at submission

    metrics = alice.get(f"/api/v1/jobs/{job['id']}/metrics").data["data"]
    train_rows = [m for m in metrics if m["loss"] is not None]
    assert [m["step"] for m in train_rows] == list(range(1, 11))
    assert all(m["tokens_per_second"] > 0 and m["learning_rate"] > 0 for m in train_rows)
    assert [m["step"] for m in metrics if m["eval_accuracy"] is not None] == [5, 10]

    version = alice.get("/api/v1/adapters/tiny-sentiment/versions/1").data
    assert sorted(f["name"] for f in version["files"]) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "foundry.json"]
    lineage = version["metadata"]
    assert lineage["job_id"] == job["id"] and lineage["labels"] == ["neg", "pos"]
    assert lineage["datasets"]["train"]["sha256"] == train["sha256"]
    assert lineage["method_config"] == job["method_config"] and "eval_accuracy" in lineage["metrics"]
    assert lineage["base_model"]["id"] == "tiny-bert" and lineage["code_version"]

def test_job_waits_for_validation_then_runs(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    pending = Dataset.objects.get(id=train["id"])
    Dataset.objects.filter(id=pending.id).update(status="validating")  # as if still validating
    job = job_create(user=alice.user, base_model="tiny-bert", task="classification", dataset=pending.id,
                     method="lora", hyperparameters={"epochs": 1, "batch_size": 20}, adapter_name="waits")
    assert job.status == JobStatus.VALIDATING_FILES
    from api.datasets.services import dataset_validate

    dataset_validate(dataset_id=pending.id)
    final = job_final(alice, job.id)
    assert final["status"] == "succeeded"
    types = [e["type"] for e in alice.get(f"/api/v1/jobs/{job.id}/events").data["data"]]
    assert types[:3] == ["created", "validating_files", "queued"]

def test_job_on_a_dataset_that_turns_out_invalid_fails_as_a_user_error(worker: object, alice: APIClient) -> None:
    bad = dataset_ready(alice, jsonl([*SENTIMENT, "{nope"]))
    assert bad["status"] == "invalid"
    response = alice.post("/api/v1/jobs", {**TINY_JOB, "dataset": bad["id"]}, format="json")
    assert response.status_code == 400 and response.data["error"]["param"] == "dataset"

    Dataset.objects.filter(id=bad["id"]).update(status="validating", report={})
    job = job_create(user=alice.user, base_model="tiny-bert", task="classification", dataset=bad["id"],
                     adapter_name="never")
    from api.datasets.services import dataset_validate

    dataset_validate(dataset_id=bad["id"])
    final = alice.get(f"/api/v1/jobs/{job.id}").data
    assert final["status"] == "failed"
    assert final["error"]["code"] == "invalid_file" and final["error"]["param"] == "dataset"

def test_bad_job_inputs_are_400_naming_the_field(alice: APIClient) -> None:
    dataset = Dataset.objects.create(owner=alice.user, name="d", task="classification", format="jsonl",
                                     filename="d.jsonl", sha256="0" * 64, size_bytes=1, base_model="minilm-l6",
                                     status="ready", rows=2)
    base = {**TINY_JOB, "dataset": dataset.id}
    cases = [
        ({"base_model": "gpt-99"}, "base_model"),
        ({"task": "sft"}, "task"),
        ({"adapter_name": "Bad Name!"}, "adapter_name"),
        ({"dataset": 999999}, "dataset"),
        ({"method": "nope"}, "method"),
        ({"method_config": {"r": 1000}}, "method_config.r"),
        ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"epochs": 1, "optimizer": "sgd"}}, "hyperparameters.optimizer"),
    ]
    for change, param in cases:
        response = alice.post("/api/v1/jobs", {**base, **change}, format="json")
        assert response.status_code == 400, (change, response.content)
        assert response.data["error"]["param"] == param, (change, response.data)
    assert alice.post("/api/v1/jobs", {**base, "dataset": "x"}, format="json").data["error"]["param"] == "dataset"

def test_target_module_missing_from_the_model_fails_with_the_param(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    created = alice.post("/api/v1/jobs", {**TINY_JOB, "dataset": train["id"],
                                          "method_config": {"target_modules": ["q_proj"]}}, format="json")
    job = job_final(alice, created.data["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_config" and job["error"]["param"] == "method_config.target_modules"
    assert "q_proj" in job["error"]["message"] and AdapterVersion.objects.count() == 0

def test_sft_job_on_chat_and_prompt_completion_rows(worker: object, alice: APIClient) -> None:
    rows = [{"prompt": f"say {w}", "completion": w} for w in ("yes", "no", "maybe")] * 4 + [
        {"messages": [{"role": "system", "content": "echo"}, {"role": "user", "content": "ping"},
                      {"role": "assistant", "content": "pong"}]}]
    train = dataset_ready(alice, jsonl(rows), task="sft")
    assert train["status"] == "ready", train["report"]
    created = alice.post("/api/v1/jobs", {"base_model": "tiny-llama", "task": "sft", "dataset": train["id"],
                                          "validation_dataset": train["id"], "adapter_name": "echo",
                                          "hyperparameters": {"epochs": 1, "batch_size": 4}}, format="json")
    job = job_final(alice, created.data["id"])
    assert job["status"] == "succeeded", job["error"]
    lineage = alice.get("/api/v1/adapters/echo/versions/latest").data["metadata"]
    assert lineage["prompt_format"] == "foundry-chat-v1" and "eval_loss" in lineage["metrics"]
