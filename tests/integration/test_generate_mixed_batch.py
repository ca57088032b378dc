"""Generation requests for different LoRA adapters of one base, arriving in one batching window, are decoded
together (one forward pass per step, left padding, KV cache, each row through its own adapter) and answer exactly
as plain peft generating greedily one prompt at a time; streams carry each prompt's own text; seeded sampling
repeats."""

from pathlib import Path
from typing import Any

import peft
import torch

from storage import s3
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.inference.cache import AdapterCache
from workers.inference.engine import Engine, GenerateParams, GenerateRequest

PROMPTS = ["the cat sat on", "a long and winding question about the weather in the north of the country", "hi"]


def tiny() -> Any:
    entry = base_model_get("tiny-llama")
    return model_load(entry, task="sft", vocab_size=len(tokenizer_load(entry)))


def folder_for(path: Path, seed: int, r: int) -> Path:
    torch.manual_seed(seed)
    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=r, lora_alpha=2 * r, init_lora_weights=False,
                             target_modules=["q_proj", "v_proj", "up_proj"])
    model = peft.get_peft_model(tiny(), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # each adapter steers greedy decoding its own way
    model.save_pretrained(path)
    return path


def version_for(folder: Path, prefix: str) -> dict[str, Any]:
    files = [{"name": n, "size": (folder / n).stat().st_size, "sha256": s3.put_file(prefix + n, folder / n)}
             for n in ("adapter_config.json", "adapter_model.safetensors")]
    metadata = {"task": "sft", "labels": [], "base_model": {"id": "tiny-llama"}}
    return {"prefix": prefix, "files": files, "metadata": metadata}


def peft_greedy(folder: Path, prompt: str, max_tokens: int) -> str:
    tokenizer = tokenizer_load(base_model_get("tiny-llama"))
    model = peft.PeftModel.from_pretrained(tiny(), folder).eval()
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                             eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)[0]
    return tokenizer.decode(out[len(ids):], skip_special_tokens=True)


def collect(request: GenerateRequest) -> tuple[list[str], list[dict[str, Any]]]:
    texts, finals = [""] * len(request.prompts), [{}] * len(request.prompts)
    while (event := request.events.get(timeout=5)) is not None:
        assert "error" not in event, event
        if "delta" in event:
            assert not finals[event["index"]]  # no text after a prompt's finish event
            texts[event["index"]] += event["delta"]
        else:
            finals[event["index"]] = event
    return texts, finals


def test_mixed_adapters_decode_together_like_peft_one_at_a_time(bucket: None, tmp_path: Path) -> None:
    folders = [folder_for(tmp_path / f"a{i}", seed=i, r=r) for i, r in enumerate((4, 8, 2))]
    versions = [version_for(folder, f"tests/generate-mixed/{tmp_path.name}/{i}/") for i, folder in enumerate(folders)]
    engine = Engine(AdapterCache(max_adapters=8, max_bytes=2**30), window_ms=0)
    requests = [GenerateRequest(versions[i], PROMPTS[i:] + PROMPTS[:i], GenerateParams(max_tokens=6 + 3 * i,
                                                                                       temperature=0))
                for i in range(3)]
    engine._generate_all(requests)  # as the batcher thread does with one window's requests
    assert engine.batch_sizes[-1] == 9  # every prompt of the three adapters in one decode batch
    answers = []
    for i, request in enumerate(requests):
        texts, finals = collect(request)
        for prompt, text, final in zip(request.prompts, texts, finals, strict=True):
            assert text == peft_greedy(folders[i], prompt, 6 + 3 * i), (i, prompt)
            assert final["completion_tokens"] == 6 + 3 * i and final["finish_reason"] == "length"
            answers.append(text)
    assert len(set(answers)) > 3  # the adapters (and prompts) really answer differently


def test_stop_strings_and_seeded_sampling_in_a_mixed_batch(bucket: None, tmp_path: Path) -> None:
    folders = [folder_for(tmp_path / f"b{i}", seed=10 + i, r=4) for i in range(2)]
    versions = [version_for(folder, f"tests/generate-mixed/{tmp_path.name}/{i}/") for i, folder in enumerate(folders)]
    engine = Engine(AdapterCache(max_adapters=8, max_bytes=2**30), window_ms=0)
    full = peft_greedy(folders[0], PROMPTS[0], 12)
    stop = full.split()[2]  # a word that greedy decoding reaches
    sampled = GenerateParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    requests = [GenerateRequest(versions[0], [PROMPTS[0]], GenerateParams(max_tokens=12, temperature=0, stop=(stop,))),
                GenerateRequest(versions[1], PROMPTS[:2], sampled), GenerateRequest(versions[1], PROMPTS[:2], sampled)]
    engine._generate_all(requests)
    (text,), (final,) = collect(requests[0])
    assert text == full[:full.index(stop)] and final["finish_reason"] == "stop"
    first, second = collect(requests[1])[0], collect(requests[2])[0]
    assert first == second and first[0] != first[1]
