"""POST /adapters/{name}/merges: a worker merges registry versions into a new version whose outputs equal peft's
own merge (LoRA) or the sum of the sparse differences (LT-SFT), with the parents in its lineage."""

import io
import json
from pathlib import Path
from typing import Any

import peft
import torch
from rest_framework.test import APIClient
from safetensors.torch import load_file

from api.registry.models import AdapterVersion
from api.registry.services import _version_store
from storage import s3
from tests.conftest import wait_for
from workers.base_models import base_model_get, model_load, tokenizer_load

LABELS = ["neg", "pos"]


def base(name: str, labels: list[str] | None = None) -> Any:
    entry = base_model_get(name)
    task = "sft" if name == "tiny-llama" else "classification"
    return model_load(entry, task=task, vocab_size=len(tokenizer_load(entry)), labels=labels)


def lora_folder(path: Path, *, base_name: str, seed: int, labels: list[str] | None = None, r: int = 4) -> Path:
    torch.manual_seed(seed)
    sft = base_name == "tiny-llama"
    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM if sft else peft.TaskType.SEQ_CLS, r=r,
                             target_modules=["q_proj", "v_proj"] if sft else ["query", "value"],
                             init_lora_weights=False)
    model = peft.get_peft_model(base(base_name, labels), config)
    if not sft:
        with torch.no_grad():  # a head of its own per source, so averaging the heads shows
            for p in model.base_model.model.classifier.modules_to_save["default"].parameters():
                p.normal_()
    model.save_pretrained(path)
    return path


def upload(client: APIClient, name: str, folder: Path, base_model: str, labels: list[str] | None = None) -> int:
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        file = io.BytesIO(path.read_bytes())
        file.name = path.name
        files.append(file)
    fields: dict[str, Any] = {"files": files, "base_model": base_model}
    if labels:
        fields["labels"] = labels
    response = client.post(f"/api/v1/adapters/{name}/versions", fields, format="multipart")
    assert response.status_code == 201, response.content
    return response.data["version"]


