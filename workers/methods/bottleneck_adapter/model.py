"""The bottleneck adapters' modules, placements, build, save and load (see __init__ for the maths)."""

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
    module_replace,
    native_read,
    native_save,
    weights_copy,
)
from workers.methods.registry import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
# sequential adapters go after these output projections, per architecture
SEQUENTIAL: dict[str, dict[str, tuple[str, ...]]] = {
    "houlsby": {"bert": ("attention.output.dense", "output.dense"), "llama": ("self_attn.o_proj", "mlp.down_proj")},
    "pfeiffer": {"bert": ("output.dense",), "llama": ("mlp.down_proj",)},
}


class Bottleneck(nn.Module):
    """W_up f(W_down h); W_up starts at zero."""

    def __init__(self, dim: int, config: dict[str, Any], like: torch.Tensor):
        super().__init__()
        size = max(1, dim // config["reduction_factor"])
        self.down = nn.Linear(dim, size, device=like.device, dtype=like.dtype)
        self.act = ACTIVATIONS[config["non_linearity"]]()
        self.up = nn.Linear(size, dim, device=like.device, dtype=like.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class InvertibleAdapter(nn.Module):
    """MAD-X's invertible adapter, a NICE additive coupling on the hidden size d = 2h:
    forward [e1, e2] -> [o1, o2] = [e1 + F(e2), e2 + G(o1)]; inverse: e2 = o2 - G(o1), e1 = o1 - F(e2)."""

    def __init__(self, dim: int, config: dict[str, Any], like: torch.Tensor):
        super().__init__()
        if dim % 2:
            raise ConfigError(f"method_config.invertible: the hidden size {dim} is odd; the coupling splits it in "
                              "halves", "method_config.invertible")
        half = {"reduction_factor": config["invertible_reduction_factor"], "non_linearity": config["non_linearity"]}
        self.f = Bottleneck(dim // 2, half, like)
        self.g = Bottleneck(dim // 2, half, like)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        e1, e2 = e.chunk(2, dim=-1)
        o1 = e1 + self.f(e2)
        return torch.cat([o1, e2 + self.g(o1)], dim=-1)

    def inverse(self, o: torch.Tensor) -> torch.Tensor:
        o1, o2 = o.chunk(2, dim=-1)
        e2 = o2 - self.g(o1)
        return torch.cat([o1 - self.f(e2), e2], dim=-1)


class SequentialAdapter(nn.Module):
    """h = linear(x); h + adapter(h)."""

    def __init__(self, linear: nn.Linear, config: dict[str, Any]):
        super().__init__()
        self.linear = linear
        self.adapter = Bottleneck(linear.out_features, config, linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h + self.adapter(h)


class ParallelMlp(nn.Module):
    """Llama: mlp(x) + s * adapter(x)."""

    def __init__(self, mlp: nn.Module, dim: int, config: dict[str, Any], like: torch.Tensor):
        super().__init__()
        self.mlp, self.scaling = mlp, config["scaling"]
        self.adapter = Bottleneck(dim, config, like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.scaling * self.adapter(x)


class ParallelBertOutput(nn.Module):
    """BERT's FFN output is LayerNorm(dense(h) + x); adding s * adapter(x) to the residual x is the same as adding it
    to the FFN's output."""

    def __init__(self, output: nn.Module, dim: int, config: dict[str, Any], like: torch.Tensor):
        super().__init__()
        self.output, self.scaling = output, config["scaling"]
        self.adapter = Bottleneck(dim, config, like)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.output(hidden_states, input_tensor + self.scaling * self.adapter(input_tensor))


def _insert(base: Any, kind: str, config: dict[str, Any]) -> None:
    like = next(base.parameters())
    dim = base.config.hidden_size
    block: Any
    for block in blocks(base):
        arch = architecture(block)
        if kind == "parallel" and arch == "bert":
            module_replace(block, "output", ParallelBertOutput(block.output, dim, config, like))
        elif kind == "parallel":
            module_replace(block, "mlp", ParallelMlp(block.mlp, dim, config, like))
        else:
            for path in SEQUENTIAL[kind][arch]:
                linear: Any = block.get_submodule(path)
                module_replace(block, path, SequentialAdapter(linear, config))


def _invertible_insert(base: Any, config: dict[str, Any], task: str) -> None:
    """The coupling as base.invertible_adapter (so its weights save under that name), run by hooks: on the
    embedding layer's output, and inverted on the input of the language-model head (sft)."""
    adapter = InvertibleAdapter(base.config.hidden_size, config, next(base.parameters()))
    base.invertible_adapter = adapter
    embeddings = getattr(base.base_model, "embeddings", None) or base.get_input_embeddings()
    embeddings.register_forward_hook(lambda module, args, output: adapter(output))
    if task == "sft":
        base.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: (adapter.inverse(args[0]), *args[1:]))


def _wrap(base: nn.Module, method: str, config: dict[str, Any], task: str) -> NativeModel:
    freeze(base)
    _insert(base, method.removeprefix("adapter_"), config)
    if config.get("invertible"):
        _invertible_insert(base, config, task)
    heads_unfreeze(base, task)
    return NativeModel(base, method=method, method_config=config, task=task)


def _build(method: str, model: nn.Module, config: dict[str, Any], task: str) -> NativeModel:
    build_start(method, task)
    return _wrap(model, method, config, task)


def build_houlsby(model: nn.Module, config: dict[str, Any], *, task: str) -> NativeModel:
    return _build("adapter_houlsby", model, config, task)


def build_pfeiffer(model: nn.Module, config: dict[str, Any], *, task: str) -> NativeModel:
    return _build("adapter_pfeiffer", model, config, task)


def build_parallel(model: nn.Module, config: dict[str, Any], *, task: str) -> NativeModel:
    return _build("adapter_parallel", model, config, task)


def save(model: NativeModel, directory: str) -> None:
    native_save(model, directory)


def load(base: nn.Module, directory: str) -> NativeModel:
    config, tensors = native_read(directory, *(f"adapter_{kind}" for kind in ("houlsby", "pfeiffer", "parallel")))
    model = _wrap(base, config["foundry_method"], config["method_config"], config["task"])
    weights_copy(model.base, tensors)
    return model.eval()
