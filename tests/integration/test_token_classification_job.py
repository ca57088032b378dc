"""token-classification through the whole service: the upload's report, a job that learns to tag (entity F1 in
its metrics and in foundry.json, with the tag names in id order), and the refusals."""

import pytest
from rest_framework.test import APIClient

from tests.conftest import dataset_ready, job_final, jsonl

NAMES, CITIES, VERBS = ("Ada", "Grace", "Alan", "Edsger"), ("Paris", "Oslo", "Lima"), ("visited", "left")
ROWS = [{"tokens": [name, "Lovelace", verb, city], "labels": ["B-PER", "I-PER", "O", "B-LOC"]}
        for name in NAMES for city in CITIES for verb in VERBS]
JOB = {"base_model": "tiny-bert", "task": "token-classification", "method": "lora",
       "method_config": {"r": 8, "alpha": 16, "dropout": 0.0},
       "hyperparameters": {"epochs": 15, "batch_size": 8, "learning_rate": 0.01, "max_seq_length": 32}}


def test_tagging_job_learns_and_publishes_entity_f1_and_its_tags(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(ROWS), task="token-classification")
    assert train["status"] == "ready", train["report"]
    stats = train["report"]["stats"]
    assert stats["rows"] == len(ROWS)
    assert stats["label_counts"] == {"B-LOC": 24, "B-PER": 24, "I-PER": 24, "O": 24}
    assert stats["words_per_row"]["max"] == 4 and stats["token_lengths"]["max"] >= 6  # [CLS] + words + [SEP]
    created = alice.post("/api/v1/jobs", {**JOB, "dataset": train["id"], "validation_dataset": train["id"],
                                          "adapter_name": "tagger"}, format="json")
    assert created.status_code == 201, created.data
    job = job_final(alice, created.data["id"])
    assert job["status"] == "succeeded", job["error"]

    evaluated = next(e for e in alice.get(f"/api/v1/jobs/{job['id']}/events").data["data"]
                     if e["type"] == "evaluated")["data"]
    assert evaluated["eval_f1"] >= 0.9, evaluated
    assert {"eval_precision", "eval_recall", "eval_accuracy"} <= set(evaluated)
    metrics = alice.get(f"/api/v1/jobs/{job['id']}/metrics").data["data"]
    assert [m["eval_accuracy"] for m in metrics if m["eval_accuracy"] is not None][-1] == evaluated["eval_accuracy"]
    lineage = alice.get("/api/v1/adapters/tagger/versions/1").data["metadata"]
    assert lineage["task"] == "token-classification" and lineage["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    assert lineage["metrics"]["eval_f1"] == evaluated["eval_f1"]


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_method_that_cannot_tag_is_refused_naming_method_and_task(worker: object, alice: APIClient,
                                                                   method: str) -> None:
    train = dataset_ready(alice, jsonl(ROWS[:4]), task="token-classification")
    response = alice.post("/api/v1/jobs", {**JOB, "method": method, "method_config": {}, "dataset": train["id"],
                                           "adapter_name": "never"}, format="json")
    assert response.status_code == 400
    error = response.data["error"]
    assert error["param"] == "method" and method in error["message"] and "token-classification" in error["message"]


def test_decoder_base_model_is_refused_for_tagging(worker: object, alice: APIClient) -> None:
    train = dataset_ready(alice, jsonl(ROWS[:4]), task="token-classification")
    response = alice.post("/api/v1/jobs", {**JOB, "base_model": "tiny-llama", "dataset": train["id"],
                                           "adapter_name": "never"}, format="json")
    assert response.status_code == 400 and response.data["error"]["param"] == "task"


def test_bad_rows_make_the_dataset_invalid_with_line_and_field(worker: object, alice: APIClient) -> None:
    rows = [*ROWS[:3], {"tokens": ["Ada", "spoke"], "labels": ["B-PER"]}, {"tokens": ["Ada"], "labels": [1]}]
    report = dataset_ready(alice, jsonl(rows), task="token-classification")
    assert report["status"] == "invalid"
    assert [(e["line"], e["field"]) for e in report["report"]["errors"]] == [(4, "labels"), (5, "labels[0]")]
