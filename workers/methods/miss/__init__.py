"""MiSS (formerly Bone): Kang and Yin, "MiSS: Balancing LoRA Performance and Efficiency with Simple Shard
Sharing" (arXiv:2409.15371).

One small trained shard is shared across the rows of each weight; built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class MissConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="MiSS (Bone)")

    r: int = Field(64, ge=1, le=1024, description="Shard size; must divide the target layers' dimensions "
                   "(e.g. 64 for a 384-wide model, 8 for the 32-wide test models).")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the MiSS branch input.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("miss", model, config, task=task, param="method_config.r",
                       peft_cls=peft.MissConfig, r=config["r"],
                       miss_dropout=config["dropout"])


method_register(Method(name="miss", title="MiSS (Bone)", paper="arXiv:2409.15371", config=MissConfig, build=build))
