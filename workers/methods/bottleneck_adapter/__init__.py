"""Bottleneck adapters, three placements of the same small module, adapter(h) = W_up f(W_down h):

- adapter_houlsby: Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019 (arXiv:1902.00751).
  Sequential, after the attention output projection and after the feed-forward output projection of every layer:
  h <- h + adapter(h), before the layer's residual sum (and LayerNorm on BERT).
- adapter_pfeiffer: Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for Transfer Learning",
  EACL 2021 (arXiv:2005.00247). The same, after the feed-forward block only (half the adapters).
- adapter_parallel: Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition",
  NeurIPS 2022 (arXiv:2205.13535); He et al. (arXiv:2110.04366) for language models. Parallel to the feed-forward
  block and scaled: FFN(x) + s * adapter(x), with x the block's input.

W_down: d -> d / reduction_factor, W_up back to d, f a non-linearity. W_up starts at zero, so training starts
exactly at the base model. The base is frozen; the adapters and the classification head train. Adapters stay
separate modules (they do not merge). Written here: peft has no bottleneck adapters.

Optional invertible adapter (`invertible: true`, any placement): Pfeiffer et al., "MAD-X: An Adapter-Based
Framework for Multi-Task Cross-Lingual Transfer", EMNLP 2020 (arXiv:2005.00052), section 2.3. On the embedding
layer's output e = [e1, e2] (the two halves of the hidden size), a NICE additive coupling (Dinh et al.,
arXiv:1410.8516):
    o1 = e1 + F(e2),    o2 = e2 + G(o1),
with F and G bottlenecks of the same form (W_up f(W_down x), width d/2 -> d/2/invertible_reduction_factor ->
d/2). Its exact inverse, e2 = o2 - G(o1), e1 = o1 - F(e2), is applied to the last hidden states before the
language-model head for sft (the head is tied to the embeddings: what the input side learns, the output side
undoes); the classification heads read the encoder's states directly. F and G start at zero (the identity)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.registry import Method, lazy, method_register

MODEL = "workers.methods.bottleneck_adapter.model"
LOADING = ("Not a peft folder. adapter_model.safetensors holds the adapters' down/up weights under the base model's "
           "layer names (and the classification head); adapter_config.json holds the method and its config. Load "
           "with workers.methods.bottleneck_adapter.model.load(base_model, directory): it inserts the adapters into "
           "the base model at the same places and copies the weights.")


class AdapterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Bottleneck adapter")

    reduction_factor: int = Field(16, ge=1, le=1024, description="Hidden size / bottleneck size; the bottleneck "
                                  "has at least one unit.")
    non_linearity: Literal["relu", "gelu", "silu"] = Field("relu", description="Activation inside the bottleneck.")
    invertible: bool = Field(False, description="Add MAD-X's invertible adapter (a NICE coupling) on the embedding "
                             "output, and its inverse before the language-model head (sft).")
    invertible_reduction_factor: int = Field(2, ge=1, le=1024, description="Half the hidden size / the bottleneck "
                                             "size of the invertible adapter's two coupling functions.")


class HoulsbyConfig(AdapterConfig):
    model_config = ConfigDict(extra="forbid", title="Houlsby adapter (sequential, attention and FFN)")


class PfeifferConfig(AdapterConfig):
    model_config = ConfigDict(extra="forbid", title="Pfeiffer adapter (sequential, after FFN)")


class ParallelConfig(AdapterConfig):
    model_config = ConfigDict(extra="forbid", title="Parallel adapter (AdaptFormer)")

    scaling: float = Field(0.1, gt=0.0, le=100.0, description="s in FFN(x) + s * adapter(x).")


PLACEMENTS: list[tuple[str, str, str, type[AdapterConfig]]] = [
    ("adapter_houlsby", "Bottleneck adapter, Houlsby", "arXiv:1902.00751", HoulsbyConfig),
    ("adapter_pfeiffer", "Bottleneck adapter, Pfeiffer", "arXiv:2005.00247", PfeifferConfig),
    ("adapter_parallel", "Parallel adapter (AdaptFormer)", "arXiv:2205.13535", ParallelConfig),
]
for _name, _title, _paper, _config in PLACEMENTS:
    method_register(Method(name=_name, title=_title, paper=_paper, config=_config,
                           build=lazy(f"{MODEL}:build_{_name.removeprefix('adapter_')}"), save=lazy(f"{MODEL}:save"),
                           load=lazy(f"{MODEL}:load"), mergeable=False, peft_backed=False, loading=LOADING))
