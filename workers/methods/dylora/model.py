"""DyLoRA's layer, rank sampling, build, merge, save and load (see __init__ for the maths)."""

import math
from typing import Any

import torch
from torch import nn

from workers.methods.common import targets_check
from workers.methods.native import (
    NativeModel,
    build_start,
    freeze,
    heads_unfreeze,
    linears,
    module_replace,
    native_read,
    native_save,
    weights_copy,
)

DEFAULT_TARGETS = ["query", "value", "q_proj", "v_proj"]


class DyLoraLinear(nn.Module):
    """W x + (alpha / b) B[:, :b] A[:b] x at the current rank b."""

    def __init__(self, linear: nn.Linear, r: int, alpha: int):
        super().__init__()
        self.linear, self.alpha, self.rank = linear, alpha, r
        like = linear.weight
        self.lora_A = nn.Parameter(torch.empty(r, linear.in_features, device=like.device, dtype=like.dtype))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, r, device=like.device, dtype=like.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        b = self.rank
        return (self.alpha / b) * self.lora_B[:, :b] @ self.lora_A[:b]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.rank
        return self.linear(x) + (self.alpha / b) * (x @ self.lora_A[:b].T) @ self.lora_B[:, :b].T

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.linear.weight += self.delta()
        return self.linear


class DyLoraModel(NativeModel):
    eval_rank: int
    def layers(self) -> list[DyLoraLinear]:
        return [m for m in self.base.modules() if isinstance(m, DyLoraLinear)]

    def rank_set(self, rank: int) -> None:
        """The rank used outside training (inference, evaluation, merging)."""
        r = self.method_config["r"]
        if not 1 <= rank <= r:
            raise ValueError(f"rank must be within 1..{r}")
        self.eval_rank = rank
        for layer in self.layers():
            layer.rank = rank

    def before_forward(self) -> None:
        # one rank for the whole model per training step; the chosen rank otherwise
        rank = int(torch.randint(1, self.method_config["r"] + 1, ())) if self.training else self.eval_rank
        for layer in self.layers():
            layer.rank = rank

    def merge_and_unload(self) -> nn.Module:
        """The base with the update at the chosen rank folded into its weights (modified in place)."""
        self.rank_set(self.eval_rank)
        for name, module in list(self.base.named_modules()):
            if isinstance(module, DyLoraLinear):
                module_replace(self.base, name, module.merged())
        return self.base


def _wrap(base: nn.Module, config: dict[str, Any], task: str) -> DyLoraModel:
    targets = config["target_modules"]
    targets_check(base, targets)
    freeze(base)
    chosen = list(linears(base, targets or DEFAULT_TARGETS))
    for name, linear in chosen:
        module_replace(base, name, DyLoraLinear(linear, config["r"], config["alpha"]))
    heads_unfreeze(base, task)
    model = DyLoraModel(base, method="dylora", method_config=config, task=task)
    model.rank_set(config["r"])
    return model


def build(model: nn.Module, config: dict[str, Any], *, task: str) -> DyLoraModel:
    build_start("dylora", task)
    return _wrap(model, config, task)


def save(model: DyLoraModel, directory: str) -> None:
    native_save(model, directory)


def load(base: nn.Module, directory: str, rank: int | None = None) -> DyLoraModel:
    """Args: rank: the rank b to serve, 1..r (default r)."""
    config, tensors = native_read(directory, "dylora")
    model = _wrap(base, config["method_config"], config["task"])
    weights_copy(model.base, tensors)
    model.rank_set(rank or config["method_config"]["r"])
    return model.eval()
