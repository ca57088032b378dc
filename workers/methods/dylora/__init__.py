"""DyLoRA: Valipour et al., "DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free
Low-Rank Adaptation", EACL 2023 (arXiv:2210.07558).

LoRA, W x + (alpha / b) B[:, :b] A[:b, :] x, trained so that every rank b <= r works: each training step samples
b uniformly from 1..r (one b for the whole model) and uses only the first b rows of A and columns of B (all of them
train: the paper's non-frozen variant). Nested ranks, so one training serves every rank up to r; the rank is
chosen at load time, and the model at rank b is exactly LoRA with the truncated factors. Merges into the base at
the chosen rank. Written here: peft has no DyLoRA."""

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.registry import Method, lazy, method_register

MODEL = "workers.methods.dylora.model"
LOADING = ("Not a peft folder (but convertible to one at any rank b <= r). adapter_model.safetensors holds, for each "
           "adapted linear layer <name>, <name>.lora_A (r x in) and <name>.lora_B (out x r) (and the classification "
           "head); adapter_config.json holds r and alpha. Load with workers.methods.dylora.model.load(base_model, "
           "directory, rank=b): the layer adds (alpha / b) * B[:, :b] @ A[:b] to W; rank defaults to r.")


class DyLoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="DyLoRA")

    r: int = Field(8, ge=1, le=256, description="Largest rank; any rank from 1 to r can be chosen at load time.")
    alpha: int = Field(16, ge=1, le=4096, description="Scale: at rank b the update is multiplied by alpha / b.")
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64, description=(
        "Linear layers (name suffixes) to adapt, e.g. ['query', 'value'] on BERT or ['q_proj', 'v_proj'] on Llama; "
        "default: the attention query and value projections."))


method_register(Method(name="dylora", title="DyLoRA", paper="arXiv:2210.07558", config=DyLoraConfig,
                       build=lazy(f"{MODEL}:build"), save=lazy(f"{MODEL}:save"), load=lazy(f"{MODEL}:load"),
                       peft_backed=False, loading=LOADING))
