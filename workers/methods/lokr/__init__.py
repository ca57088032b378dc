"""LoKr: Edalati et al., "KronA: Parameter Efficient Tuning with Kronecker Adapter" (arXiv:2212.10650),
as generalised by LyCORIS (Yeh et al., arXiv:2309.14859).

The update is a Kronecker product of a small matrix and a low-rank one; built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class LoKrConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="LoKr")

    r: int = Field(8, ge=1, le=256, description="Rank of the low-rank Kronecker factor.")
    alpha: int = Field(8, ge=1, le=4096, description="Scale: the update is multiplied by alpha / r.")
    rank_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the rank dimension during training.")
    module_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Probability of skipping the whole adapter "
                                  "for a step.")
    decompose_both: bool = Field(False, description="Also factor the left Kronecker matrix into a low-rank product.")
    decompose_factor: int = Field(-1, ge=-1, le=4096, description="Size of the Kronecker factorisation; -1 picks "
                                  "factors closest to a square root of each dimension.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("lokr", model, config, task=task, peft_cls=peft.LoKrConfig, r=config["r"],
                       alpha=config["alpha"], rank_dropout=config["rank_dropout"],
                       module_dropout=config["module_dropout"], decompose_both=config["decompose_both"],
                       decompose_factor=config["decompose_factor"])


method_register(Method(name="lokr", title="LoKr", paper="arXiv:2212.10650", config=LoKrConfig, build=build))
