"""Adapter versions loaded on demand from S3 into one copy of each base model, with an LRU bound
on the number of adapters and their bytes. Versions are immutable, so the S3 prefix is the key.

Methods written here (workers/methods/native.py: SSF, bottleneck adapters, DyLoRA, LT-SFT, LISA, MeZO,
MixLoRA) change or wrap the base model's own modules, so each such version gets a base model of its own,
loaded by the method's load(); its bytes in the cache are the whole model's."""

import hashlib
import json
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage import s3
from workers.base_models import base_model_get, model_load, tokenizer_load

MIXED_BATCH_TYPES = {"LORA"}  # peft runs rows of different adapters in one forward pass for these


@dataclass
class Loaded:
    name: str  # the adapter's name inside the base's PeftModel
    base_key: tuple[Any, ...]
    bytes: int
    peft_type: str  # "" for a method written here
    labels: list[str]
    native: str = ""  # the method's name when it is written here: the base is this version's alone


@dataclass
class Base:
    model: Any  # a PeftModel holding every loaded adapter of this base
    tokenizer: Any
    task: str


@dataclass
class CacheStats:
    hits: int = 0
    cold_loads: int = 0
    evictions: int = 0
    cold_load_seconds: list[float] = field(default_factory=list)


class AdapterCache:
    def __init__(self, *, max_adapters: int, max_bytes: int):
        self.max_adapters, self.max_bytes = max_adapters, max_bytes
        self.adapters: OrderedDict[str, Loaded] = OrderedDict()
        self.bases: dict[tuple[Any, ...], Base] = {}
        self.stats = CacheStats()
        self.lock = threading.RLock()

    def get(self, version: dict[str, Any]) -> tuple[Loaded, Base]:
        """The loaded adapter for a version description {prefix, files, metadata}, loading it if needed."""
        with self.lock:
            key = version["prefix"]
            if key in self.adapters:
                self.adapters.move_to_end(key)
                self.stats.hits += 1
                loaded = self.adapters[key]
                return loaded, self.bases[loaded.base_key]
            started = time.perf_counter()
            loaded = self._load(version)
            self.adapters[key] = loaded
            self.stats.cold_loads += 1
            self.stats.cold_load_seconds = [*self.stats.cold_load_seconds[-999:], time.perf_counter() - started]
            self._evict(keep=key)
            return loaded, self.bases[loaded.base_key]

    def _load(self, version: dict[str, Any]) -> Loaded:
        import torch
        from peft import PeftModel

        metadata = version["metadata"]
        task, labels = metadata["task"], list(metadata.get("labels") or [])
        base_key = (metadata["base_model"]["id"], task, len(labels))
        name = "a" + hashlib.sha256(version["prefix"].encode()).hexdigest()[:16]
        files = _fetch(version)
        config = json.loads(files["adapter_config.json"])
        size = len(files["adapter_model.safetensors"])
        base = self.bases.get(base_key)
        if base is not None and not config.get("foundry_method") and _lora_attach(base.model, name, config,
                                                                                  files["adapter_model.safetensors"]):
            return Loaded(name=name, base_key=base_key, bytes=size, peft_type="LORA", labels=labels)
        with tempfile.TemporaryDirectory(prefix="foundry-infer-") as tmp:
            folder = Path(tmp)
            for file_name, data in files.items():
                (folder / file_name).write_bytes(data)
            if config.get("foundry_method"):
                return self._load_native(str(config["foundry_method"]), folder, base_key=(*base_key, name), name=name,
                                         labels=labels)
            if base is None:
                entry = base_model_get(base_key[0])
                tokenizer = tokenizer_load(entry)
                model = model_load(entry, task=task, vocab_size=len(tokenizer), labels=labels or None)
                peft_model = PeftModel.from_pretrained(model, folder, adapter_name=name).eval()
                self.bases[base_key] = Base(model=peft_model, tokenizer=tokenizer, task=task)
            else:
                with torch.no_grad():
                    base.model.load_adapter(folder, adapter_name=name)
        # peft refuses per-row adapter_names for DoRA: such a version's rows run in a group of their own
        peft_type = "DORA" if config.get("use_dora") else str(config.get("peft_type") or "")
        return Loaded(name=name, base_key=base_key, bytes=size, peft_type=peft_type, labels=labels)

    def _load_native(self, method_name: str, folder: Path, *, base_key: tuple[Any, ...], name: str,
                     labels: list[str]) -> Loaded:
        import itertools

        import workers.methods  # noqa: F401 (registers the methods)
        from workers.methods.registry import method_get

        method = method_get(method_name)
        if method.peft_backed or method.load is None:
            raise ValueError(f"{folder}: adapter_config.json names {method_name!r}, which has no loader here")
        entry = base_model_get(base_key[0])
        tokenizer = tokenizer_load(entry)
        task = base_key[1]
        model = method.load(model_load(entry, task=task, vocab_size=len(tokenizer), labels=labels or None),
                            str(folder)).eval()
        self.bases[base_key] = Base(model=model, tokenizer=tokenizer, task=task)
        size = sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
        return Loaded(name=name, base_key=base_key, bytes=size, peft_type="", labels=labels, native=method_name)

    def _evict(self, *, keep: str) -> None:
        while len(self.adapters) > 1 and (len(self.adapters) > self.max_adapters
                                          or sum(a.bytes for a in self.adapters.values()) > self.max_bytes):
            key, loaded = next((k, v) for k, v in self.adapters.items() if k != keep)
            del self.adapters[key]
            base = self.bases[loaded.base_key]
            if any(a.base_key == loaded.base_key for a in self.adapters.values()):
                base.model.delete_adapter(loaded.name)
            else:
                del self.bases[loaded.base_key]  # its last adapter: free the base too
            self.stats.evictions += 1


