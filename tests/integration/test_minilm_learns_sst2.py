"""Real learning: LoRA on the pretrained minilm-l6, 1,000 SST-2 rows, through the whole service."""

import csv
import random
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from tests.conftest import dataset_ready, job_final, jsonl

SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"


def sst2_rows(name: str) -> list[dict[str, str]]:
    with open(SST2 / name, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    key = "content" if "content" in rows[0] else "sentence"
    return [{"text": r[key], "label": r["label"]} for r in rows]


@pytest.mark.slow
@pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason=f"SST-2 not found at {SST2} (../shared/data/sst2)")
def test_lora_on_minilm_beats_075_dev_accuracy_on_1000_sst2_rows(worker: object, alice: APIClient) -> None:
    train = sst2_rows("train.tsv")
    random.Random(0).shuffle(train)
    train_set = dataset_ready(alice, jsonl(train[:1000]), filename="sst2-train.jsonl")
    dev_set = dataset_ready(alice, jsonl(sst2_rows("dev.tsv")), filename="sst2-dev.jsonl")
    assert train_set["status"] == dev_set["status"] == "ready"
    created = alice.post("/api/v1/jobs", {
        "base_model": "minilm-l6", "task": "classification", "dataset": train_set["id"],
        "validation_dataset": dev_set["id"], "adapter_name": "sst2",
        "method_config": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["query", "key", "value", "dense"]},
        "hyperparameters": {"epochs": 2, "learning_rate": 0.001, "batch_size": 32, "max_seq_length": 128},
    }, format="json").data
    job = job_final(alice, created["id"], timeout=900)
    assert job["status"] == "succeeded", job["error"]
    metrics = alice.get("/api/v1/adapters/sst2/versions/1").data["metadata"]["metrics"]
    print("SST-2 dev accuracy", metrics["eval_accuracy"])
    assert metrics["eval_accuracy"] > 0.75
