import hashlib
import io
import json
import zipfile
from pathlib import Path

import torch
from peft import PeftModel
from rest_framework.test import APIClient
from safetensors.torch import load_file

from tests.conftest import SENTIMENT, dataset_ready, job_final, jsonl
from workers.base_models import base_model_get, model_load, tokenizer_load


def test_downloaded_archive_is_a_peft_folder_that_predicts(worker: object, alice: APIClient, tmp_path: Path) -> None:
    train = dataset_ready(alice, jsonl(SENTIMENT))
    created = alice.post("/api/v1/jobs", {"base_model": "tiny-bert", "task": "classification",
                                          "dataset": train["id"], "validation_dataset": train["id"],
                                          "adapter_name": "roundtrip",
                                          "hyperparameters": {"epochs": 10, "batch_size": 8,
                                                              "learning_rate": 0.01}}, format="json").data
    assert job_final(alice, created["id"])["status"] == "succeeded"

    response = alice.get("/api/v1/adapters/roundtrip/versions/1/download")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert 'filename="roundtrip-v1.zip"' in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    archive.extractall(tmp_path)
    recorded = {f["name"]: f["sha256"] for f in alice.get("/api/v1/adapters/roundtrip/versions/1").data["files"]}
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == recorded

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny-bert"
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved) and any("classifier" in k for k in saved)

    entry = base_model_get("tiny-bert")
    tokenizer = tokenizer_load(entry)
    labels = json.loads((tmp_path / "foundry.json").read_text())["labels"]
    base = model_load(entry, task="classification", vocab_size=len(tokenizer), labels=labels)
    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    for name, tensor in saved.items():
        key = name.replace(".weight", ".default.weight") if "lora_" in name else None
        if key:
            assert torch.equal(loaded.state_dict()[key], tensor), name
    # Plain peft, outside the service, scores the training rows exactly as the job's evaluation did.
    batch = tokenizer([row["text"] for row in SENTIMENT], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = loaded(**batch).logits
    predicted = [labels[i] for i in logits.argmax(-1)]
    accuracy = sum(p == row["label"] for p, row in zip(predicted, SENTIMENT, strict=True)) / len(SENTIMENT)
    lineage = json.loads((tmp_path / "foundry.json").read_text())
    assert accuracy == lineage["metrics"]["eval_accuracy"]
    with loaded.disable_adapter(), torch.no_grad():
        assert not torch.allclose(loaded(**batch).logits, logits)
