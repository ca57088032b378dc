"""OFT: Qiu et al., "Controlling Text-to-Image Diffusion by Orthogonal Finetuning", NeurIPS 2023
(arXiv:2306.07280).

The weight is multiplied by a trained block-diagonal orthogonal matrix (Cayley parametrised); built with
peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class OFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="OFT")

    block_size: int = Field(32, ge=2, le=1024, description="Size of each orthogonal block; must divide the target "
                            "layers' input dimension.")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Multiplicative dropout: probability of resetting a "
                           "block to the identity for a step.")
    coft: bool = Field(False, description="Constrained OFT: keep the rotation within eps of the identity.")
    eps: float = Field(6e-5, gt=0.0, le=1.0, description="Radius of the COFT constraint (only with coft).")
    block_share: bool = Field(False, description="Share one orthogonal block across the whole layer.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("oft", model, config, task=task, peft_cls=peft.OFTConfig, r=0,
                       oft_block_size=config["block_size"], module_dropout=config["dropout"], coft=config["coft"],
                       eps=config["eps"], block_share=config["block_share"])


method_register(Method(name="oft", title="OFT", paper="arXiv:2306.07280", config=OFTConfig, build=build))
