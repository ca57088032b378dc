"""What the methods written here (not in peft) share: the module the Trainer trains, freezing, finding a base's
blocks and layers (BERT and Llama), and the save format: adapter_model.safetensors + adapter_config.json.

Imported only by the methods' own model.py files, so the web process (which only reads configs) never loads torch."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workers.methods.registry import ConfigError, method_get, method_task_check

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = 1
HEADS = ("classifier", "score")  # the sequence-classification heads of BERT and Llama (fresh, always trained)


class NativeModel(nn.Module):
    """The base model with a method's modules inside it. forward() is the base's (plus any auxiliary loss), with
    the batch's columns named so that the Trainer keeps them."""

    def __init__(self, base: nn.Module, *, method: str, method_config: dict[str, Any], task: str):
        super().__init__()
        self.base = base
        self.method = method
        self.method_config = method_config
        self.task = task

    @property
    def config(self) -> Any:
        return self.base.config

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Any:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "position_ids": position_ids, "labels": labels}
        self.before_forward()
        output = self.base(**{k: v for k, v in batch.items() if v is not None})
        aux = self.aux_loss()
        if aux is not None and output.loss is not None:
            output.loss = output.loss + aux
        return output

    def before_forward(self) -> None:
        """A method's per-forward setup (DyLoRA samples its rank); nothing by default."""

    def aux_loss(self) -> torch.Tensor | None:
        """A method's extra training loss from the last forward (MixLoRA's load balance); none by default."""
        return None

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        params = list(self.base.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def merge_and_unload(self) -> nn.Module:
        raise NotImplementedError(f"{self.method} does not merge into the base weights")


def build_start(method: str, task: str) -> None:
    method_task_check(method_get(method), task)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad = False


def heads(base: nn.Module, task: str) -> dict[str, nn.Module]:
    """The task head a job trains from scratch (classification, per row or per token); the language-model head of
    sft stays frozen."""
    if task not in ("classification", "token-classification"):
        return {}
    return {name: getattr(base, name) for name in HEADS if isinstance(getattr(base, name, None), nn.Module)}


def heads_unfreeze(base: nn.Module, task: str) -> None:
    for head in heads(base, task).values():
        for p in head.parameters():
            p.requires_grad = True


def blocks(base: nn.Module) -> nn.ModuleList:
    """The transformer layers: bert.encoder.layer on BERT, model.layers on Llama."""
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers"):
            return module
    raise ConfigError(f"{type(base).__name__}: no transformer layers found for this method", "base_model")


def architecture(block: nn.Module) -> str:
    if hasattr(block, "intermediate") and hasattr(block, "output"):
        return "bert"
    if hasattr(block, "mlp") and hasattr(block, "self_attn"):
        return "llama"
    raise ConfigError(f"{type(block).__name__}: a layer this method does not know (BERT or Llama)", "base_model")


def linears(base: nn.Module, targets: list[str] | None) -> Iterator[tuple[str, nn.Linear]]:
    """The Linear layers inside the transformer blocks, all of them or those whose name ends with a target."""
    prefix = next(name for name, module in base.named_modules() if module is blocks(base))
    for name, module in list(base.named_modules()):
        if not isinstance(module, nn.Linear) or not name.startswith(prefix + "."):
            continue
        if targets is None or any(name == t or name.endswith("." + t) for t in targets):
            yield name, module


def module_replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def native_save(model: NativeModel, directory: str, tensors: dict[str, torch.Tensor] | None = None,
                **extra: Any) -> None:
    """Write the tensors (default: the trainable parameters of the base) and the config that load() reads."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = trainable_state(model.base) if tensors is None else tensors
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / WEIGHTS_FILE),
              metadata={"format": "pt"})
    config = {"foundry_method": model.method, "format": FORMAT, "task": model.task,
              "method_config": model.method_config, "base_model_name_or_path": None, **extra}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def native_read(directory: str, *methods: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The saved config and tensors, refusing a folder another method wrote."""
    folder = Path(directory)
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("foundry_method") not in methods or config.get("format") != FORMAT:
        raise ValueError(f"{directory}: not a {' or '.join(methods)} adapter (format {FORMAT})")
    return config, load_file(str(folder / WEIGHTS_FILE))


def weights_copy(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors into the module's parameters of the same names; every name and shape must match."""
    params = dict(module.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ValueError(f"saved tensors the model does not have: {missing[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise ValueError(f"{name}: saved shape {tuple(value.shape)}, model {tuple(params[name].shape)}")
            params[name].copy_(value)
