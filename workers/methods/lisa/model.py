"""LISA's layer draws, build, save and load (see __init__ for the maths).

Every parameter is trainable when the job builds the model, so that the Trainer's optimizer holds them all; the
first draw happens at the first training forward, after the optimizer exists, and a frozen layer's gradient stays
None, which the optimizer skips."""

from typing import Any

import torch
from torch import nn

from workers.methods.native import NativeModel, blocks, build_start, native_read, native_save, weights_copy
from workers.methods.registry import ConfigError


class LisaModel(NativeModel):
    def __init__(self, base: nn.Module, *, config: dict[str, Any], task: str):
        super().__init__(base, method="lisa", method_config=config, task=task)
        self.active: list[int] = []
        self.touched: set[int] = set()

    def draw(self) -> None:
        """Unfreeze n_layers random transformer layers, freeze the others."""
        layers = blocks(self.base)
        self.active = sorted(torch.randperm(len(layers))[: self.method_config["n_layers"]].tolist())
        self.touched.update(self.active)
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                p.requires_grad = i in self.active

    def before_forward(self) -> None:
        if self.training and not self.active:
            self.draw()

    def changed(self) -> dict[str, torch.Tensor]:
        """Everything outside the layers, and the layers that ever trained."""
        layers = blocks(self.base)
        frozen = {id(p) for i, layer in enumerate(layers) if i not in self.touched for p in layer.parameters()}
        return {name: p.detach() for name, p in self.base.named_parameters() if id(p) not in frozen}


def build(model: nn.Module, config: dict[str, Any], *, task: str) -> LisaModel:
    build_start("lisa", task)
    count = len(blocks(model))
    if config["n_layers"] > count:
        raise ConfigError(f"method_config.n_layers: the base model has {count} layers", "method_config.n_layers")
    for p in model.parameters():
        p.requires_grad = True
    return LisaModel(model, config=config, task=task)


def after_step(model: LisaModel, step: int) -> None:
    if step % model.method_config["period"] == 0:
        model.draw()


def save(model: LisaModel, directory: str) -> None:
    native_save(model, directory, model.changed(), layers_trained=sorted(model.touched))


def load(base: nn.Module, directory: str) -> nn.Module:
    _, tensors = native_read(directory, "lisa")
    weights_copy(base, tensors)
    return base.eval()
