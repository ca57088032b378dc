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
from workers.methods.registry import ConfigError


def _lora_add(base: nn.Module, config: dict[str, Any]) -> None:
    """Rank-r LoRA (peft's layers, B = 0 so the model starts as the base) on the attention's query and value."""
    from peft import LoraConfig, inject_adapter_in_model

    r = config["lora_r"]
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0), base)


class MeanPooler(nn.Module):
    """In place of BERT's pooler: the mean of the last layer over each row's real tokens. The mask comes from the
    backbone's own call (a forward pre-hook keeps it), since a pooler is handed the hidden states alone."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mask is None or self.mask.shape != hidden.shape[:2]:
            return hidden.mean(dim=1)
        mask = self.mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def mean_pooling(base: nn.Module) -> None:
    """Replace the backbone's pooler by MeanPooler (once); ConfigError where there is no pooler to replace."""
    backbone: Any = getattr(base, "base_model", None)
    if backbone is None or getattr(backbone, "pooler", None) is None:
        raise ConfigError(f"pooling=mean needs a BERT-like classifier with a pooler; {type(base).__name__} has none",
                          "method_config.pooling")
    if isinstance(backbone.pooler, MeanPooler):
        return
    pooler = MeanPooler()
    backbone.pooler = pooler

    def keep_mask(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        pooler.mask = mask if mask is not None and mask.dim() == 2 else None

    backbone.register_forward_pre_hook(keep_mask, with_kwargs=True)


SCALES = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@torch.no_grad()
def centroid_head(base: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float | None:
    """Set the classification head to the nearest-centroid rule over the batches' pooled features (forward passes
    only): W = s mu, b = -s |mu|^2 / 2, s from SCALES with the lowest loss on those rows. Returns s, or None (the
    head left as it was) where the head does not read one vector per row or has no bias."""
    head = next(iter(heads(base, "classification").values()), None)
    if not isinstance(head, nn.Linear) or head.bias is None or not batches:
        return None
    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().float()))
    was_training = base.training
    base.eval()
    labels = []
    try:
        for batch in batches:
            base(**{k: v for k, v in batch.items() if k != "labels"})
            labels.append(batch["labels"])
    finally:
        handle.remove()
        base.train(was_training)
    if not seen or any(x.dim() != 2 for x in seen):
        return None
    features, targets = torch.cat(seen), torch.cat(labels)
    mean = features.mean(dim=0)
    mu = torch.stack([features[targets == c].mean(dim=0) if bool((targets == c).any()) else mean
                      for c in range(head.out_features)])
    logits = features @ mu.T - (mu * mu).sum(dim=1) / 2
    scale = min(SCALES, key=lambda s: float(nn.functional.cross_entropy(s * logits, targets)))
    head.weight.copy_((scale * mu).to(head.weight.dtype))
    head.bias.copy_((-scale * (mu * mu).sum(dim=1) / 2).to(head.bias.dtype))
    return float(scale)


def prepare(base: nn.Module, config: dict[str, Any], *, batches: list[dict[str, torch.Tensor]], task: str) -> None:
    """Before build, classification only: the pooling, then the head's start (head_init=centroids)."""
    if task != "classification":
        return
    if config.get("pooling", "model") == "mean":
        mean_pooling(base)
    if config.get("head_init", "centroids") == "centroids":
        centroid_head(base, batches)


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
    if task == "classification" and config.get("pooling", "model") == "mean":
        mean_pooling(model)  # prepare did it already when the worker called it first
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
    if config["task"] == "classification" and config["method_config"].get("pooling", "model") == "mean":
        mean_pooling(base)
    if config["method_config"].get("trainable", "all") == "lora":
        _lora_add(base, config["method_config"])
    weights_copy(base, tensors)
    return base.eval()
