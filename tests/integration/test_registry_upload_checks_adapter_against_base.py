import io
import json
import pickle
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from rest_framework.test import APIClient

from api.registry.models import AdapterVersion
from workers.base_models import base_model_get, model_load, tokenizer_load

LABELS = ["neg", "pos"]


def tiny_bert() -> Any:
    entry = base_model_get("tiny-bert")
    return model_load(entry, task="classification", vocab_size=len(tokenizer_load(entry)), labels=LABELS)


def peft_folder(path: Path, *, r: int = 4, seed: int = 0) -> Path:
    """A genuine peft folder for tiny-bert, made outside the service: get_peft_model + save_pretrained."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=r, target_modules=["query", "value"],
                             init_lora_weights=False)  # non-zero B, so the adapter changes outputs
    peft.get_peft_model(tiny_bert(), config).save_pretrained(path)
    return path


def upload_version(client: APIClient, name: str, folder: Path, **fields: Any) -> Any:
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        file = io.BytesIO(path.read_bytes())
        file.name = path.name
        files.append(file)
    return client.post(f"/api/v1/adapters/{name}/versions",
                       {"files": files, "base_model": "tiny-bert", "labels": LABELS, **fields}, format="multipart")


class Canary:
    """Unpickling this creates `marker`: if the file ever appears, something ran pickle on the upload."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> Any:
        return Path.touch, (self.marker,)


def test_genuine_peft_folder_becomes_the_next_version(alice: APIClient, tmp_path: Path) -> None:
    first = upload_version(alice, "outside", peft_folder(tmp_path / "a"))
    assert first.status_code == 201, first.content
    second = upload_version(alice, "outside", peft_folder(tmp_path / "b", r=8))
    assert second.status_code == 201, second.content
    assert (first.data["version"], second.data["version"]) == (1, 2)
    meta = second.data["metadata"]
    assert meta["source"] == "upload" and meta["base_model"]["id"] == "tiny-bert" and meta["labels"] == LABELS
    assert meta["method"] == "lora" and meta["method_config"]["r"] == 8 and meta["uploaded_by"] == "alice"
    names = {f["name"] for f in second.data["files"]}
    assert names == {"adapter_config.json", "adapter_model.safetensors", "README.md", "foundry.json"}


def test_labels_default_from_the_classifier_shape(alice: APIClient, tmp_path: Path) -> None:
    folder = peft_folder(tmp_path / "a")
    files = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        file = io.BytesIO((folder / name).read_bytes())
        file.name = name
        files.append(file)
    created = alice.post("/api/v1/adapters/nolabels/versions", {"files": files, "base_model": "tiny-bert"},
                         format="multipart")
    assert created.status_code == 201, created.content
    assert created.data["metadata"]["labels"] == ["LABEL_0", "LABEL_1"]


def refused(response: Any, param: str) -> str:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == param, error
    assert not AdapterVersion.objects.exists()
    return error["message"]


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_pickle_renamed_safetensors_is_refused_unopened(alice: APIClient, tmp_path: Path, container: str) -> None:
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Canary(probe)))
    assert probe.exists()  # the canary is live: loading it does create its marker

    marker = tmp_path / "marker"
    folder = peft_folder(tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    if container == "pickle":
        weights.write_bytes(pickle.dumps({"w": Canary(marker)}))
    else:
        buffer = io.BytesIO()
        torch.save({"w": Canary(marker)}, buffer)
        weights.write_bytes(buffer.getvalue())
    message = refused(upload_version(alice, "evil", folder), "files.adapter_model.safetensors")
    assert "not a safetensors file" in message
    assert not marker.exists()


def test_bin_weights_are_refused(alice: APIClient, tmp_path: Path) -> None:
    folder = peft_folder(tmp_path / "a")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    assert "adapter_model.bin" in refused(upload_version(alice, "bin", folder), "files")


def test_wrong_shapes_are_refused(alice: APIClient, tmp_path: Path) -> None:
    folder = peft_folder(tmp_path / "a", r=4)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["r"] = 8  # the weights are rank 4
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert "shapes do not match" in refused(upload_version(alice, "shapes", folder), "files.adapter_model.safetensors")


def test_target_modules_missing_from_the_base_are_refused(alice: APIClient, tmp_path: Path) -> None:
    folder = peft_folder(tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "q_proj"]  # q_proj is a Llama name; tiny-bert has none
    (folder / "adapter_config.json").write_text(json.dumps(config))
    message = refused(upload_version(alice, "targets", folder), "adapter_config.json.target_modules")
    assert "q_proj" in message


def test_oversize_upload_is_refused(alice: APIClient, tmp_path: Path, settings: Any) -> None:
    settings.ADAPTER_UPLOAD_MAX_BYTES = 2000
    response = upload_version(alice, "big", peft_folder(tmp_path / "a"))
    assert response.status_code == 413, response.content
    error = response.json()["error"]
    assert error["param"] == "files" and "larger than the limit" in error["message"]
    assert not AdapterVersion.objects.exists()


def test_unknown_peft_type_and_base_model_are_refused(alice: APIClient, tmp_path: Path) -> None:
    folder = peft_folder(tmp_path / "a")
    refused(upload_version(alice, "base", folder, base_model="gpt-17"), "base_model")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["peft_type"] = "NOT_A_METHOD"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    refused(upload_version(alice, "type", folder), "adapter_config.json.peft_type")
