"""MeZO's step, build, save and load (see __init__ for the maths)."""

from typing import Any

import torch
from torch import nn

from workers.methods.native import NativeModel, build_start, native_read, native_save, weights_copy


def build(model: nn.Module, config: dict[str, Any], *, task: str) -> NativeModel:
    build_start("mezo", task)
    for p in model.parameters():
        p.requires_grad = True  # what MeZO moves; no gradient is ever computed
    return NativeModel(model, method="mezo", method_config=config, task=task)


def _move(params: list[nn.Parameter], seed: int, scale: float) -> None:
    """theta += scale * z, with z drawn again from the seed (on the CPU, so every device draws the same z)."""
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        z = torch.randn(p.shape, generator=generator)
        p.add_(z.to(device=p.device, dtype=p.dtype), alpha=scale)


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
        _move(params, seed, -config["lr"] * grad)
    model.train(was_training)
    return ((plus + minus) / 2).detach()


def save(model: NativeModel, directory: str) -> None:
    native_save(model, directory)


def load(base: nn.Module, directory: str) -> nn.Module:
    _, tensors = native_read(directory, "mezo")
    weights_copy(base, tensors)
    return base.eval()
