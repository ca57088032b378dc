"""/api/v1/predict serves versions of the methods written here (not peft): each loads with its method's load() on a
base model of its own, and its outputs equal that load() run directly; in a window with a LoRA version, each
request gets its own adapter's answer."""

import threading
from pathlib import Path
from typing import Any

import peft
import torch
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.test import APIClient

import workers.methods  # noqa: F401 (registers the methods)
from api.registry.models import AdapterVersion
from api.registry.services import _version_store
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.inference.cache import AdapterCache
from workers.inference.engine import Engine
from workers.methods.registry import METHODS, method_config_resolve

LABELS = ["neg", "pos"]
TEXTS = ["great movie number 7", "awful movie number 7", "an ordinary sentence"]
NATIVE = sorted(name for name, method in METHODS.items() if not method.peft_backed)




def tiny(task: str = "classification") -> Any:
    entry = base_model_get("tiny-bert" if task == "classification" else "tiny-llama")
    return model_load(entry, task=task, vocab_size=len(tokenizer_load(entry)),
                      labels=LABELS if task == "classification" else None)


def native_folder(method_name: str, path: Path, *, task: str = "classification", seed: int = 0) -> Path:
    """A version folder as the method's own save() writes it, its trainable weights moved at random."""
    method = METHODS[method_name]
    config = method_config_resolve(method_name, {})
    extra = {"total_step": 4} if method.needs_total_step else {}
    model = method.build(tiny(task), config, task=task, **extra)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
        if method.after_step:  # LT-SFT: select the kept entries, as the job does half-way
            method.after_step(model, getattr(model, "switch_step", 0))
    method.save(model, str(path))
    return path


def store(name: str, folder: Path, method: str, task: str = "classification") -> AdapterVersion:
    user = get_user_model().objects.get(username="alice")
    base_id = "tiny-bert" if task == "classification" else "tiny-llama"
    metadata = {"format": 1, "source": "upload", "adapter": name, "task": task, "method": method,
                "labels": LABELS if task == "classification" else [],
                "base_model": {"id": base_id, "source": f"tiny:{base_id[5:]}", "revision": None}}
    return _version_store(user=user, name=name, folder=folder, metadata=metadata)


def direct_scores(method_name: str, folder: Path) -> torch.Tensor:
    model = METHODS[method_name].load(tiny(), str(folder)).eval()
    tokenizer = tokenizer_load(base_model_get("tiny-bert"))
    with torch.no_grad():
        return model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1)


def test_every_native_method_is_served_through_predict(alice: APIClient, bob: APIClient, inference_url: str,
                                                      tmp_path: Path) -> None:
    assert {"ssf", "lt_sft", "lisa", "mezo", "mixlora", "dylora"} <= set(NATIVE)
    plain = None
    with override_settings(INFERENCE_URL=inference_url):
        for i, name in enumerate(NATIVE):
            folder = native_folder(name, tmp_path / name, seed=i)
            want = direct_scores(name, folder)
            store(f"n-{name.replace('_', '-')}", folder, name)
            response = alice.post("/api/v1/predict", {"adapter": f"n-{name.replace('_', '-')}@1", "inputs": TEXTS},
                                  format="json")
            assert response.status_code == 200, (name, response.data)
            got = torch.tensor([[o["scores"][label] for label in LABELS] for o in response.data["outputs"]])
            assert torch.allclose(got, want, atol=1e-5), name
            if plain is None:
                plain = got
            else:
                assert not torch.allclose(got, plain, atol=1e-3), f"{name} answers like another method"
        assert bob.post("/api/v1/predict", {"adapter": "n-ssf@1", "inputs": TEXTS},
                        format="json").status_code == 404


def _version(row: AdapterVersion) -> dict[str, Any]:
    return {"prefix": row.prefix, "files": row.files, "metadata": row.metadata}


def test_native_and_lora_versions_in_one_window_each_get_their_own_answer(alice: APIClient, tmp_path: Path) -> None:
    ssf = _version(store("ssf-one", native_folder("ssf", tmp_path / "ssf", seed=5), "ssf"))
    torch.manual_seed(6)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, target_modules=["query", "value"],
                             init_lora_weights=False)
    peft.get_peft_model(tiny(), config).save_pretrained(tmp_path / "lora")
    lora = _version(store("lora-one", tmp_path / "lora", "lora"))

    alone = Engine(AdapterCache(max_adapters=8, max_bytes=10**9), window_ms=0)
    expected = {"ssf": alone.predict(ssf, TEXTS), "lora": alone.predict(lora, TEXTS)}
    engine = Engine(AdapterCache(max_adapters=8, max_bytes=10**9), window_ms=300)
    engine.predict(ssf, TEXTS[:1])
    engine.predict(lora, TEXTS[:1])
    results: dict[str, Any] = {}
    threads = [threading.Thread(target=lambda n=n, v=v: results.__setitem__(n, engine.predict(v, TEXTS)))
               for n, v in (("ssf", ssf), ("lora", lora))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert engine.batch_sizes[-2:] in ([3, 3],)  # one window, two bases: two forward passes of 3 rows
    for key in ("ssf", "lora"):
        for got, want in zip(results[key], expected[key], strict=True):
            assert got["label"] == want["label"]
            assert all(abs(got["scores"][k] - want["scores"][k]) < 1e-5 for k in LABELS)
    assert expected["ssf"] != expected["lora"]


def test_a_native_sft_version_generates(alice: APIClient, tmp_path: Path) -> None:
    version = _version(store("ssf-writer", native_folder("ssf", tmp_path / "w", task="sft", seed=7), "ssf",
                             task="sft"))
    engine = Engine(AdapterCache(max_adapters=8, max_bytes=10**9), window_ms=0)
    out = engine.generate(version, ["Hello"], {"max_tokens": 5, "temperature": 0})
    model = METHODS["ssf"].load(tiny("sft"), str(tmp_path / "w")).eval()
    tokenizer = tokenizer_load(base_model_get("tiny-llama"))
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + tokenizer.encode("Hello", add_special_tokens=False)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    with torch.no_grad():
        want = model.base.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                                                           dtype=torch.long),
                                   max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=eos)[0][len(ids):]
    assert out[0]["completion_tokens"] == len(want)
    assert out[0]["text"] == tokenizer.decode(want, skip_special_tokens=True)
