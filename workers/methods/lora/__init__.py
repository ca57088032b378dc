"""LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022 (arXiv:2106.09685).

Options, all from peft: DoRA (Liu et al., arXiv:2402.09353), rank-stabilised scaling rsLoRA
(Kalajdzievski, arXiv:2312.03732), and the initialisations PiSSA (Meng et al., arXiv:2404.02948),
OLoRA (Büyükakyüz, arXiv:2406.01775), EVA (Paischer et al., arXiv:2410.07170), CorDA (Yang et al.,
arXiv:2406.05223) and LoRA-GA (Wang et al., arXiv:2407.05000).

EVA, CorDA and LoRA-GA are data-driven: the worker calls prepare() on the base model with a few
training batches before build(). PiSSA, OLoRA, CorDA and LoRA-GA move part of the base weights into
the adapter; save() converts the trained adapter back to plain LoRA (rank 2r) so that it loads on
the unmodified base model. The task head (classifier) is trained and saved with the adapter."""

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from workers.methods.common import TargetModules, peft_config_make, peft_model_get, targets_check, task_type
from workers.methods.registry import ConfigError, Method, adapter_save, method_register

CALIBRATED = ("eva", "corda", "lora_ga")  # need prepare() with training batches
RESIDUAL = ("pissa", "olora", "corda", "lora_ga")  # change the base weights: save() converts
EVA_MAX_PASSES = 100
PEFT_INIT = {"gaussian": "gaussian", "kaiming": True}  # ours -> peft's init_lora_weights; others are the same


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="LoRA")

    r: int = Field(8, ge=1, le=256, description="Rank of the low-rank update matrices.")
    alpha: int = Field(16, ge=1, le=4096, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, le=0.9, description="Dropout on the LoRA branch input.")
    target_modules: TargetModules = None
    use_dora: bool = Field(False, description="DoRA: learn a per-column magnitude beside the LoRA direction; "
                           "slower, often better at low rank.")
    use_rslora: bool = Field(False, description="rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r, "
                             "which keeps high ranks stable.")
    init: Literal["gaussian", "kaiming", "pissa", "olora", "eva", "corda", "lora_ga"] = Field(
        "gaussian",
        description="Initialisation of the LoRA matrices. gaussian / kaiming: random A, zero B (the update starts "
        "at zero). pissa: principal singular vectors of W. olora: QR decomposition of W. Data-driven, computed on a "
        "few training batches before training: eva (SVD of layer inputs, ranks redistributed), corda (covariance-"
        "oriented decomposition, instruction-previewed mode), lora_ga (aligned with the full fine-tuning gradient). "
        "pissa, olora, corda and lora_ga are saved converted to plain LoRA of rank 2r, and cannot be combined "
        "with use_dora.",
    )

    @field_validator("init")
    @classmethod
    def _init_convertible(cls, init: str, info: ValidationInfo) -> str:
        # the rank-2r conversion back to the unmodified base has no place for DoRA's magnitude vector
        if init in RESIDUAL and info.data.get("use_dora"):
            raise ValueError(f"{init!r} cannot be combined with use_dora: the trained adapter could not be "
                             "converted to load on the unmodified base model")
        return init


def _peft_config(config: dict[str, Any], task: str) -> Any:
    import peft
    from peft.tuners.lora.config import CordaConfig  # not exported at peft's top level

    init = config["init"]
    extra: dict[str, Any] = {}
    if init == "eva":
        # all input tokens, not only the answer's: classification labels are per row, and short answers leave
        # fewer tokens than components, which stalls the SVD
        extra["eva_config"] = peft.EvaConfig(use_label_mask=False)
    elif init == "corda":
        extra["corda_config"] = CordaConfig(corda_method="ipm")
    elif init == "lora_ga":
        extra["lora_ga_config"] = peft.LoraGAConfig()
    return peft_config_make(
        peft.LoraConfig,
        task_type=task_type("lora", task),
        r=config["r"],
        lora_alpha=config["alpha"],
        lora_dropout=config["dropout"],
        target_modules=config["target_modules"],
        use_dora=config["use_dora"],
        use_rslora=config["use_rslora"],
        init_lora_weights=PEFT_INIT.get(init, init),
        **extra,
    )


def _forward_rows(model: Any, batches: Iterable[dict[str, Any]]) -> None:
    """One unpadded row per forward: CorDA's covariance hooks expect a single sequence per call."""
    import torch

    with torch.no_grad():
        for batch in batches:
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
                model(input_ids=ids[mask.bool()].unsqueeze(0))


