"""Prefix tuning: Li and Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021
(arXiv:2101.00190).

Trained key/value prefixes are prepended to the attention of every layer (through the model's KV cache);
the model is untouched. Built with peft."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import peft_config_make, peft_model_get, task_type
from workers.methods.registry import Method, method_register


class PrefixTuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Prefix tuning")

    num_virtual_tokens: int = Field(20, ge=1, le=256, description="Length of the trained prefix in every layer.")
    prefix_projection: bool = Field(False, description="Produce the prefixes through a trained MLP (the paper's "
                                    "reparametrisation: more stable, more parameters while training).")
    encoder_hidden_size: int = Field(128, ge=1, le=8192, description="Hidden width of that MLP (only with "
                                     "prefix_projection).")


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    peft_config = peft_config_make(
        peft.PrefixTuningConfig, task_type=task_type("prefix_tuning", task),
        num_virtual_tokens=config["num_virtual_tokens"], prefix_projection=config["prefix_projection"],
        encoder_hidden_size=config["encoder_hidden_size"])
    return peft_model_get(model, peft_config)


method_register(Method(name="prefix_tuning", title="Prefix tuning", paper="arXiv:2101.00190",
                       config=PrefixTuningConfig, build=build, mergeable=False))
