"""Poly: Ponti et al., "Combining Parameter-efficient Modules for Task-level Generalisation", EACL 2023
(arXiv:2202.13914); built with peft.

Poly routes each task to a learned mixture of n_skills LoRA modules. Our datasets carry no task ids, so
this registers Poly with a single task: one learned soft mixture of the skills (a structured LoRA). peft's
Poly layers require `task_ids` on every forward call; build() adds a hook that passes task 0 when the caller
gives none. An adapter loaded with plain peft needs `task_ids=torch.zeros(batch_size, dtype=torch.long)`
(or `task_ids_default(model)`) on every call."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import TargetModules, tuner_build
from workers.methods.registry import ConfigError, Method, method_register


class PolyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Poly (single task)")

    r: int = Field(8, ge=1, le=256, description="Rank of each skill's LoRA module.")
    n_skills: int = Field(4, ge=1, le=64, description="Number of LoRA skills mixed by the router. Datasets here "
                          "have one task, so the router learns one mixture of them.")
    n_splits: int = Field(1, ge=1, le=64, description="Split each skill into this many parts, each routed on its "
                          "own (Multi-Head Routing when above 1); must divide the layers' dimensions.")
    target_modules: TargetModules = None


def task_ids_default(model: Any) -> Any:
    """Make task 0 the default on every forward, since our data has a single task."""
    import torch

    def pass_task_zero(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if kwargs.get("task_ids") is None:
            first = kwargs.get("input_ids", kwargs.get("inputs_embeds", args[0] if args else None))
            assert first is not None, "Poly needs input_ids or inputs_embeds to size task_ids"
            kwargs["task_ids"] = torch.zeros(first.shape[0], dtype=torch.long, device=first.device)
        return args, kwargs

    model.base_model.register_forward_pre_hook(pass_task_zero, with_kwargs=True)
    return model


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    peft_model = tuner_build("poly", model, config, task=task, peft_cls=peft.PolyConfig, r=config["r"],
                             n_tasks=1, n_skills=config["n_skills"], n_splits=config["n_splits"], poly_type="poly")
    _splits_check(peft_model, config["n_splits"])
    return task_ids_default(peft_model)


def _splits_check(peft_model: Any, n_splits: int) -> None:
    """peft builds Poly layers whatever n_splits is, and the first forward fails if it does not divide them."""
    from peft.tuners.poly.layer import PolyLayer

    for name, module in peft_model.named_modules():
        if isinstance(module, PolyLayer) and (module.in_features % n_splits or module.out_features % n_splits):
            raise ConfigError(f"method_config.n_splits: {n_splits} does not divide the {module.in_features} x "
                              f"{module.out_features} layer {name}", "method_config.n_splits")


method_register(Method(name="poly", title="Poly (single task)", paper="arXiv:2202.13914", config=PolyConfig,
                       build=build, mergeable=False))
