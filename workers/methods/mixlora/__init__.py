"""MixLoRA: Li et al., "MixLoRA: Enhancing Large Language Models Fine-Tuning with LoRA-based Mixture of Experts",
2024 (arXiv:2404.15159).

Each transformer layer's feed-forward block becomes a mixture of E experts that share the frozen FFN weights and
differ by their own LoRA on each FFN linear layer (W + (alpha / r) B_e A_e). A router (a linear layer, trained)
gives p(x) = softmax(W_r x); each token goes to its top_k experts, weighted by their renormalised probabilities:

    FFN'(x) = sum_{e in topk(p(x))} p_e(x) / sum_{j in topk} p_j(x) * FFN_e(x)

Load balance (Switch Transformer form, over the T tokens of the batch, padding included): with
f_e = (tokens routed to e) / (T * top_k) and P_e = mean_x p_e(x), the loss aux_loss_coef * E * sum_e f_e P_e
(= aux_loss_coef when balanced) is added to the training loss, summed over layers. The B's start at zero, so
training starts at the base model. Written here: no maintained library has it."""

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from workers.methods.registry import Method, lazy, method_register

MODEL = "workers.methods.mixlora.model"
LOADING = ("Not a peft folder. adapter_model.safetensors holds, per transformer layer, the router weight and each "
           "FFN linear layer's expert LoRA factors (lora_A: E x r x in, lora_B: E x out x r), and the "
           "classification head; adapter_config.json holds the method config. Load with "
           "workers.methods.mixlora.model.load(base_model, directory): it rebuilds the mixture around the base's "
           "feed-forward weights.")


class MixLoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="MixLoRA (mixture of LoRA experts)")

    num_experts: int = Field(8, ge=2, le=64, description="LoRA experts per feed-forward block.")
    top_k: int = Field(2, ge=1, le=64, description="Experts each token is routed to (at most num_experts).")
    r: int = Field(8, ge=1, le=256, description="Rank of each expert's LoRA.")
    alpha: int = Field(16, ge=1, le=4096, description="Scale: each expert's update is multiplied by alpha / r.")
    aux_loss_coef: float = Field(0.01, ge=0.0, le=10.0, description="Weight of the router's load-balancing loss.")

    @field_validator("top_k")
    @classmethod
    def _top_k_fits(cls, top_k: int, info: ValidationInfo) -> int:
        if top_k > info.data.get("num_experts", top_k):
            raise ValueError("must not exceed num_experts")
        return top_k


method_register(Method(name="mixlora", title="MixLoRA (mixture of LoRA experts)", paper="arXiv:2404.15159",
                       config=MixLoraConfig, build=lazy(f"{MODEL}:build"), save=lazy(f"{MODEL}:save"),
                       load=lazy(f"{MODEL}:load"), mergeable=False, peft_backed=False, loading=LOADING))
