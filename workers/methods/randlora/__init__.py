"""RandLoRA: Albert et al., "RandLoRA: Full-rank parameter-efficient fine-tuning of large models", ICLR 2025
(arXiv:2502.00987).

A sum of frozen random low-rank bases with trained diagonal scalings reaches full rank; built with peft.
The random bases are saved with the adapter."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class RandLoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="RandLoRA")

    r: int = Field(32, ge=1, le=1024, description="Rank of each random basis; the number of bases is the smaller "
                   "layer dimension divided by r, so a smaller r trains more parameters.")
    alpha: int = Field(640, ge=1, le=100000, description="Scale of the update (peft suggests 20 x r).")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the RandLoRA branch input.")
    sparse: bool = Field(False, description="Sparse ternary random bases (faster, about as accurate).")
    projection_prng_key: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the random bases.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("randlora", model, config, task=task, peft_cls=peft.RandLoraConfig, r=config["r"],
                       randlora_alpha=config["alpha"], randlora_dropout=config["dropout"], sparse=config["sparse"],
                       projection_prng_key=config["projection_prng_key"], save_projection=True)


method_register(Method(name="randlora", title="RandLoRA", paper="arXiv:2502.00987", config=RandLoraConfig,
                       build=build))
