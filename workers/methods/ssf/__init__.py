"""SSF: Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning", NeurIPS 2022
(arXiv:2210.08823).

After each adapted linear layer y = Wx + b, a learned per-feature scale and shift:

    y' = gamma * y + beta = (diag(gamma) W) x + (gamma * b + beta)

so the trained model merges into the frozen weights, W' = diag(gamma) W and b' = gamma * b + beta, with no cost at
inference. gamma starts near 1 and beta near 0 (N(1, 0.02) and N(0, 0.02), as in the paper). The classification
head is trained as well. Written here: no maintained library has it."""

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.registry import Method, lazy, method_register

LOADING = ("Not a peft folder. adapter_model.safetensors holds, for every adapted linear layer <name>, the vectors "
           "<name>.ssf_scale and <name>.ssf_shift (and the classification head); adapter_config.json holds the "
           "method config. Load with workers.methods.ssf.model.load(base_model, directory), or merge by hand: "
           "weight = scale[:, None] * weight, bias = scale * bias + shift (bias = shift when the layer has none).")


class SsfConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="SSF")

    target_modules: list[str] | None = Field(None, min_length=1, max_length=64, description=(
        "Linear layers (name suffixes) to scale and shift, e.g. ['query', 'value']; default: every linear layer in "
        "the transformer blocks."))
    init_std: float = Field(0.02, ge=0.0, le=1.0, description="Standard deviation of the initial scale (around 1) "
                            "and shift (around 0); 0 starts exactly at the base model.")


method_register(Method(
    name="ssf", title="SSF (scale and shift features)", paper="arXiv:2210.08823", config=SsfConfig,
    build=lazy("workers.methods.ssf.model:build"), save=lazy("workers.methods.ssf.model:save"),
    load=lazy("workers.methods.ssf.model:load"), peft_backed=False, loading=LOADING))
