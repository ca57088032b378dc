"""The cache's fast LoRA attach (new A/B and head copies straight into the layers) answers exactly as plain peft
loading the same folder, in a mixed batch too; a DoRA adapter takes peft's own path."""

from pathlib import Path
from typing import Any

import peft
import torch

from storage import s3
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.inference.cache import AdapterCache
from workers.inference.engine import Engine

LABELS = ["neg", "pos", "mixed"]
TEXTS = ["great movie number 7", "awful movie number 7", "an ordinary sentence"]


def tiny() -> Any:
    entry = base_model_get("tiny-bert")
    return model_load(entry, task="classification", vocab_size=len(tokenizer_load(entry)), labels=LABELS)


def folder_for(path: Path, seed: int, r: int, **extra: Any) -> Path:
    torch.manual_seed(seed)
    config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=r, lora_alpha=3 * r, init_lora_weights=False,
                             target_modules=["query", "value", "dense"], **extra)
    model = peft.get_peft_model(tiny(), config)
    with torch.no_grad():
        for p in model.base_model.model.classifier.modules_to_save["default"].parameters():
            p.normal_()
    model.save_pretrained(path)
    return path


def version_for(folder: Path, prefix: str) -> dict[str, Any]:
    files = [{"name": n, "size": (folder / n).stat().st_size, "sha256": s3.put_file(prefix + n, folder / n)}
             for n in ("adapter_config.json", "adapter_model.safetensors")]
    return {"prefix": prefix, "files": files,
            "metadata": {"task": "classification", "labels": LABELS, "base_model": {"id": "tiny-bert"}}}


def peft_scores(folder: Path) -> torch.Tensor:
    model = peft.PeftModel.from_pretrained(tiny(), folder).eval()
    with torch.no_grad():
        encoded = tokenizer_load(base_model_get("tiny-bert"))(TEXTS, return_tensors="pt", padding=True)
        return model(**encoded).logits.softmax(-1)


def test_attached_adapters_answer_like_plain_peft(bucket: None, tmp_path: Path) -> None:
    folders = [folder_for(tmp_path / f"f{i}", seed=i, r=2 + 2 * i) for i in range(3)]
    folders.append(folder_for(tmp_path / "dora", seed=9, r=4, use_dora=True))
    versions = [version_for(f, f"attach-test/{i}/") for i, f in enumerate(folders)]
    engine = Engine(AdapterCache(max_adapters=8, max_bytes=10**9), window_ms=0)
    for i, version in enumerate(versions):
        got = engine.predict(version, TEXTS)
        want = peft_scores(folders[i])
        assert torch.allclose(torch.tensor([[o["scores"][k] for k in LABELS] for o in got]), want, atol=1e-5), i
    loaded = [engine.cache.get(v)[0] for v in versions]
    assert [x.peft_type for x in loaded] == ["LORA"] * 3 + ["DORA"]  # DoRA rows never go in a mixed pass
    model = engine.cache.bases[loaded[0].base_key].model
    assert not model.peft_config[loaded[1].name].use_dora and model.peft_config[loaded[3].name].use_dora
    # the four in one window, as the batcher runs them (the DoRA one makes it one group per adapter)
    from concurrent.futures import Future

    from workers.inference.engine import Request

    for batch in ([Request(v, TEXTS, Future()) for v in versions], [Request(v, TEXTS, Future()) for v in versions[:3]]):
        engine._run(batch)  # the second: one forward pass with per-row adapter_names
        for i, request in enumerate(batch):
            got = torch.tensor([[o["scores"][k] for k in LABELS] for o in request.future.result(0)])
            assert torch.allclose(got, peft_scores(folders[i]), atol=1e-5), i
