"""SSF's layer, build, merge, save and load (see __init__ for the maths)."""

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


class SsfLinear(nn.Module):
    """y = scale * (W x + b) + shift, W and b frozen."""

    def __init__(self, linear: nn.Linear, init_std: float):
        super().__init__()
        self.linear = linear
        out = linear.out_features
        self.ssf_scale = nn.Parameter(1 + init_std * torch.randn(out, device=linear.weight.device))
        self.ssf_shift = nn.Parameter(init_std * torch.randn(out, device=linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.ssf_scale + self.ssf_shift

    def merged(self) -> nn.Linear:
        linear = self.linear
        out = nn.Linear(linear.in_features, linear.out_features, bias=True, device=linear.weight.device,
                        dtype=linear.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.ssf_scale[:, None] * linear.weight)
            bias = linear.bias if linear.bias is not None else torch.zeros_like(self.ssf_shift)
            out.bias.copy_(self.ssf_scale * bias + self.ssf_shift)
        return out


class SsfModel(NativeModel):
    def merge_and_unload(self) -> nn.Module:
        """The base with every scale and shift folded into its linear layers (modified in place)."""
        for name, module in list(self.base.named_modules()):
            if isinstance(module, SsfLinear):
                module_replace(self.base, name, module.merged())
        return self.base


def _wrap(base: nn.Module, config: dict[str, Any], task: str) -> SsfModel:
    targets_check(base, config["target_modules"])
    freeze(base)
    for name, linear in list(linears(base, config["target_modules"])):
        module_replace(base, name, SsfLinear(linear, config["init_std"]))
    heads_unfreeze(base, task)
    return SsfModel(base, method="ssf", method_config=config, task=task)


def build(model: nn.Module, config: dict[str, Any], *, task: str) -> SsfModel:
    build_start("ssf", task)
    return _wrap(model, config, task)


def save(model: SsfModel, directory: str) -> None:
    native_save(model, directory)


def load(base: nn.Module, directory: str) -> SsfModel:
    config, tensors = native_read(directory, "ssf")
    model = _wrap(base, config["method_config"], config["task"])
    weights_copy(model.base, tensors)
    return model.eval()
