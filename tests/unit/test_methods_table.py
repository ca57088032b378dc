"""Every registered method on every task it supports, on the tiny models: it builds, learns a fixed
batch, saves, loads back into a fresh base with plain peft and gives identical outputs; methods that
merge give the same outputs merged. Plus the refusals: bad configs name the field."""

import functools
from typing import Any

import pytest
import torch

from api.datasets.examples import Example
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.methods.poly import task_ids_default
from workers.methods.registry import METHODS, ConfigError, Method, method_config_resolve, method_get
from workers.training.data import encode_all

STEPS = 20
MODEL_FOR_TASK = {"classification": "tiny-bert", "sft": "tiny-llama", "token-classification": "tiny-bert"}
LABELS = ["negative", "positive"]
TAGS = ["B-LOC", "B-PER", "I-PER", "O"]
TEXTS = [("a wonderful film", "positive"), ("tedious and dull", "negative"), ("i loved every minute", "positive"),
         ("a waste of time", "negative"), ("bright and moving", "positive"), ("flat, boring, long", "negative")]
SENTENCES = [(("Ada", "Lovelace", "met", "Babbage"), ("B-PER", "I-PER", "O", "B-PER")),
             (("rain", "in", "Paris"), ("O", "O", "B-LOC")), (("Oslo", "is", "cold"), ("B-LOC", "O", "O")),
             (("Grace", "Hopper", "wrote", "code", "in", "Arlington"), ("B-PER", "I-PER", "O", "O", "O", "B-LOC"))]
CHATS = [("what is two plus two", "four"), ("name a colour", "blue"), ("say hi", "hello there"),
         ("capital of france", "paris")]

# the 32-wide test models need smaller shards than the defaults, sized for real models
TINY = {"miss": {"r": 8}}
# what a plain peft user must add after from_pretrained: Poly needs task ids, ours is the single task 0
AFTER_LOAD = {"poly": task_ids_default}
# extra rows beside each method's defaults: the LoRA options and initialisations
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("lora", {"use_dora": True}),
    ("lora", {"use_rslora": True, "init": "kaiming"}),
    ("lora", {"init": "pissa"}),
    ("lora", {"init": "olora"}),
    ("lora", {"init": "eva"}),
    ("lora", {"init": "corda"}),
    ("lora", {"init": "lora_ga"}),
]


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    # the methods written here load with their own load(), not peft: tests/unit/test_methods_native.py
    rows = [(name, TINY.get(name, {})) for name in sorted(METHODS) if METHODS[name].peft_backed] + VARIANTS
    return [(name, task, extra) for name, extra in rows for task in METHODS[name].tasks]


def _case_id(case: tuple[str, str, dict[str, Any]]) -> str:
    name, task, extra = case
    return "-".join([name, task, *(f"{k}={v}" for k, v in extra.items())])


@functools.cache
def _tokenizer(task: str) -> Any:
    return tokenizer_load(base_model_get(MODEL_FOR_TASK[task]))


def _base(task: str) -> Any:
    tokenizer = _tokenizer(task)
    labels = {"classification": LABELS, "token-classification": TAGS}.get(task)
    model = model_load(base_model_get(MODEL_FOR_TASK[task]), task=task, vocab_size=len(tokenizer), labels=labels)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the base's own dropout only adds noise to a 20-step loss comparison
    return model