def _backward_all(model: Any, batches: Iterable[dict[str, Any]]) -> None:
    for batch in batches:
        model(**batch).loss.backward()


def _default_targets(model: Any) -> list[str]:
    """peft's LoRA targets for the architecture: EVA, unlike get_peft_model, would otherwise take every Linear
    (pooler, classifier, lm_head included)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = DEFAULTS.get(model.config.model_type)
    if not targets:
        raise ConfigError(f"method_config.target_modules: no default for {model.config.model_type!r}; name them",
                          "method_config.target_modules")
    return list(targets)


def _eva_forward(limit: int) -> Any:
    """EVA cycles over the batches until its SVDs converge; bound it so a worker never loops for ever."""
    calls = 0

    def forward(model: Any, inputs: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls > limit:
            raise ConfigError(f"method_config.init: EVA did not converge within {limit} passes over the "
                              "calibration batches; use more data or another init", "method_config.init")
        return model(**inputs)

    return forward


def prepare(model: Any, config: dict[str, Any], *, batches: list[dict[str, Any]], task: str) -> None:
    """Calibrate the data-driven inits on the base model, before build(); nothing to do for the others.

    Args:
        model: the base model, not yet wrapped by peft.
        config: the resolved method config.
        batches: a few collated training batches (dicts of tensors: input_ids, attention_mask, labels).
        task: "classification" or "sft".
    """
    import peft
    from peft.tuners.lora.corda import preprocess_corda
    from peft.tuners.lora.loraga import preprocess_loraga

    init = config["init"]
    if init not in CALIBRATED:
        return
    if not batches:
        raise ConfigError(f"method_config.init: {init!r} needs training batches to calibrate on",
                          "method_config.init")
    targets_check(model, config["target_modules"])
    peft_config = _peft_config({**config, "target_modules": config["target_modules"] or _default_targets(model)}, task)
    if init == "eva":
        model.foundry_eva_state_dict = peft.get_eva_state_dict(
            model, batches, peft_config=peft_config, forward_fn=_eva_forward(EVA_MAX_PASSES * len(batches)),
            show_progress_bar=False)
    elif init == "corda":
        preprocess_corda(model, peft_config, run_model=lambda: _forward_rows(model, batches))
    else:
        preprocess_loraga(model, peft_config, train_step=lambda: _backward_all(model, batches))
    model.foundry_prepared = init


def build(model: Any, config: dict[str, Any], *, task: str) -> Any:
    init = config["init"]
    targets_check(model, config["target_modules"])
    peft_config = _peft_config(config, task)
    if init in CALIBRATED and getattr(model, "foundry_prepared", None) != init:
        raise ConfigError(f"method_config.init: {init!r} is computed from training batches, and this worker did "
                          "not run the method's prepare() step", "method_config.init")
    if init == "eva":
        # EVA's weights are loaded below, so peft need not initialise them first
        peft_model = peft_model_get(model, peft_config, low_cpu_mem_usage=True)
        import peft

        peft.initialize_lora_eva_weights(peft_model, eva_state_dict=model.foundry_eva_state_dict,
                                         show_progress_bar=False)
        return peft_model
    peft_model = peft_model_get(model, peft_config)
    if init in RESIDUAL:
        _initial_adapter_keep(peft_model)
    return peft_model


def _initial_adapter_keep(peft_model: Any) -> None:
    """Save the adapter as initialised: save() needs it to convert back to the unmodified base."""
    initial = tempfile.TemporaryDirectory(prefix="foundry-initial-adapter-")  # removed with the model
    peft_model.save_pretrained(initial.name, safe_serialization=True)
    peft_model.foundry_initial_adapter = initial


def save(model: Any, directory: str) -> None:
    initial = getattr(model, "foundry_initial_adapter", None)
    if initial is None:
        adapter_save(model, directory)
        return
    model.save_pretrained(str(directory), safe_serialization=True,
                          path_initial_model_for_weight_conversion=initial.name)
    _heads_restore(model, Path(directory) / "adapter_model.safetensors")


def _heads_restore(model: Any, weights: Path) -> None:
    """peft 0.21's conversion keeps only the lora_ tensors and drops modules_to_save (the classifier head);
    write the trained head back beside the converted LoRA so the adapter is complete."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    converted = load_file(str(weights))
    heads = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()
             if "lora_" not in k and k not in converted}
    if heads:
        save_file({**converted, **heads}, str(weights), metadata={"format": "pt"})


method_register(Method(name="lora", title="LoRA", paper="arXiv:2106.09685", config=LoraConfig, build=build,
                       prepare=prepare, save=save))
