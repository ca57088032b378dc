"""BOFT: Liu et al., "Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization", ICLR 2024
(arXiv:2311.06243).

The orthogonal matrix of OFT is a product of sparse butterfly factors; built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class BOFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="BOFT")

    block_size: int = Field(4, ge=2, le=1024, description="Size of each orthogonal block; must divide the target "
                            "layers' input dimension.")
    butterfly_factor: int = Field(1, ge=1, le=16, description="Number of butterfly factors; 1 is block-diagonal "
                                  "OFT, more mixes blocks further.")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Multiplicative dropout on the orthogonal blocks.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("boft", model, config, task=task, param="method_config.block_size",
                       peft_cls=peft.BOFTConfig,
                       boft_block_size=config["block_size"], boft_block_num=0,
                       boft_n_butterfly_factor=config["butterfly_factor"], boft_dropout=config["dropout"])


method_register(Method(name="boft", title="BOFT", paper="arXiv:2311.06243", config=BOFTConfig, build=build))
