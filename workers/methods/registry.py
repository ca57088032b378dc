"""One registry of PEFT methods. Each method folder registers a config class and a build()."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config that cannot work; `param` names the field, e.g. `method_config.r`."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def adapter_save(model: Any, directory: str) -> None:
    """The default save: peft's own layout, safetensors only."""
    model.save_pretrained(str(directory), safe_serialization=True)


ALL_TASKS = ("classification", "sft", "token-classification")
# peft prepends virtual tokens to the input for these, so a token-classification model would emit more logits
# than there are labels (peft handles that only for prefix tuning, whose prefixes are keys and values, not tokens)
VIRTUAL_TOKEN_TASKS = ("classification", "sft")


@dataclass(frozen=True)
class Method:
    """A registered method. The worker's order of calls:

    prepare(base, config, *, batches, task)   if set: calibrate on a few training batches, before build
    build(base, config, *, task)              the trainable (peft) model; refuses bad configs with ConfigError
                                              (with total_step=<optimizer steps of the job> when needs_total_step)
    training_step(model, inputs, *, step)     if set: replaces forward + backward; the method updates the parameters
                                              itself (MeZO) and returns the step's loss, detached
    after_step(model, step)                   if set: after every optimizer step, before gradients are zeroed
    save(model, directory)                    writes a folder that peft.PeftModel.from_pretrained loads, or, for a
                                              method written here (peft_backed False), one that load() reads
    load(base, directory)                     (not peft_backed) the trained model back for inference; `loading` says
                                              the same for foundry.json
    """

    name: str
    title: str
    paper: str
    config: type[BaseModel]
    build: Callable[..., Any]
    tasks: tuple[str, ...] = ALL_TASKS
    prepare: Callable[..., None] | None = None
    after_step: Callable[[Any, int], None] | None = None
    save: Callable[[Any, str], None] = adapter_save
    mergeable: bool = True  # merge_and_unload() folds the adapter into the base weights
    needs_total_step: bool = False  # its schedule depends on the job's length (AdaLoRA's rank budget)
    training_step: Callable[..., Any] | None = None
    load: Callable[..., Any] | None = None
    peft_backed: bool = True  # False: written here; save() writes our own layout and load() reads it
    loading: str = ""  # how an adapter of this method is loaded, for foundry.json (methods written here)

    @property
    def data_parallel(self) -> bool:
        """Several processes may each train on part of every batch and add their gradients (DDP, the fork of
        workers/training/split.py): the weights change only in the optimizer's step, which sees the sum. Not so
        for a method with its own step (MeZO) or an after-step hook that changes which weights train (LISA,
        LT-SFT, AdaLoRA's rank budget): the processes would drift apart."""
        return self.training_step is None and self.after_step is None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "paper": self.paper, "tasks": list(self.tasks),
                "mergeable": self.mergeable,
                "peft_backed": self.peft_backed, "loading": self.loading, "schema": self.config.model_json_schema()}


METHODS: dict[str, Method] = {}


def method_register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def lazy(path: str) -> Callable[..., Any]:
    """The function at "package.module:name", imported on first call: the torch code of the methods written here
    stays out of the web process, which only reads their configs."""
    module, name = path.split(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def method_get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}", "method") from None


def config_resolve(schema: type[BaseModel], raw: Any, *, param: str) -> dict[str, Any]:
    """Validate raw against schema and return it with defaults filled in; errors name the field."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{param} must be an object", param)
    try:
        return schema.model_validate(raw or {}).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join([param, *(str(p) for p in first["loc"])])
        raise ConfigError(f"{field}: {first['msg']}", field) from None


def method_task_check(method: Method, task: str) -> None:
    if task not in method.tasks:
        raise ConfigError(f"method {method.name!r} does not support task {task!r} (it supports {list(method.tasks)})",
                          "method")


def method_config_resolve(name: str, raw: Any) -> dict[str, Any]:
    return config_resolve(method_get(name).config, raw, param="method_config")
