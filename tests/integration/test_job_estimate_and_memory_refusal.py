"""The estimate before submitting (tokens, steps, peak memory; time once calibrated), and a config needing
more memory than any worker has refused with that estimate, at submission or once its dataset validates."""

import math

import pytest
from rest_framework.test import APIClient

from api.jobs.models import Job
from api.ops.routing import gpu_queues_parse
from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl, upload

JOB = {"base_model": "tiny-bert", "task": "classification", "method": "lora",
       "hyperparameters": {"epochs": 3, "batch_size": 8}, "adapter_name": "sized"}


def test_the_estimate_counts_steps_tokens_and_memory_before_any_job_exists(worker: object,
                                                                          alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    response = alice.post("/api/v1/jobs/estimate", {**JOB, "dataset": train["id"]}, format="json")
    assert response.status_code == 200, response.content
    estimate = response.data["estimate"]
    assert estimate["steps"] == 3 * math.ceil(len(SENTIMENT) / 8)
    assert estimate["tokens"] >= 3 * len(SENTIMENT) * 4  # every row is at least [CLS] w movie number i [SEP]
    assert estimate["peak_memory_bytes"] > 4 * 1_000_000  # tiny-bert's ~1M fp32 parameters, at least
    assert response.data["fits"] is True
    assert not Job.objects.exists()  # asking costs nothing
    bigger = alice.post("/api/v1/jobs/estimate", {**JOB, "dataset": train["id"],
                                                   "hyperparameters": {"epochs": 3, "batch_size": 32}},
                        format="json").data["estimate"]
    assert bigger["peak_memory_bytes"] > estimate["peak_memory_bytes"] and bigger["steps"] < estimate["steps"]


def test_bad_input_to_the_estimate_names_the_field(alice: APIClient, bob: APIClient) -> None:
    alices = upload(alice, jsonl(SENTIMENT)).data["id"]
    response = bob.post("/api/v1/jobs/estimate", {**JOB, "dataset": alices}, format="json")
    assert response.status_code == 400 and response.data["error"]["param"] == "dataset"
    response = alice.post("/api/v1/jobs/estimate", {**JOB, "dataset": alices,
                                                     "hyperparameters": {"batch_size": 10**9}}, format="json")
    assert response.status_code == 400 and "batch_size" in response.data["error"]["param"]


@pytest.fixture
def tiny_gpu_class(settings):  # type: ignore[no-untyped-def]
    settings.GPU_QUEUES = gpu_queues_parse("train-tiny:0.001")  # about 1 MiB: no real model fits


def test_a_config_no_worker_can_hold_is_refused_with_its_estimate(worker: object, alice: APIClient,
                                                                    tiny_gpu_class: None) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    asked = alice.post("/api/v1/jobs/estimate", {**JOB, "dataset": train["id"]}, format="json").data
    assert asked["fits"] is False and asked["largest_worker_memory_bytes"] == int(0.001 * 2**30)
    response = alice.post("/api/v1/jobs", {**JOB, "dataset": train["id"]}, format="json")
    assert response.status_code == 400, response.content
    error = response.data["error"]
    assert error["param"] == "hyperparameters" and "GiB at peak" in error["message"]
    assert "largest worker has 0.0 GiB" in error["message"] and not Job.objects.exists()


def test_a_job_waiting_for_validation_fails_once_its_estimate_is_known(worker: object, alice: APIClient,
                                                                        tiny_gpu_class: None) -> None:
    uploaded = upload(alice, jsonl(SENTIMENT)).data
    created = alice.post("/api/v1/jobs", {**JOB, "dataset": uploaded["id"]}, format="json")
    assert created.status_code == 201 and created.data["estimate"] == {}  # rows unknown until validated
    job = job_final(alice, created.data["id"], timeout=120)
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_config"
    assert job["estimate"]["peak_memory_bytes"] > int(0.001 * 2**30)
