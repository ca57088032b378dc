"""Rows of different LoRA adapters in one forward pass without peft's per-adapter loop.

peft's mixed batch (`adapter_names`) runs, inside every LoRA layer, one sub-batch per adapter: an index copy of
the rows, two small matmuls and an indexed add each, so its cost grows with the number of distinct adapters. Here
each LoRA Linear gathers, once per batch, every row's own A and B (scaling folded into B, rank zero-padded to the
largest rank present; zeros for a row whose adapter does not adapt this layer, or for `"__base__"`) and adds the
delta of all rows with two batched matmuls, the second one accumulating straight into the base layer's output:

    h = bmm(x, A_rows)                  x: (rows, tokens, in), A_rows: (rows, in, r)
    out = baddbmm(base(x), h, B_rows)   B_rows: (rows, r, out), already times alpha/r (or alpha/sqrt(r), rsLoRA)

A batch of one adapter takes two plain matmuls. Dropout is off at inference. A layer that is merged, or where an
adapter of the batch is a LoRA variant (DoRA, ...) or has a LoRA bias, keeps peft's own forward, driven as the
caller drives peft (`adapter_names`, or the active adapter). Heads
(modules_to_save) stay with peft: callers still pass `adapter_names` to the PeftModel; the layers patched here
ignore it."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import ModulesToSaveWrapper

BASE = "__base__"  # peft's name for rows that take no adapter


class LoraRows:
    """The per-row adapters of one batch, and each layer's gathered weights for them (made on first use)."""

    def __init__(self, names: list[str]):
        """Args:
            names: one adapter name per row (dim 0 of every LoRA layer's input); `"__base__"` for none.
        """
        self.names = list(names)
        self.adapters = list(dict.fromkeys(self.names))
        position = {name: i for i, name in enumerate(self.adapters)}
        self.index = torch.tensor([position[n] for n in self.names], dtype=torch.long)
        self.weights: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}
        self.supported: dict[int, bool] = {}

    def restrict(self, keep: torch.Tensor) -> None:
        """Keep only the rows `keep` (indices, in order), reusing the weights gathered so far."""
        self.names = [self.names[i] for i in keep.tolist()]
        self.index = self.index[keep]
        for key, pair in self.weights.items():
            if pair is not None and pair[0].shape[0] > 1:
                self.weights[key] = (pair[0][keep], pair[1][keep])

    def gathered(self, layer: LoraLinear) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A_rows (rows|1, in, r), B_rows (rows|1, r, out) times scaling) for this layer; None: no row adapts it.
        A batch of one adapter keeps a leading dimension of 1 (one plain matmul for all rows)."""
        key = id(layer)
        if key not in self.weights:
            self.weights[key] = self._gather(layer)
        return self.weights[key]

    def _gather(self, layer: LoraLinear) -> tuple[torch.Tensor, torch.Tensor] | None:
        present = [name for name in self.adapters if name in layer.lora_A]
        if not present:
            return None
        rank = max(layer.r[name] for name in present)
        reference = layer.lora_A[present[0]].weight
        a = reference.new_zeros(len(self.adapters), layer.in_features, rank)
        b = reference.new_zeros(len(self.adapters), rank, layer.out_features)
        for i, name in enumerate(self.adapters):
            if name in layer.lora_A:
                r = layer.r[name]
                a[i, :, :r] = layer.lora_A[name].weight.T
                b[i, :r, :] = layer.lora_B[name].weight.T * layer.scaling[name]
        if len(self.adapters) == 1:
            return a, b
        return a[self.index], b[self.index]


def _supported(layer: LoraLinear, rows: LoraRows) -> bool:
    key = id(layer)
    if key not in rows.supported:
        rows.supported[key] = _plain(layer, rows)
    return rows.supported[key]


def _plain(layer: LoraLinear, rows: LoraRows) -> bool:
    return not layer.merged and all(
        name not in layer.lora_variant and getattr(layer.lora_B[name], "bias", None) is None
        for name in rows.adapters if name in layer.lora_A)


def _forward(layer: LoraLinear, rows: LoraRows, original: Any, x: torch.Tensor, *args: Any,
             **kwargs: Any) -> torch.Tensor:
    if not _supported(layer, rows):
        return original(x, *args, **kwargs)
    kwargs.pop("adapter_names", None)
    result = layer.base_layer(x, *args, **kwargs)
    pair = rows.gathered(layer)
    if pair is None:
        return result
    a, b = pair
    lora_x = x.to(a.dtype)
    if a.shape[0] == 1:  # one adapter for every row
        delta = (lora_x @ a[0]) @ b[0]
        return result + delta.to(result.dtype)
    flat = lora_x.reshape(x.shape[0], -1, x.shape[-1])  # (rows, tokens, in) whatever the input's rank
    h = torch.bmm(flat, a)
    if result.dtype == a.dtype and result.is_contiguous():
        result.view(h.shape[0], h.shape[1], -1).baddbmm_(h, b)  # accumulate into the base output: no copy
        return result
    return result + torch.bmm(h, b).reshape(result.shape).to(result.dtype)

def lora_layers(model: torch.nn.Module) -> list[LoraLinear]:
    """The model's LoRA Linears, found without walking into any adapter layer or head copy: their submodules
    (lora_A, lora_B, dropout per adapter) grow with the adapters loaded, the base model's tree does not."""
    found, stack = [], [model]
    while stack:
        for child in stack.pop()._modules.values():
            if type(child) is LoraLinear:
                found.append(child)
            elif child is not None and not isinstance(child, BaseTunerLayer | ModulesToSaveWrapper):
                stack.append(child)
    return found


@contextmanager
def batched_lora(model: torch.nn.Module, rows: LoraRows) -> Iterator[LoraRows]:
    """While inside, every LoRA Linear of `model` adds each row's own adapter (rows.names, along dim 0)."""
    layers = lora_layers(model)
    for layer in layers:
        original = layer.forward
        layer.forward = lambda x, *a, _l=layer, _o=original, **k: _forward(_l, rows, _o, x, *a, **k)
    try:
        yield rows
    finally:
        for layer in layers:
            del layer.forward
