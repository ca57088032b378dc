"""MeZO's step, build, save and load (see __init__ for the maths)."""

from typing import Any

import torch
from torch import nn

from workers.methods.native import (
    NativeModel,
    build_start,
    freeze,
    heads,
    heads_unfreeze,
    native_read,
    native_save,
    weights_copy,
)


def _lora_add(base: nn.Module, config: dict[str, Any]) -> None:
    """Rank-r LoRA (peft's layers, B = 0 so the model starts as the base) on the attention's query and value."""
    from peft import LoraConfig, inject_adapter_in_model

    r = config["lora_r"]
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0), base)


def _prepare(base: nn.Module, config: dict[str, Any], task: str) -> None:
    if config.get("trainable", "all") == "lora":
        freeze(base)
        _lora_add(base, config)  # peft leaves only its LoRA matrices trainable
        heads_unfreeze(base, task)
    else:
        for p in base.parameters():
            p.requires_grad = True  # what MeZO moves; no gradient is ever computed


def build(model: nn.Module, config: dict[str, Any], *, task: str) -> NativeModel:
    build_start("mezo", task)
    _prepare(model, config, task)
    return NativeModel(model, method="mezo", method_config=config, task=task)


def _move(params: list[nn.Parameter], seed: int, scale: float, rates: list[float] | None = None) -> None:
    """theta += scale * rate * z, with z drawn again from the seed (on the CPU, so every device draws the same z);
    rates (one per parameter, default 1) scale the move per parameter group."""
    generator = torch.Generator().manual_seed(seed)
    for i, p in enumerate(params):
        z = torch.randn(p.shape, generator=generator)
        p.add_(z.to(device=p.device, dtype=p.dtype), alpha=scale * (rates[i] if rates else 1.0))


def _rates(model: NativeModel) -> list[float]:
    """Each trainable parameter's learning rate: head_lr for the task head's, lr for the others."""
    config = model.method_config
    head = {id(p) for module in heads(model.base, model.task).values() for p in module.parameters()}
    head_lr = config.get("head_lr") or config["lr"]
    return [head_lr if id(p) in head else config["lr"] for p in model.parameters() if p.requires_grad]


def training_step(model: NativeModel, inputs: dict[str, torch.Tensor], *, step: int) -> torch.Tensor:
    """One MeZO step: two forwards, one in-place update. Returns the mean of the two losses (detached).

    Args:
        model: the built model; its trainable parameters are moved in place.
        inputs: a collated batch on the model's device, with labels.
        step: the optimizer step being taken (1-based); with the config's seed it fixes z.
    """
    config = model.method_config
    params = [p for p in model.parameters() if p.requires_grad]
    seed, eps = config["seed"] + step, config["eps"]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _move(params, seed, eps)
        plus = model(**inputs).loss
        _move(params, seed, -2 * eps)
        minus = model(**inputs).loss
        _move(params, seed, eps)
        grad = float(plus - minus) / (2 * eps)
        _move(params, seed, -grad, _rates(model))
    model.train(was_training)
    return ((plus + minus) / 2).detach()


def save(model: NativeModel, directory: str) -> None:
    native_save(model, directory)


def load(base: nn.Module, directory: str) -> nn.Module:
    config, tensors = native_read(directory, "mezo")
    if config["method_config"].get("trainable", "all") == "lora":
        _lora_add(base, config["method_config"])
    weights_copy(base, tensors)
    return base.eval()
