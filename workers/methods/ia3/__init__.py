"""IA3: Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
NeurIPS 2022 (arXiv:2205.05638).

Learned vectors rescale the keys, values and feed-forward activations; built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, targets_check, tuner_build
from workers.methods.registry import ConfigError, Method, method_register


class IA3Config(BaseModel):
    model_config = ConfigDict(extra="forbid", title="IA3")

    target_modules: TargetModules = None
    feedforward_modules: list[str] | None = Field(
        None, min_length=1, max_length=64,
        description="Which of target_modules are feed-forward layers (their input is scaled, not their output). "
        "Default: peft's choice when target_modules is also left out, else none.")


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    targets, feedforward = config["target_modules"], config["feedforward_modules"]
    targets_check(model, targets)
    if feedforward and not set(feedforward) <= set(targets or ()):
        raise ConfigError("method_config.feedforward_modules: must be a subset of target_modules (give both)",
                          "method_config.feedforward_modules")
    if targets and not feedforward:
        feedforward = []  # peft would otherwise guess feed-forward layers from its defaults for other names
    return tuner_build("ia3", model, config, task=task, peft_cls=peft.IA3Config, feedforward_modules=feedforward)


method_register(Method(name="ia3", title="IA3", paper="arXiv:2205.05638", config=IA3Config, build=build))
