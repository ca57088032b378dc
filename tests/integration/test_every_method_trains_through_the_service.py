"""Every registered method, on every task it supports, as a real job: worker, registry, download."""

import io
import zipfile

import pytest
from rest_framework.test import APIClient

from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl
from workers.methods.registry import METHODS

SFT_ROWS = [{"prompt": f"say {w}", "completion": w} for w in ("yes", "no", "maybe", "never")] * 5
TAGGED_ROWS = [{"tokens": [name, "visited", city], "labels": ["B-PER", "O", "B-LOC"]}
               for name in ("Ada", "Grace", "Alan", "Edsger") for city in ("Paris", "Oslo", "Lima")] * 2
ROWS = {"classification": SENTIMENT, "sft": SFT_ROWS, "token-classification": TAGGED_ROWS}
BASE = {"classification": "tiny-bert", "sft": "tiny-llama", "token-classification": "tiny-bert"}
TASKS = ("classification", "sft")
# token-classification as a job for one method per family (about 9 s each); the unit table trains every method on it
TOKEN_JOBS = ("lora", "prefix_tuning", "adapter_houlsby", "ssf", "lt_sft")
CASES = [(name, task, {"r": 8} if name == "miss" else {})  # MiSS's default rank is sized for real models
         for name, method in sorted(METHODS.items()) for task in method.tasks
         if task != "token-classification" or name in TOKEN_JOBS]
CASES += [("lora", task, {"init": init}) for task in TASKS for init in ("pissa", "eva", "corda", "lora_ga")]
IDS = [f"{m}-{t}-{'-'.join(map(str, c.values())) or 'default'}" for m, t, c in CASES]


@pytest.mark.parametrize(("method", "task", "config"), CASES, ids=IDS)
def test_method_job_publishes_a_downloadable_version(worker: object, alice: APIClient, method: str, task: str,
                                                     config: dict) -> None:
    rows = ROWS[task]
    dataset = dataset_ready(alice, jsonl(rows), task=task)
    name = f"{method}-{task}".replace("_", "-")
    created = alice.post("/api/v1/jobs", {"base_model": BASE[task], "task": task, "dataset": dataset["id"],
                                          "method": method, "method_config": config, "adapter_name": name,
                                          "hyperparameters": {"epochs": 1, "batch_size": 8, "max_seq_length": 32}},
                         format="json")
    assert created.status_code == 201, created.data
    job = job_final(alice, created.data["id"])
    assert job["status"] == "succeeded", job["error"]
    response = alice.get(f"/api/v1/adapters/{name}/versions/latest/download")
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert {"adapter_config.json", "adapter_model.safetensors", "foundry.json"} <= set(names)
