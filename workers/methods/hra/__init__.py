"""HRA: Yuan et al., "Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection
Adaptation", NeurIPS 2024 (arXiv:2405.17484).

The weight is multiplied by a chain of r trained Householder reflections; built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class HRAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="HRA")

    r: int = Field(8, ge=1, le=256, description="Number of Householder reflections (an even number is "
                   "recommended: the initial reflections then cancel to the identity).")
    apply_gs: bool = Field(False, description="Orthogonalise the reflection vectors (Gram-Schmidt) at each step.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("hra", model, config, task=task, peft_cls=peft.HRAConfig, r=config["r"],
                       apply_GS=config["apply_gs"])


method_register(Method(name="hra", title="HRA", paper="arXiv:2405.17484", config=HRAConfig, build=build))
