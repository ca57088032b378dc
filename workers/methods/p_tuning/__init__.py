"""P-tuning: Liu et al., "GPT Understands, Too" (arXiv:2103.10385).

Virtual-token embeddings produced by a small trained prompt encoder (an MLP or LSTM) are prepended to
the input; the model is untouched. Built with peft."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.common import peft_config_make, peft_model_get, task_type
from workers.methods.registry import VIRTUAL_TOKEN_TASKS, Method, method_register


class PTuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="P-tuning")

    num_virtual_tokens: int = Field(20, ge=1, le=256, description="Virtual tokens prepended to every input (they "
                                    "count against the model's maximum length).")
    encoder: Literal["MLP", "LSTM"] = Field("MLP", description="The prompt encoder that produces the virtual tokens.")
    encoder_hidden_size: int = Field(128, ge=1, le=8192, description="Hidden width of the prompt encoder.")
    encoder_dropout: float = Field(0.0, ge=0.0, le=0.9, description="Dropout inside the prompt encoder.")


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    import peft

    peft_config = peft_config_make(
        peft.PromptEncoderConfig, task_type=task_type("p_tuning", task),
        num_virtual_tokens=config["num_virtual_tokens"], encoder_reparameterization_type=config["encoder"],
        encoder_hidden_size=config["encoder_hidden_size"], encoder_dropout=config["encoder_dropout"])
    return peft_model_get(model, peft_config)


method_register(Method(name="p_tuning", title="P-tuning", paper="arXiv:2103.10385", config=PTuningConfig,
                       build=build, mergeable=False, tasks=VIRTUAL_TOKEN_TASKS))
