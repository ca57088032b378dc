"""Adapter versions loaded on demand from S3 into one copy of each base model, with an LRU bound
on the number of adapters and their bytes. Versions are immutable, so the S3 prefix is the key.

Methods written here (workers/methods/native.py: SSF, bottleneck adapters, DyLoRA, LT-SFT, LISA, MeZO,
MixLoRA) change or wrap the base model's own modules, so each such version gets a base model of its own,
loaded by the method's load(); its bytes in the cache are the whole model's."""

import hashlib
import json
import re
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
        with tempfile.TemporaryDirectory(prefix="foundry-infer-") as tmp:
            folder = Path(tmp)
            for entry in version["files"]:
                if entry["name"] in {"adapter_config.json", "adapter_model.safetensors"}:
                    s3.download_file(version["prefix"] + entry["name"], folder / entry["name"], sha256=entry["sha256"])
            config_text = (folder / "adapter_config.json").read_text()
            native = json.loads(config_text).get("foundry_method")
            if native:
                return self._load_native(str(native), folder, base_key=(*base_key, name), name=name, labels=labels)
            peft_type = re.search(r'"peft_type":\s*"(\w+)"', config_text)
            base = self.bases.get(base_key)
            if base is None:
                entry = base_model_get(base_key[0])
                tokenizer = tokenizer_load(entry)
                model = model_load(entry, task=task, vocab_size=len(tokenizer), labels=labels or None)
                peft_model = PeftModel.from_pretrained(model, folder, adapter_name=name).eval()
                self.bases[base_key] = Base(model=peft_model, tokenizer=tokenizer, task=task)
            else:
                with torch.no_grad():
                    base.model.load_adapter(folder, adapter_name=name)
            size = sum(e["size"] for e in version["files"] if e["name"] == "adapter_model.safetensors")
        return Loaded(name=name, base_key=base_key, bytes=size, peft_type=peft_type.group(1) if peft_type else "",
                      labels=labels)

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
