"""LISA: Pan et al., "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model Fine-Tuning",
NeurIPS 2024 (arXiv:2403.17919).

Full-parameter training, a few layers at a time: everything outside the transformer layers (embeddings, final norm,
head) always trains; of the L transformer layers, n_layers are drawn uniformly without replacement every `period`
optimizer steps and only those train, the others are frozen. In expectation every layer is updated, while the
gradients and optimizer state of a step cover n_layers / L of the body. Written here: no maintained library has it
(LMFlow carries a trainer callback, not a library)."""

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.registry import Method, lazy, method_register

MODEL = "workers.methods.lisa.model"
LOADING = ("Not a peft folder: full weights. adapter_model.safetensors holds, under the base model's own parameter "
           "names, every tensor the job changed (embeddings, final norm, head, and every layer that was ever "
           "unfrozen); adapter_config.json holds the method config. Load with "
           "workers.methods.lisa.model.load(base_model, directory), or base_model.load_state_dict(tensors, "
           "strict=False).")


class LisaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="LISA (layer-wise importance sampling)")

    n_layers: int = Field(2, ge=1, le=256, description="Transformer layers unfrozen at a time (at most the model's).")
    period: int = Field(20, ge=1, le=100_000, description="Optimizer steps between two draws of the unfrozen layers.")


method_register(Method(name="lisa", title="LISA (layer-wise importance sampling)", paper="arXiv:2403.17919",
                       config=LisaConfig, build=lazy(f"{MODEL}:build"), after_step=lazy(f"{MODEL}:after_step"),
                       save=lazy(f"{MODEL}:save"), load=lazy(f"{MODEL}:load"), mergeable=False, peft_backed=False,
                       loading=LOADING))