def _batch(task: str) -> dict[str, torch.Tensor]:
    """One padded batch, encoded the way the worker encodes training data."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification, DataCollatorWithPadding

    tokenizer = _tokenizer(task)
    if task == "token-classification":
        examples = [Example(tokens=words, tags=tags) for words, tags in SENTENCES]
        rows = encode_all(tokenizer, task, examples, 16, {name: i for i, name in enumerate(TAGS)})
        return dict(DataCollatorForTokenClassification(tokenizer)(rows))
    if task == "classification":
        examples = [Example(text=t, label=label) for t, label in TEXTS]
        rows = encode_all(tokenizer, task, examples, 16, {name: i for i, name in enumerate(LABELS)})
        return dict(DataCollatorWithPadding(tokenizer)(rows))
    examples = [Example(messages=(("user", q), ("assistant", a))) for q, a in CHATS]
    rows = encode_all(tokenizer, task, examples, 24)
    return dict(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(rows))


def _build(method: Method, task: str, config: dict[str, Any], batch: dict[str, torch.Tensor]) -> Any:
    base = _base(task)
    if method.prepare:
        method.prepare(base, config, batches=[batch], task=task)
    kwargs = {"total_step": STEPS} if method.needs_total_step else {}
    return method.build(base, config, task=task, **kwargs)


def _loss(model: Any, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def _train(method: Method, model: Any, batch: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(1, STEPS + 1):
        model(**batch).loss.backward()
        optimizer.step()
        if method.after_step:
            method.after_step(model, step)
        optimizer.zero_grad()


def _outputs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("case", _cases(), ids=_case_id)
def test_method_learns_saves_and_loads_back(case: tuple[str, str, dict[str, Any]], tmp_path: Any) -> None:
    from peft import PeftModel

    name, task, extra = case
    method = method_get(name)
    config = method_config_resolve(name, extra)
    batch = _batch(task)
    model = _build(method, task, config, batch)
    before = _loss(model, batch)
    _train(method, model, batch)
    after = _loss(model, batch)
    assert after < before, f"{name} on {task}: loss {before:.4f} -> {after:.4f}"

    method.save(model, str(tmp_path))
    expected = _outputs(model, batch)
    loaded = PeftModel.from_pretrained(_base(task), str(tmp_path))
    if name in AFTER_LOAD:
        AFTER_LOAD[name](loaded)
    assert torch.allclose(_outputs(loaded, batch), expected, atol=1e-5), "loaded adapter gives other outputs"
    if method.mergeable:
        merged = model.merge_and_unload()
        assert torch.allclose(_outputs(merged, batch), expected, atol=1e-4), "merged differs from unmerged"


def test_every_config_property_has_a_description() -> None:
    for method in METHODS.values():
        schema = method.config.model_json_schema()
        undescribed = [k for k, v in schema["properties"].items() if not v.get("description")]
        assert not undescribed, f"{method.name}: {undescribed}"
        assert method.paper.startswith("arXiv:"), method.name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unknown_field_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        method_config_resolve(name, {"no_such_field": 1})
    assert err.value.param == "method_config.no_such_field"


@pytest.mark.parametrize("name", [n for n in sorted(METHODS) if "r" in METHODS[n].config.model_fields])
def test_rank_zero_is_refused(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        method_config_resolve(name, {"r": 0})
    assert err.value.param == "method_config.r"


@pytest.mark.parametrize("name", [n for n in sorted(METHODS) if "target_modules" in METHODS[n].config.model_fields])
def test_target_module_not_in_model_is_refused_before_training(name: str) -> None:
    method = method_get(name)
    task = method.tasks[0]
    config = method_config_resolve(name, {"target_modules": ["no_such_layer"]})
    with pytest.raises(ConfigError) as err:
        _build(method, task, config, _batch(task))
    assert err.value.param == "method_config.target_modules"
    assert "no_such_layer" in str(err.value)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_on_a_task_it_does_not_support_is_refused(name: str) -> None:
    """A task the method does not support (or, for a method that supports every task, one that does not exist)."""
    method = method_get(name)
    task = next((t for t in MODEL_FOR_TASK if t not in method.tasks), "summarisation")
    model_task = task if task in MODEL_FOR_TASK else "classification"
    kwargs = {"total_step": STEPS} if method.needs_total_step else {}
    with pytest.raises(ConfigError) as err:
        method.build(_base(model_task), method_config_resolve(name, {}), task=task, **kwargs)
    assert err.value.param == "method"


@pytest.mark.parametrize(
    ("name", "raw", "param"),
    [("miss", {"r": 64}, "method_config.r"),
     ("boft", {"block_size": 5}, "method_config.block_size"),
     ("fourierft", {"n_frequency": 5000}, "method_config.n_frequency"),
     ("poly", {"n_splits": 5}, "method_config.n_splits"),
     ("adalora", {"tinit": 15, "tfinal": 5}, "method_config.tinit"),
     ("adalora", {"target_r": 16}, "method_config.target_r")],
)
def test_config_too_big_for_the_layers_is_refused_before_training(name: str, raw: dict, param: str) -> None:
    method = method_get(name)
    with pytest.raises(ConfigError) as err:
        _build(method, "classification", method_config_resolve(name, raw), _batch("classification"))
    assert err.value.param == param


def test_dora_with_an_init_that_changes_the_base_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        method_config_resolve("lora", {"init": "pissa", "use_dora": True})
    assert err.value.param == "method_config.init"


def test_data_driven_init_without_calibration_is_refused() -> None:
    config = method_config_resolve("lora", {"init": "eva"})
    with pytest.raises(ConfigError) as err:
        method_get("lora").build(_base("sft"), config, task="sft")
    assert err.value.param == "method_config.init"
