"""The batched LoRA forward (gathered per-row A/B, two bmm per layer) answers exactly as peft's own mixed batch
(`adapter_names`, its per-adapter loop): ranks and alphas that differ, rsLoRA, an adapter that adapts only some
layers, base rows, one adapter for every row, rows dropped half-way (generation), and a DoRA adapter that keeps
peft's path."""

from typing import Any

import peft
import pytest
import torch

from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.inference.batched_lora import LoraRows, batched_lora, lora_layers

LABELS = ["neg", "pos", "mixed"]
TEXTS = ["great movie number 7", "awful", "an ordinary sentence about nothing", "fine", "so so", "x y z w v"]
ADAPTERS: dict[str, dict[str, Any]] = {
    "r4": {"r": 4, "lora_alpha": 12, "target_modules": ["query", "value", "dense"]},
    "r8rs": {"r": 8, "lora_alpha": 8, "use_rslora": True, "target_modules": ["query", "value", "dense"]},
    "r2q": {"r": 2, "lora_alpha": 5, "target_modules": ["query"]},  # adapts fewer layers than the others
    "dora": {"r": 4, "lora_alpha": 4, "use_dora": True, "target_modules": ["query", "value", "dense"]},
}


def _model(names: list[str]) -> Any:
    entry = base_model_get("tiny-bert")
    base = model_load(entry, task="classification", vocab_size=len(tokenizer_load(entry)), labels=LABELS)
    model = None
    for i, name in enumerate(names):
        torch.manual_seed(i)
        config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, init_lora_weights=False, **ADAPTERS[name])
        if model is None:
            model = peft.get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    assert model is not None
    with torch.no_grad():
        for layer in lora_layers(model):
            for name in layer.lora_B:
                layer.lora_B[name].weight.normal_()  # deltas large enough to tell adapters apart
        for name in names:
            for p in model.base_model.model.classifier.modules_to_save[name].parameters():
                p.normal_()
    return model.eval()


def _encoded() -> Any:
    return tokenizer_load(base_model_get("tiny-bert"))(TEXTS, return_tensors="pt", padding=True)


@pytest.mark.parametrize("rows", [
    ["r4", "r8rs", "r2q", "__base__", "r8rs", "r4"],
    ["r8rs"] * 6,
    ["r2q", "__base__", "r2q", "__base__", "r2q", "__base__"],
])
def test_batched_forward_equals_peft_mixed_batch(rows: list[str]) -> None:
    model = _model(["r4", "r8rs", "r2q"])
    encoded = _encoded()
    with torch.no_grad():
        want = model(**encoded, adapter_names=rows).logits
        with batched_lora(model, LoraRows(rows)):
            got = model(**encoded, adapter_names=rows).logits
        after = model(**encoded, adapter_names=rows).logits
        base = model(**encoded, adapter_names=["__base__"] * len(rows)).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.equal(after, want)  # the layers are peft's own again afterwards
    adapted = [i for i, name in enumerate(rows) if name != "__base__"]
    assert (want[adapted] - base[adapted]).abs().amax(-1).min() > 1e-2  # every adapter really changes its rows


def test_batched_forward_differs_from_wrong_rows() -> None:
    model = _model(["r4", "r8rs", "r2q"])
    encoded = _encoded()
    rows = ["r4", "r8rs", "r2q", "__base__", "r8rs", "r4"]
    with torch.no_grad():
        want = model(**encoded, adapter_names=rows).logits
        swapped = [rows[1], rows[0], *rows[2:]]
        with batched_lora(model, LoraRows(swapped)):
            got = model(**encoded, adapter_names=rows).logits  # peft's head takes rows, the layers swapped
    assert not torch.allclose(got[:2], want[:2], atol=1e-4)
    assert torch.allclose(got[2:], want[2:], atol=1e-5)


def test_restricted_rows_keep_their_adapters() -> None:
    model = _model(["r4", "r8rs", "r2q"])
    encoded = _encoded()
    rows = ["r4", "r8rs", "r2q", "__base__", "r8rs", "r4"]
    keep = torch.tensor([1, 2, 5])
    with torch.no_grad():
        batch = LoraRows(rows)
        with batched_lora(model, batch):
            model(**encoded, adapter_names=rows)  # gathers every layer's weights for all six rows
            batch.restrict(keep)
            names = [rows[i] for i in keep.tolist()]
            got = model(**{k: v[keep] for k, v in encoded.items()}, adapter_names=names).logits
        want = model(**{k: v[keep] for k, v in encoded.items()}, adapter_names=names).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_dora_layers_keep_peft_path() -> None:
    model = _model(["r4", "dora"])
    encoded = _encoded()
    rows = ["r4", "r4", "r4", "r4", "r4", "r4"]
    with torch.no_grad():
        want = model(**encoded, adapter_names=rows).logits
        with batched_lora(model, LoraRows(rows)):
            got = model(**encoded, adapter_names=rows).logits
        model.set_adapter("dora")
        want_dora = model(**encoded).logits
        with batched_lora(model, LoraRows(["dora"] * 6)):
            got_dora = model(**encoded).logits  # peft refuses adapter_names for DoRA: its forward, set adapter
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_dora, want_dora, atol=1e-5)


def test_lora_layers_are_every_lora_linear() -> None:
    from peft.tuners.lora.layer import Linear as LoraLinear

    model = _model(["r4", "r2q"])
    every = {id(m) for m in model.modules() if type(m) is LoraLinear}
    assert {id(m) for m in lora_layers(model)} == every and len(every) > 2
