"""MixLoRA's mixture block, build, save and load (see __init__ for the maths)."""

import math
from typing import Any

import torch
from torch import nn

from workers.methods.native import (
    NativeModel,
    architecture,
    blocks,
    build_start,
    freeze,
    heads_unfreeze,
    native_read,
    native_save,
    weights_copy,
)


class MixLoraFfn(nn.Module):
    """A feed-forward block as a top-k mixture of LoRA experts over its frozen linear layers.

    Args:
        linears: the FFN's frozen layers: up, down (BERT) or gate, up, down (Llama).
        act: the FFN's activation.
    """

    def __init__(self, linears: dict[str, nn.Linear], act: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.linears, self.act = nn.ModuleDict(linears), act
        self.top_k, self.scale = config["top_k"], config["alpha"] / config["r"]
        self.out_features = linears["down"].out_features
        experts, r = config["num_experts"], config["r"]
        like = linears["up"].weight
        self.router = nn.Linear(linears["up"].in_features, experts, bias=False, device=like.device, dtype=like.dtype)
        self.lora_A = nn.ParameterDict({name: nn.Parameter(torch.empty(experts, r, layer.in_features,
                                                                       device=like.device, dtype=like.dtype))
                                        for name, layer in linears.items()})
        self.lora_B = nn.ParameterDict({name: nn.Parameter(torch.zeros(experts, layer.out_features, r,
                                                                       device=like.device, dtype=like.dtype))
                                        for name, layer in linears.items()})
        for a in self.lora_A.values():
            for e in range(experts):
                nn.init.kaiming_uniform_(a[e], a=math.sqrt(5))
        self.balance = torch.zeros(())

    def _linear(self, name: str, x: torch.Tensor, e: int) -> torch.Tensor:
        return self.linears[name](x) + self.scale * (x @ self.lora_A[name][e].T) @ self.lora_B[name][e].T

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        if "gate" in self.linears:
            hidden = self.act(self._linear("gate", x, e)) * self._linear("up", x, e)
        else:
            hidden = self.act(self._linear("up", x, e))
        return self._linear("down", hidden, e)

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities (T x E), the chosen experts (T x k) and their renormalised weights (T x k)."""
        probs = torch.softmax(self.router(flat), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        return probs, chosen, weights / weights.sum(-1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs, chosen, weights = self.route(flat)
        out = flat.new_zeros(flat.shape[0], self.out_features)
        for e in range(probs.shape[-1]):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, weights[rows, slot, None] * self.expert(flat[rows], e))
        experts = probs.shape[-1]
        routed = torch.nn.functional.one_hot(chosen, experts).sum((0, 1)).to(probs.dtype) / chosen.numel()
        self.balance = experts * (routed * probs.mean(0)).sum()
        return out.reshape(*x.shape[:-1], -1)


class MixLoraModel(NativeModel):
    def aux_loss(self) -> torch.Tensor | None:
        if not self.training:
            return None
        layers = [m for m in self.base.modules() if isinstance(m, MixLoraFfn)]
        return self.method_config["aux_loss_coef"] * sum((m.balance for m in layers), torch.zeros(()))


def _insert(block: Any, config: dict[str, Any]) -> None:
    if architecture(block) == "bert":
        # the mixture replaces intermediate (up + act) and output.dense (down); BertOutput keeps dropout, residual, norm
        linears = {"up": block.intermediate.dense, "down": block.output.dense}
        block.intermediate = MixLoraFfn(linears, block.intermediate.intermediate_act_fn, config)
        block.output.dense = nn.Identity()
    else:
        mlp = block.mlp
        block.mlp = MixLoraFfn({"gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj}, mlp.act_fn, config)


def _wrap(base: nn.Module, config: dict[str, Any], task: str) -> MixLoraModel:
    freeze(base)
    for block in blocks(base):
        _insert(block, config)
    heads_unfreeze(base, task)
    return MixLoraModel(base, method="mixlora", method_config=config, task=task)


def build(model: nn.Module, config: dict[str, Any], *, task: str) -> MixLoraModel:
    build_start("mixlora", task)
    return _wrap(model, config, task)


def save(model: MixLoraModel, directory: str) -> None:
    native_save(model, directory)


def load(base: nn.Module, directory: str) -> MixLoraModel:
    config, tensors = native_read(directory, "mixlora")
    model = _wrap(base, config["method_config"], config["task"])
    weights_copy(model.base, tensors)
    return model.eval()