FILES = ("adapter_config.json", "adapter_model.safetensors")


def _fetch(version: dict[str, Any]) -> dict[str, bytes]:
    """The version's config and weights, fetched from S3 in parallel into memory, each checked against its sha256."""
    from concurrent.futures import ThreadPoolExecutor

    entries = [e for e in version["files"] if e["name"] in FILES]
    if sorted(e["name"] for e in entries) != sorted(FILES):
        raise ValueError(f"{version['prefix']}: the version lacks {sorted(FILES)}")

    def get(entry: dict[str, Any]) -> bytes:
        data = s3.get_bytes(version["prefix"] + entry["name"])
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise s3.StorageError(f"{version['prefix']}{entry['name']}: stored bytes do not match their sha256")
        return data

    with ThreadPoolExecutor(len(entries)) as pool:
        return dict(zip((e["name"] for e in entries), pool.map(get, entries), strict=True))


PREFIX = "base_model.model."


def _lora_attach(model: Any, name: str, config: dict[str, Any], weights: bytes) -> bool:
    """Add a plain LoRA adapter to a PeftModel whose target layers are LoRA layers already: each layer gets the new
    A and B directly, and each head wrapper (modules_to_save) its copy, without peft's load_adapter walking and
    re-injecting the whole model (whose cost grows with the adapters already loaded). Returns False, having changed
    nothing, when the adapter needs peft's own path (DoRA, rank or alpha patterns, biases, a layer not yet adapted,
    another peft type)."""
    import peft
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.utils import ModulesToSaveWrapper
    from safetensors.torch import load as safetensors_load

    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("rank_pattern") or config.get(
            "alpha_pattern") or config.get("lora_bias") or config.get("trainable_token_indices") or config.get(
            "target_parameters"):
        return False
    tensors = safetensors_load(weights)
    root = model.base_model.model
    layers: dict[str, dict[str, torch.Tensor]] = {}
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX):
            return False
        rest = key.removeprefix(PREFIX)
        if ".lora_" in rest:
            path, _, leaf = rest.rpartition(".lora_")
            layers.setdefault(path, {})["lora_" + leaf] = tensor
        else:
            path, _, leaf = rest.rpartition(".")
            heads.setdefault(path, {})[leaf] = tensor
    targets = {path: root.get_submodule(path) for path in [*layers, *heads]}
    if any(not isinstance(targets[p], LoraLinear) or set(t) != {"lora_A.weight", "lora_B.weight"}
           for p, t in layers.items()) or any(not isinstance(targets[p], ModulesToSaveWrapper) for p in heads):
        return False
    lora_config = peft.LoraConfig(**{k: v for k, v in config.items() if k in peft.LoraConfig.__dataclass_fields__})
    lora_config.init_lora_weights, lora_config.lora_dropout, lora_config.inference_mode = False, 0.0, True
    with torch.no_grad():
        for path, pair in layers.items():
            layer = targets[path]
            a, b = pair["lora_A.weight"], pair["lora_B.weight"]
            layer.update_layer(name, a.shape[0], lora_config.lora_alpha, lora_config)
            layer.lora_A[name].weight.copy_(a)
            layer.lora_B[name].weight.copy_(b)
            layer.lora_A[name].requires_grad_(False)
            layer.lora_B[name].requires_grad_(False)
        for path, params in heads.items():
            wrapper = targets[path]
            wrapper.update(name)
            head = wrapper.modules_to_save[name]
            for param_name, value in params.items():
                head.get_parameter(param_name).copy_(value)
            head.requires_grad_(False)
    model.peft_config[name] = lora_config
    return True
