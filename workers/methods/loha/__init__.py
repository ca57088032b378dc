"""LoHa: Hyeon-Woo et al., "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning",
ICLR 2022 (arXiv:2108.06098).

The update is the Hadamard product of two low-rank products, (B1 A1) * (B2 A2); built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class LoHaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="LoHa")

    r: int = Field(8, ge=1, le=256, description="Rank of each of the two low-rank factors.")
    alpha: int = Field(8, ge=1, le=4096, description="Scale: the update is multiplied by alpha / r.")
    rank_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the rank dimension during training.")
    module_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Probability of skipping the whole adapter "
                                  "for a step.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("loha", model, config, task=task, peft_cls=peft.LoHaConfig, r=config["r"],
                       alpha=config["alpha"], rank_dropout=config["rank_dropout"],
                       module_dropout=config["module_dropout"])


method_register(Method(name="loha", title="LoHa", paper="arXiv:2108.06098", config=LoHaConfig, build=build))
