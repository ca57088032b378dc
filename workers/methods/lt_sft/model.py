"""LT-SFT's phases, sparse differences, save and load (see __init__ for the maths).

The phase and the masks are buffers, so a Trainer checkpoint holds them and a resumed job keeps its selection;
theta_0 is the base itself, kept as a copy when the job builds."""

from typing import Any

import torch
from torch import nn

from workers.methods.native import NativeModel, build_start, heads, native_read, native_save, weights_copy
from workers.methods.registry import ConfigError

Diff = dict[str, tuple[torch.Tensor, torch.Tensor]]  # parameter name -> (flat indices, values)


class LtSftModel(NativeModel):
    """The base, all of it trainable; `names` are the body's parameters that the sparse difference covers."""

    sparse_phase: torch.Tensor

    def __init__(self, base: nn.Module, *, config: dict[str, Any], task: str, switch_step: int):
        super().__init__(base, method="lt_sft", method_config=config, task=task)
        head_params = {id(p) for head in heads(base, task).values() for p in head.parameters()}
        params = dict(base.named_parameters())
        self.names = [name for name, p in params.items() if id(p) not in head_params]
        self.k = max(1, round(config["density"] * sum(params[n].numel() for n in self.names)))
        self.switch_step = switch_step
        self.register_buffer("sparse_phase", torch.zeros((), dtype=torch.bool))
        self.masks, self.theta0 = nn.Module(), nn.Module()  # theta_0 is rebuilt from the base, never saved
        for i, name in enumerate(self.names):
            self.masks.register_buffer(f"m{i}", torch.ones_like(params[name], dtype=torch.bool))
            self.theta0.register_buffer(f"t{i}", params[name].detach().clone(), persistent=False)
            params[name].register_hook(lambda grad, i=i: grad * self.mask(i) if self.sparse_phase else grad)

    @property
    def phase_start(self) -> int | None:
        """The step the sparse phase began at, once it has: the engine then clears the optimizer's moments and
        starts the learning-rate schedule again (the paper trains each phase as its own run)."""
        return self.switch_step if bool(self.sparse_phase) else None

    def mask(self, i: int) -> torch.Tensor:
        return getattr(self.masks, f"m{i}")

    def initial(self, i: int) -> torch.Tensor:
        return getattr(self.theta0, f"t{i}")

    def params(self) -> list[nn.Parameter]:
        named = dict(self.base.named_parameters())
        return [named[name] for name in self.names]

    def select(self) -> None:
        """Keep the k most-changed entries, reset everything to theta_0, start the sparse phase."""
        changes = torch.cat([(p.detach() - self.initial(i)).abs().flatten() for i, p in enumerate(self.params())])
        keep = torch.zeros_like(changes, dtype=torch.bool)
        keep[torch.topk(changes, self.k).indices] = True
        start = 0
        with torch.no_grad():
            for i, p in enumerate(self.params()):
                self.mask(i).copy_(keep[start : start + p.numel()].view_as(p))
                start += p.numel()
                p.copy_(self.initial(i))
        self.sparse_phase.fill_(True)

    def project(self) -> None:
        """Put every entry outside the kept ones back to theta_0."""
        with torch.no_grad():
            for i, p in enumerate(self.params()):
                p.copy_(torch.where(self.mask(i), p, self.initial(i)))

    def diff(self) -> Diff:
        out: Diff = {}
        for i, (name, p) in enumerate(zip(self.names, self.params(), strict=True)):
            indices = self.mask(i).flatten().nonzero().squeeze(1)
            if indices.numel():
                out[name] = (indices, (p.detach() - self.initial(i)).flatten()[indices])
        return out

    def merge_and_unload(self) -> nn.Module:
        """The weights already are theta_0 + phi: the base, without the masking hooks' effect."""
        self.sparse_phase.fill_(False)
        return self.base


def build(model: nn.Module, config: dict[str, Any], *, task: str, total_step: int | None = None) -> LtSftModel:
    """Args: total_step: the job's optimizer steps; the full phase is the first full_phase of them."""
    build_start("lt_sft", task)
    if not total_step or total_step < 2:
        raise ConfigError("method_config: LT-SFT needs the job's total number of steps (at least 2)", "method_config")
    for p in model.parameters():
        p.requires_grad = True
    switch = min(total_step - 1, max(1, round(config["full_phase"] * total_step)))
    return LtSftModel(model, config=config, task=task, switch_step=switch)


def after_step(model: LtSftModel, step: int) -> None:
    if not model.sparse_phase and step >= model.switch_step:
        model.select()
    elif model.sparse_phase:
        model.project()


def save(model: LtSftModel, directory: str) -> None:
    """The sparse difference (selected now if the job stopped in the full phase) and the head, whole."""
    if not model.sparse_phase:
        model.select()
    tensors = {}
    for name, (indices, values) in model.diff().items():
        tensors[f"sparse/{name}/indices"], tensors[f"sparse/{name}/values"] = indices, values
    for prefix, head in heads(model.base, model.task).items():
        tensors.update({f"dense/{prefix}.{n}": p for n, p in head.named_parameters()})
    native_save(model, directory, tensors, k=model.k)


def diff_read(directory: str) -> tuple[Diff, dict[str, torch.Tensor]]:
    """A saved difference: the sparse part and the dense head."""
    _, tensors = native_read(directory, "lt_sft")
    sparse: Diff = {}
    for key in tensors:
        if key.startswith("sparse/") and key.endswith("/indices"):
            name = key.removeprefix("sparse/").removesuffix("/indices")
            sparse[name] = (tensors[key], tensors[f"sparse/{name}/values"])
    dense = {k.removeprefix("dense/"): v for k, v in tensors.items() if k.startswith("dense/")}
    return sparse, dense


def diff_add(a: Diff, b: Diff) -> Diff:
    """phi_a + phi_b, still sparse: the union of the indices, values summed where both have one."""
    out = dict(a)
    for name, (indices, values) in b.items():
        if name in out:
            both_i, both_v = torch.cat([out[name][0], indices]), torch.cat([out[name][1], values])
            unique, inverse = torch.unique(both_i, return_inverse=True)
            out[name] = (unique, torch.zeros(len(unique), dtype=both_v.dtype).index_add_(0, inverse, both_v))
        else:
            out[name] = (indices, values)
    return out


def diff_apply(base: nn.Module, diff: Diff) -> None:
    params = dict(base.named_parameters())
    with torch.no_grad():
        for name, (indices, values) in diff.items():
            params[name].view(-1).index_add_(0, indices.to(params[name].device), values.to(params[name].dtype))


def load(base: nn.Module, *directories: str) -> nn.Module:
    """The base with one or more differences added into its weights (the last head given is used)."""
    total: Diff = {}
    for directory in directories:
        sparse, dense = diff_read(directory)
        total = diff_add(total, sparse)
        weights_copy(base, dense)
    diff_apply(base, total)
    return base.eval()
