"""FourierFT: Gao et al., "Parameter-Efficient Fine-Tuning with Discrete Fourier Transform", ICML 2024
(arXiv:2405.03003).

A few trained spectral coefficients at fixed random frequencies; the update is their inverse 2-D DFT.
Built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import Method, method_register


class FourierFTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="FourierFT")

    n_frequency: int = Field(1000, ge=1, le=100000, description="Trained spectral coefficients per layer; at most "
                             "the layer's in x out features.")
    scaling: float = Field(150.0, gt=0.0, le=10000.0, description="Scale of the update (the paper uses about 100-300).")
    random_loc_seed: int = Field(777, ge=0, le=2**31 - 1, description="Seed of the chosen frequencies.")
    target_modules: TargetModules = None


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    return tuner_build("fourierft", model, config, task=task, param="method_config.n_frequency",
                       peft_cls=peft.FourierFTConfig,
                       n_frequency=config["n_frequency"], scaling=config["scaling"],
                       random_loc_seed=config["random_loc_seed"])


method_register(Method(name="fourierft", title="FourierFT", paper="arXiv:2405.03003", config=FourierFTConfig,
                       build=build))