def merge(client: APIClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    created = client.post(f"/api/v1/adapters/{name}/merges", body, format="json")
    assert created.status_code == 202, created.content
    assert created.data["status"] == "queued"
    return wait_for(lambda: client.get(f"/api/v1/adapters/{name}/merges/{created.data['id']}").data,
                    lambda m: m["status"] in ("succeeded", "failed"), timeout=120)


def fetch(client: APIClient, name: str, version: int, folder: Path) -> tuple[dict[str, Any], Path]:
    data = client.get(f"/api/v1/adapters/{name}/versions/{version}").data
    folder.mkdir()
    row = AdapterVersion.objects.get(adapter__name=name, version=version)
    for entry in row.files:
        s3.download_file(row.prefix + entry["name"], folder / entry["name"], sha256=entry["sha256"])
    return data, folder


IDS = torch.tensor([[5, 17, 300, 42, 7, 99, 1000, 3]])


def test_lora_merges_equal_peft_own_merge_and_list_their_parents(worker: object, alice: APIClient, bob: APIClient,
                                                                  tmp_path: Path) -> None:
    folders = [lora_folder(tmp_path / f"s{i}", base_name="tiny-llama", seed=i) for i in range(2)]
    upload(alice, "writer", folders[0], "tiny-llama")
    upload(alice, "poet", folders[1], "tiny-llama")
    for combination, extra in (("ties", {"density": 0.5}), ("cat", {}), ("svd", {"svd_rank": 4})):
        done = merge(alice, "blend", {"sources": [{"version": "writer@1", "weight": 0.7},
                                                  {"version": "poet@latest", "weight": 0.4}],
                                      "combination_type": combination, **extra})
        assert done["status"] == "succeeded", done["error"]
        detail, merged = fetch(alice, "blend", done["version"], tmp_path / f"merged-{combination}")
        parents = detail["metadata"]["parents"]
        assert [(p["adapter"], p["version"], p["weight"]) for p in parents] == [("writer", 1, 0.7), ("poet", 1, 0.4)]
        assert detail["metadata"]["source"] == "merge"
        assert detail["metadata"]["merge"]["combination_type"] == combination

        ours = peft.PeftModel.from_pretrained(base("tiny-llama"), merged).eval()  # plain peft loads it
        direct = peft.PeftModel.from_pretrained(base("tiny-llama"), folders[0], adapter_name="a")
        direct.load_adapter(folders[1], adapter_name="b")
        direct.add_weighted_adapter(["a", "b"], [0.7, 0.4], "m", combination_type=combination,
                                    density=extra.get("density"), svd_rank=extra.get("svd_rank"))
        direct.set_adapter("m")
        with torch.no_grad():
            want, got = direct.eval()(input_ids=IDS).logits, ours(input_ids=IDS).logits
            plain = base("tiny-llama")(input_ids=IDS).logits
        assert torch.allclose(got, want, atol=1e-5), combination
        assert not torch.allclose(got, plain, atol=1e-3)  # the merge changes outputs

    assert bob.get("/api/v1/adapters/blend/merges/1").status_code == 404
    assert bob.get("/api/v1/adapters/blend/merges").data["count"] == 0
    refused = bob.post("/api/v1/adapters/mine/merges", {"sources": [{"version": "writer@1"}, {"version": "poet@1"}],
                                                        "combination_type": "linear"}, format="json")
    assert refused.status_code == 404  # another user's versions do not exist for bob


def test_classifier_heads_are_averaged_and_mismatches_are_refused(worker: object, alice: APIClient,
                                                                 tmp_path: Path) -> None:
    folders = [lora_folder(tmp_path / f"c{i}", base_name="tiny-bert", seed=10 + i, labels=LABELS) for i in range(2)]
    upload(alice, "left", folders[0], "tiny-bert", LABELS)
    upload(alice, "right", folders[1], "tiny-bert", LABELS)
    done = merge(alice, "both", {"sources": [{"version": "left@1", "weight": 0.75}, {"version": "right@1",
                                                                                    "weight": 0.25}],
                                 "combination_type": "linear"})
    assert done["status"] == "succeeded", done["error"]
    detail, merged = fetch(alice, "both", done["version"], tmp_path / "merged")
    assert detail["metadata"]["labels"] == LABELS

    # peft's own merge of the LoRA parts (its add_weighted_adapter refuses the heads), the heads averaged by hand
    direct = peft.PeftModel(base("tiny-bert", LABELS), _without_head(folders[0]), adapter_name="a")
    direct.load_adapter(folders[0], adapter_name="a")  # the config is there already: only the weights load
    direct.add_adapter("b", _without_head(folders[1]))
    direct.load_adapter(folders[1], adapter_name="b")
    direct.add_weighted_adapter(["a", "b"], [0.75, 0.25], "m", combination_type="linear")
    direct.set_adapter("m")
    heads = [load_file(str(f / "adapter_model.safetensors")) for f in folders]
    classifier = direct.base_model.model.classifier
    with torch.no_grad():
        for key in ("weight", "bias"):
            full = f"base_model.model.classifier.{key}"
            getattr(classifier, key).copy_(0.75 * heads[0][full] + 0.25 * heads[1][full])
        ours = peft.PeftModel.from_pretrained(base("tiny-bert", LABELS), merged).eval()
        ids = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
        assert torch.allclose(ours(**ids).logits, direct.eval()(**ids).logits, atol=1e-5)

    upload(alice, "other-labels", lora_folder(tmp_path / "o", base_name="tiny-bert", seed=3, labels=["a", "b"]),
           "tiny-bert", ["a", "b"])
    body = {"sources": [{"version": "left@1"}, {"version": "other-labels@1"}], "combination_type": "linear"}
    refused = alice.post("/api/v1/adapters/x/merges", body, format="json")
    assert refused.status_code == 400 and "['neg', 'pos']" in refused.data["error"]["message"]
    assert "['a', 'b']" in refused.data["error"]["message"]

    upload(alice, "writer", lora_folder(tmp_path / "w", base_name="tiny-llama", seed=4), "tiny-llama")
    body = {"sources": [{"version": "left@1"}, {"version": "writer@1"}], "combination_type": "linear"}
    refused = alice.post("/api/v1/adapters/x/merges", body, format="json")
    assert refused.status_code == 400 and "base model" in refused.data["error"]["message"]

    alice.post("/api/v1/adapters/right/versions/1/archive")
    body = {"sources": [{"version": "left@1"}, {"version": "right@1"}], "combination_type": "linear"}
    refused = alice.post("/api/v1/adapters/x/merges", body, format="json")
    assert refused.status_code == 400 and refused.data["error"]["param"] == "sources[1].version"
    assert "archived" in refused.data["error"]["message"]

    refused = alice.post("/api/v1/adapters/x/merges", {**body, "combination_type": "ties"}, format="json")
    assert refused.status_code == 400


def _without_head(folder: Path) -> peft.LoraConfig:
    config = peft.LoraConfig.from_pretrained(str(folder))
    config.modules_to_save, config.task_type = None, None
    return config


def lt_sft_folder(path: Path, *, seed: int) -> Path:
    """An LT-SFT difference made by the method's own code: a full phase (random moves), selection, a sparse phase."""
    from workers.methods.lt_sft.model import after_step, build, save

    model = build(base("tiny-bert", LABELS), {"density": 0.05, "full_phase": 0.5}, task="classification",
                  total_step=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        after_step(model, model.switch_step)  # select
        for p in model.base.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        after_step(model, model.switch_step + 1)  # project onto the kept entries
    save(model, str(path))
    return path


def test_lt_sft_merge_is_the_weighted_sum_of_the_differences(worker: object, alice: APIClient,
                                                            tmp_path: Path) -> None:
    from django.contrib.auth import get_user_model

    from workers.methods.lt_sft.model import diff_apply, diff_read, load

    user = get_user_model().objects.get(username="alice")
    folders = [lt_sft_folder(tmp_path / f"d{i}", seed=20 + i) for i in range(2)]
    metadata = {"format": 1, "source": "upload", "task": "classification", "labels": LABELS, "method": "lt_sft",
                "base_model": {"id": "tiny-bert", "source": "tiny:bert", "revision": None}}
    for name, folder in zip(("language", "task"), folders, strict=True):
        copy = tmp_path / f"store-{name}"
        copy.mkdir()
        for f in folder.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        _version_store(user=user, name=name, folder=copy, metadata={**metadata, "adapter": name})

    refused = alice.post("/api/v1/adapters/x/merges", {"sources": [{"version": "language@1"}, {"version": "task@1"}],
                                                        "combination_type": "ties", "density": 0.5}, format="json")
    assert refused.status_code == 400 and refused.data["error"]["param"] == "combination_type"
    done = merge(alice, "composed", {"sources": [{"version": "language@1", "weight": 1.0},
                                                 {"version": "task@1", "weight": 0.5}], "combination_type": "sum"})
    assert done["status"] == "succeeded", done["error"]
    detail, merged = fetch(alice, "composed", done["version"], tmp_path / "merged")
    assert [p["adapter"] for p in detail["metadata"]["parents"]] == ["language", "task"]
    assert json.loads((merged / "adapter_config.json").read_text())["foundry_method"] == "lt_sft"

    want = base("tiny-bert", LABELS)
    (sparse_a, head_a), (sparse_b, head_b) = diff_read(str(folders[0])), diff_read(str(folders[1]))
    diff_apply(want, sparse_a)
    diff_apply(want, {n: (i, v * 0.5) for n, (i, v) in sparse_b.items()})
    params = dict(want.named_parameters())
    with torch.no_grad():
        for key in head_a:
            params[key].copy_((1.0 * head_a[key] + 0.5 * head_b[key]) / 1.5)
        got = load(base("tiny-bert", LABELS), str(merged))
        ids = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}
        assert torch.allclose(got(**ids).logits, want.eval()(**ids).logits, atol=1e-5)
