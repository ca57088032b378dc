"""AdaLoRA: Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023
(arXiv:2303.10512).

LoRA in SVD form whose rank budget is moved between layers during training, by importance; built with peft.
The budget schedule is in optimizer steps, so build() needs the job's total_step and the worker calls
after_step() after every optimizer step (peft's update_and_allocate), before gradients are zeroed."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import ConfigError, Method, method_register


class AdaLoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="AdaLoRA")

    init_r: int = Field(12, ge=1, le=256, description="Rank of every layer at the start.")
    target_r: int = Field(8, ge=1, le=256, description="Average rank per layer once the budget is pruned.")
    alpha: int = Field(8, ge=1, le=4096, description="Scale of the update.")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the AdaLoRA branch input.")
    tinit: int = Field(0, ge=0, le=1_000_000, description="Warm-up steps at full rank before pruning starts.")
    tfinal: int = Field(0, ge=0, le=1_000_000, description="Final steps at the pruned ranks (fine-tuning only).")
    delta_t: int = Field(1, ge=1, le=10_000, description="Steps between two budget re-allocations.")
    beta1: float = Field(0.85, ge=0.0, lt=1.0, description="EMA factor of the importance (sensitivity) estimate.")
    beta2: float = Field(0.85, ge=0.0, lt=1.0, description="EMA factor of the importance uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0.0, le=10.0, description="Weight of the orthogonality regulariser on "
                                   "the singular vectors.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str, total_step: int | None = None) -> Any:
    """Args: total_step: the job's optimizer steps (epochs x batches per epoch), which the schedule needs."""
    import peft

    if not total_step or total_step < 1:
        raise ConfigError("method_config: AdaLoRA needs the job's total number of steps", "method_config")
    if config["target_r"] > config["init_r"]:
        raise ConfigError("method_config.target_r: must not exceed init_r (AdaLoRA only prunes)",
                          "method_config.target_r")
    if config["tinit"] + config["tfinal"] >= total_step:
        raise ConfigError(f"method_config.tinit: tinit + tfinal must be below the job's {total_step} steps",
                          "method_config.tinit")
    return tuner_build("adalora", model, config, task=task, peft_cls=peft.AdaLoraConfig,
                       init_r=config["init_r"], target_r=config["target_r"], lora_alpha=config["alpha"],
                       lora_dropout=config["dropout"], tinit=config["tinit"], tfinal=config["tfinal"],
                       deltaT=config["delta_t"], beta1=config["beta1"], beta2=config["beta2"],
                       orth_reg_weight=config["orth_reg_weight"], total_step=total_step)


def after_step(model: Any, step: int) -> None:
    """Re-allocate the rank budget from this step's gradients (they must not be zeroed yet)."""
    model.base_model.update_and_allocate(step)


method_register(Method(name="adalora", title="AdaLoRA", paper="arXiv:2303.10512", config=AdaLoraConfig, build=build,
                       after_step=after_step, needs_total_step=True))
