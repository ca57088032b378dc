"""Checks on an uploaded adapter folder, before anything loads it.

The weights file is read as safetensors by its bytes (8-byte header length, JSON header, offsets that tile the
data exactly), so a pickle or a torch zip under a .safetensors name is refused without being opened by any loader.
Shapes are checked by building the adapter peft would create from the uploaded config on the catalogue base model
and comparing its state-dict keys and shapes with the header: no uploaded tensor is ever loaded."""

import json
import math
import re
from pathlib import Path
from typing import Any

from workers.base_models import BaseModelEntry, model_load, tokenizer_load

# bytes per element of each safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
TASK_TYPES = {"SEQ_CLS": "classification", "TOKEN_CLS": "token-classification", "CAUSAL_LM": "sft"}
HEAD_SUFFIXES = ("classifier.weight", "score.weight")


class AdapterCheckError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def safetensors_shapes(path: Path, *, param: str) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes in a safetensors file, after checking its layout byte by byte."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise AdapterCheckError("not a safetensors file (its first 8 bytes are not a valid header length; "
                                    "pickle and torch.save files are refused)", param)
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8")) if raw.lstrip().startswith(b"{") else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise AdapterCheckError("not a safetensors file (its header is not a JSON object)", param)
    header.pop("__metadata__", None)
    shapes: dict[str, tuple[int, ...]] = {}
    spans = []
    for name, info in header.items():
        dtype = info.get("dtype") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (dtype not in DTYPE_BYTES or not isinstance(shape, list)
                or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]):
            raise AdapterCheckError(f"safetensors header entry {name!r} is malformed", param)
        shapes[name] = tuple(shape)
        spans.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise AdapterCheckError("safetensors tensors overlap or leave gaps", param)
        end = stop
    if 8 + length + end != size:
        raise AdapterCheckError(f"safetensors file is {size} bytes but its header describes {8 + length + end}", param)
    return shapes


def adapter_config_read(path: Path) -> dict[str, Any]:
    import peft

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdapterCheckError(f"adapter_config.json is not valid JSON: {exc}", "files.adapter_config.json") from exc
    if not isinstance(config, dict):
        raise AdapterCheckError("adapter_config.json must be a JSON object", "files.adapter_config.json")
    if config.get("peft_type") not in peft.PeftType.__members__:
        raise AdapterCheckError(f"adapter_config.json: unknown peft_type {config.get('peft_type')!r}",
                                "adapter_config.json.peft_type")
    if config.get("task_type") not in TASK_TYPES:
        raise AdapterCheckError(f"adapter_config.json: task_type must be one of {sorted(TASK_TYPES)}",
                                "adapter_config.json.task_type")
    return config


def labels_infer(shapes: dict[str, tuple[int, ...]]) -> list[str] | None:
    """Label names for a classification head when the upload gives none: transformers' LABEL_i defaults."""
    for name, shape in shapes.items():
        if name.endswith(HEAD_SUFFIXES) and len(shape) == 2:
            return [f"LABEL_{i}" for i in range(shape[0])]
    return None


def _targets_check(targets: Any, module_names: list[str]) -> None:
    param = "adapter_config.json.target_modules"
    if targets is None or targets == "all-linear":
        return
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in module_names):
            raise AdapterCheckError(f"target_modules pattern {targets!r} matches no module of the base model", param)
        return
    missing = sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names))
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names if n})
        raise AdapterCheckError(f"target_modules {missing} are not in the base model (it has e.g. {leaves[:12]})",
                                param)


def adapter_shapes_expected(*, entry: BaseModelEntry, config: dict[str, Any],
                            labels: list[str] | None) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes `save_pretrained` writes for this config on this base model."""
    import peft

    task = TASK_TYPES[config["task_type"]]
    if task not in entry.tasks:
        raise AdapterCheckError(f"base model {entry.id!r} supports {list(entry.tasks)}, not {task!r} "
                                f"(task_type {config['task_type']})", "base_model")
    try:
        peft_config = peft.PeftConfig.from_peft_type(**config)
    except (TypeError, ValueError, KeyError) as exc:
        raise AdapterCheckError(f"adapter_config.json is not a valid {config['peft_type']} config: {exc}",
                                "files.adapter_config.json") from exc
    for init in ("init_lora_weights", "init_weights", "init_ia3_weights"):
        if hasattr(peft_config, init):  # shapes do not depend on the init; skip data-driven inits (PiSSA, EVA...)
            setattr(peft_config, init, False)
    model = model_load(entry, task=task, vocab_size=len(tokenizer_load(entry)), labels=labels)
    _targets_check(getattr(peft_config, "target_modules", None), [n for n, _ in model.named_modules()])
    try:
        peft_model = peft.get_peft_model(model, peft_config)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise AdapterCheckError(f"peft cannot apply this config to {entry.id!r}: {exc}",
                                "files.adapter_config.json") from exc
    return {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(peft_model).items()}


def adapter_shapes_compare(*, expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]]) -> None:
    param = "files.adapter_model.safetensors"
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or extra:
        raise AdapterCheckError(f"tensors do not match the config on this base model: missing {missing[:5]}"
                                f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                                f"{' ...' if len(extra) > 5 else ''}", param)
    wrong = [f"{k}: {list(got[k])}, expected {list(expected[k])}" for k in sorted(expected) if got[k] != expected[k]]
    if wrong:
        raise AdapterCheckError(f"tensor shapes do not match the config on this base model: {wrong[:5]}", param)
