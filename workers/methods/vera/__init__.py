"""VeRA: Kopiczko et al., "VeRA: Vector-based Random Matrix Adaptation", ICLR 2024 (arXiv:2310.11454).

Frozen random low-rank matrices shared by all layers, with trained scaling vectors per layer; built with
peft. The random projections are saved with the adapter, so it loads without the seed."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class VeraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="VeRA")

    r: int = Field(256, ge=1, le=4096, description="Rank of the shared random matrices (VeRA uses high ranks: only "
                   "the scaling vectors train).")
    dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout on the VeRA branch input.")
    d_initial: float = Field(0.1, gt=0.0, le=10.0, description="Initial value of the per-rank scaling vector d.")
    projection_prng_key: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the shared random matrices.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("vera", model, config, task=task, peft_cls=peft.VeraConfig, r=config["r"],
                       vera_dropout=config["dropout"], d_initial=config["d_initial"],
                       projection_prng_key=config["projection_prng_key"], save_projection=True)


method_register(Method(name="vera", title="VeRA", paper="arXiv:2310.11454", config=VeraConfig, build=build))
