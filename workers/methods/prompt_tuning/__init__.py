"""Prompt tuning: Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning", EMNLP 2021
(arXiv:2104.08691).

Trained virtual-token embeddings are prepended to the input; the model is untouched. Built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import peft_config_make, peft_model_get, task_type
from workers.methods.registry import VIRTUAL_TOKEN_TASKS, Method, method_register


class PromptTuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Prompt tuning")

    num_virtual_tokens: int = Field(20, ge=1, le=256, description="Trained prompt tokens prepended to every input "
                                    "(they count against the model's maximum length). Initialised randomly.")


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    peft_config = peft_config_make(peft.PromptTuningConfig, task_type=task_type("prompt_tuning", task),
                                   num_virtual_tokens=config["num_virtual_tokens"])
    return peft_model_get(model, peft_config)


method_register(Method(name="prompt_tuning", title="Prompt tuning", paper="arXiv:2104.08691",
                       config=PromptTuningConfig, build=build, mergeable=False, tasks=VIRTUAL_TOKEN_TASKS))
