"""What the peft-backed methods share: the task check, the target-module check and the wrap.

Every check here runs inside build(), before training starts, so a config that cannot work
fails the job as a user error naming the field instead of crashing inside the training loop."""

from typing import Annotated, Any

from pydantic import Field

from workers.methods.registry import ConfigError, method_get, method_task_check

TARGETS_PARAM = "method_config.target_modules"

TargetModules = Annotated[
    list[str] | None,
    Field(
        min_length=1,
        max_length=64,
        description="Module names (suffixes) to adapt, e.g. ['query', 'value'] on BERT or ['q_proj', 'v_proj'] on "
        "Llama; default: peft's choice for the architecture.",
    ),
]


def task_type(method: str, task: str) -> Any:
    """The peft TaskType for our task, after refusing a task the method does not support."""
    import peft

    method_task_check(method_get(method), task)
    types = {"classification": peft.TaskType.SEQ_CLS, "sft": peft.TaskType.CAUSAL_LM,
             "token-classification": peft.TaskType.TOKEN_CLS}
    if task not in types:
        raise ConfigError(f"task {task!r} has no peft task type here", "task")
    return types[task]


def _has_module(names: list[str], target: str) -> bool:
    """peft's rule for a plain name: the whole module path, or its dotted suffix (e.g. 'output.dense')."""
    return any(name == target or name.endswith("." + target) for name in names)


def targets_check(model: Any, targets: list[str] | None, *, param: str = TARGETS_PARAM) -> None:
    """Refuse target names the base model does not have (peft would only fail later, with less to go on)."""
    if not targets:
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not _has_module(names, t)]
    if missing:
        examples = sorted({name.rsplit(".", 1)[-1] for name in names})[:12]
        raise ConfigError(f"{param}: {missing} not in the base model (it has e.g. {examples})", param)


def tuner_build(
    method: str, model: Any, config: dict[str, Any], *, task: str, peft_cls: Any, param: str = "method_config",
    **peft_kwargs: Any,
) -> Any:
    """The whole build of a peft tuner that adapts target modules: checks, then peft's config and model.

    Args:
        param: the field that sizes the adapter against the layers (blamed when peft refuses the shapes).
        peft_kwargs: the peft config's own arguments.
    """
    targets_check(model, config.get("target_modules"))
    peft_config = peft_config_make(peft_cls, task_type=task_type(method, task),
                                   target_modules=config.get("target_modules"), **peft_kwargs)
    return peft_model_get(model, peft_config, param=param)


def peft_model_get(model: Any, peft_config: Any, *, param: str = "method_config", **kwargs: Any) -> Any:
    """get_peft_model, with peft's refusals of a config (ValueError) turned into a user error.

    Args:
        model: the base model (a transformers PreTrainedModel with its task head).
        peft_config: a constructed peft config (its own __post_init__ checks already ran).
        param: the field to blame, when the method has one that sizes the adapter against the layers.
        kwargs: passed on to peft.get_peft_model, e.g. low_cpu_mem_usage.
    """
    import peft

    try:
        return peft.get_peft_model(model, peft_config, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{param}: peft refused this config for the base model: {exc}", param) from None


def peft_config_make(cls: Any, **kwargs: Any) -> Any:
    """Construct a peft config; its validation errors (ValueError) become a user error."""
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"method_config: {exc}", "method_config") from None
