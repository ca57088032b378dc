"""Batches split between the job's process and a fork (workers/training/split.py): the same training as one
process (same losses without dropout), for classification and packed sft, and the job goes on alone when the
fork dies."""

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from api.datasets.examples import Example
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.methods.registry import method_get
from workers.training import engine, split
from workers.training.data import encode_all
from workers.training.hyperparameters import Hyperparameters

WORDS = ["good", "bad", "fine film", "a dull and tedious story", "wonderful", "awful acting throughout the film"]
TRAIN = [Example(text=f"{w} {i}", label=str(i % 2)) for i, w in enumerate(WORDS * 8)]
SFT = [Example(messages=(("user", f"say {w} {i}"), ("assistant", w))) for i, w in enumerate(WORDS * 4)]


@pytest.fixture(autouse=True)
def var_dir(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path


def _model(base: str, task: str) -> tuple[Any, Any]:
    """LoRA on a tiny model with every dropout off, so that two runs compute the same function."""
    entry = base_model_get(base)
    tokenizer = tokenizer_load(entry)
    torch.manual_seed(0)
    model = model_load(entry, task=task, vocab_size=len(tokenizer), labels=["0", "1"] if task != "sft" else None)
    lora = method_get("lora")
    model = lora.build(model, {**lora.config().model_dump(), "init": "kaiming", "dropout": 0.0}, task=task)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        if hasattr(config, "attention_probs_dropout_prob"):
            config.attention_probs_dropout_prob = 0.0
    return model, tokenizer


def _fit(tmp_path: Path, base: str, task: str, examples: list[Example], *, halves: int, monkeypatch: Any,
         callbacks: list[Any] | None = None) -> Any:
    monkeypatch.setattr(engine, "split_threads", lambda device, splittable: halves if splittable else 0)
    model, tokenizer = _model(base, task)
    rows = encode_all(tokenizer, task, examples, 64, {"0": 0, "1": 1} if task != "sft" else None)
    hp = Hyperparameters(batch_size=8, epochs=4, learning_rate=2e-2, seed=1)
    return engine.trainer_fit(model, task=task, tokenizer=tokenizer, hp=hp, train_rows=rows, eval_rows=[],
                              out=tmp_path / f"out-{halves}", device="cpu", callbacks=callbacks or [],
                              splittable=True)


def _losses(trainer: Any) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize(("base", "task", "examples", "packing"),
                         [("tiny-bert", "classification", TRAIN, "auto"), ("tiny-bert", "classification", TRAIN, "off"),
                          ("tiny-llama", "sft", SFT, "auto")], ids=["classification-packed", "classification", "sft"])
def test_split_training_follows_the_one_process_loss_curve(tmp_path: Path, monkeypatch: Any, caplog: Any, settings: Any,
                                                           base: str, task: str, examples: list[Example],
                                                           packing: str) -> None:
    settings.TRAIN_PACKING = packing
    alone = _losses(_fit(tmp_path, base, task, examples, halves=0, monkeypatch=monkeypatch))
    with caplog.at_level(logging.INFO, logger="workers.training.split"):
        trainer = _fit(tmp_path, base, task, examples, halves=1, monkeypatch=monkeypatch)
    assert any("split between this process and a fork" in r.message for r in caplog.records)
    assert not trainer.fork_failed and trainer.fork_peer is None  # closed at the end
    together = _losses(trainer)
    assert len(together) == len(alone) >= 6
    assert alone[-1] < alone[0]  # it learns
    # the halves' sums differ from the whole batch's only by bf16 rounding (autocast is on for both)
    assert together == pytest.approx(alone, rel=3e-2, abs=3e-3)


def test_both_processes_train_with_every_module_in_training_mode(tmp_path: Path, monkeypatch: Any) -> None:
    """A loaded model's own modules start in eval mode (from_pretrained), the adapter's in training mode, so
    model.training alone says True: the split must still turn the dropout of the base on, in both processes."""
    monkeypatch.setattr(engine, "split_threads", lambda device, splittable: 1 if splittable else 0)
    entry = base_model_get("tiny-bert")
    tokenizer = tokenizer_load(entry)
    model = model_load(entry, task="classification", vocab_size=len(tokenizer), labels=["0", "1"])
    model.eval()
    lora = method_get("lora")
    model = lora.build(model, lora.config().model_dump(), task="classification")
    assert model.training and not model.get_base_model().bert.embeddings.dropout.training
    seen: list[str] = []

    def training_only(module: Any, args: Any) -> None:
        if not module.training:  # in the fork, this fails its half, and the parent gives the fork up
            seen.append(type(module).__name__)
            raise AssertionError(f"{type(module).__name__} in eval mode during training")

    for module in model.modules():
        module.register_forward_pre_hook(training_only)
    rows = encode_all(tokenizer, "classification", TRAIN, 64, {"0": 0, "1": 1})
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer,
                                 hp=Hyperparameters(batch_size=8, epochs=1, seed=1), train_rows=rows, eval_rows=[],
                                 out=tmp_path / "out", device="cpu", splittable=True)
    assert not seen and not trainer.fork_failed
    assert trainer.state.global_step == trainer.state.max_steps == 6


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "stops-answering"])
def test_a_fork_that_dies_leaves_the_job_training_alone(tmp_path: Path, monkeypatch: Any, caplog: Any,
                                                        how: signal.Signals) -> None:
    monkeypatch.setattr(split, "ANSWER_TIMEOUT_S", 2.0)

    class KillTheFork(TrainerCallback):
        killed = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            trainer_peer = holder["trainer"].fork_peer if "trainer" in holder else None
            if state.global_step == 2 and trainer_peer is not None:
                os.kill(trainer_peer.pid, how)
                self.killed = trainer_peer.pid

    holder: dict[str, Any] = {}
    original = split.split_trainer_class

    def remember(*args: Any, **kwargs: Any) -> Any:
        cls = original(*args, **kwargs)
        init = cls.__init__

        def __init__(self: Any, *a: Any, **k: Any) -> None:
            init(self, *a, **k)
            holder["trainer"] = self

        cls.__init__ = __init__
        return cls

    monkeypatch.setattr(engine, "split_trainer_class", remember)
    alone = _losses(_fit(tmp_path, "tiny-bert", "classification", TRAIN, halves=0, monkeypatch=monkeypatch))
    killer = KillTheFork()
    with caplog.at_level(logging.WARNING, logger="workers.training.split"):
        trainer = _fit(tmp_path, "tiny-bert", "classification", TRAIN, halves=1, monkeypatch=monkeypatch,
                       callbacks=[killer])
    assert killer.killed and trainer.fork_failed
    with pytest.raises(ChildProcessError):  # reaped, a stopped one killed first: no zombie, no stray process
        os.waitpid(killer.killed, os.WNOHANG)
    assert any("training on in this process alone" in r.message for r in caplog.records)
    assert trainer.state.global_step == trainer.state.max_steps
    assert _losses(trainer) == pytest.approx(alone, rel=3e-2, abs=3e-3)


def test_no_shared_memory_for_the_fork_leaves_the_job_training_alone(tmp_path: Path, monkeypatch: Any) -> None:
    def no_room(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unable to write to file </torch_1_0>: No space left on device (28)")

    monkeypatch.setattr(split.ForkPeer, "__init__", no_room)
    trainer = _fit(tmp_path, "tiny-bert", "classification", TRAIN, halves=1, monkeypatch=monkeypatch)
    assert trainer.fork_failed and trainer.fork_peer is None
    assert trainer.state.global_step == trainer.state.max_steps
    assert torch.get_num_threads() >= 1


def test_batches_split_by_rows_or_at_a_packed_sequence_boundary() -> None:
    batch = {"input_ids": torch.arange(15).view(5, 3), "labels": torch.arange(5)}
    first, second = split.batch_split(batch)  # type: ignore[misc]
    assert first["input_ids"].shape == (2, 3) and second["input_ids"].shape == (3, 3)
    assert torch.equal(torch.cat([first["labels"], second["labels"]]), batch["labels"])
    packed = {"input_ids": torch.arange(10).view(1, 10), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4]]),
              "labels": torch.arange(10).view(1, 10)}
    first, second = split.batch_split(packed)  # type: ignore[misc]
    assert first["position_ids"].tolist() == [[0, 1, 2, 0, 1]] and second["position_ids"].tolist() == [[0, 1, 2, 3, 4]]
    # a packed classification batch: one label per sequence, cut at the boundary nearest the middle token
    rows = {"input_ids": torch.arange(10).view(1, 10), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1, 2, 3]]),
            "token_type_ids": torch.zeros(1, 10, dtype=torch.long), "labels": torch.tensor([1, 0, 1])}
    first, second = split.batch_split(rows)  # type: ignore[misc]
    assert first["input_ids"].tolist() == [[0, 1, 2, 3, 4, 5]] and first["labels"].tolist() == [1, 0]
    assert second["position_ids"].tolist() == [[0, 1, 2, 3]] and second["labels"].tolist() == [1]
    assert second["token_type_ids"].shape == (1, 4)
    assert split.loss_items(first) == 2 and split.loss_items(second) == 1
    # several bins (engine.PackedClassification): each half takes whole bins and their rows' labels
    pad = -1
    bins = {"input_ids": torch.arange(15).view(3, 5),
            "position_ids": torch.tensor([[0, 1, 0, 1, 2], [0, 1, 2, 3, pad], [0, 1, 2, 0, 1]]),
            "token_type_ids": torch.zeros(3, 5, dtype=torch.long), "labels": torch.tensor([1, 0, 1, 0, 1])}
    first, second = split.batch_split(bins)  # type: ignore[misc]
    assert first["input_ids"].shape == (1, 5) and first["labels"].tolist() == [1, 0]
    assert second["input_ids"].shape == (2, 5) and second["labels"].tolist() == [1, 0, 1]
    one_sequence = {"input_ids": torch.arange(4).view(1, 4), "position_ids": torch.arange(4).view(1, 4)}
    assert split.batch_split(one_sequence) is None
    assert split.batch_split({"input_ids": torch.zeros(1, 3, dtype=torch.long)}) is None
    assert split.loss_items({"labels": torch.tensor([[1, -100, 2], [-100, -100, 3]])}) == 3
    assert split.loss_items({"labels": torch.tensor([0, 1, 1])}) == 3
    assert split.loss_items({"labels": torch.tensor([[5, -100, 2, 3]])}, shifted=True) == 2  # a causal LM's shift


def test_frames_carry_tensors_of_every_dtype_through_a_pipe() -> None:
    read, write = os.pipe()
    tensors = {"ids": torch.arange(12).view(3, 4), "half": torch.randn(2, 5).to(torch.bfloat16),
               "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 3)}
    try:
        split.frame_send(write, {"num_items_in_batch": 7}, tensors)
        os.close(write)
        write = -1
        frame = split.frame_receive(read, timeout=5)
        assert frame is not None
        meta, got = frame
        assert meta == {"num_items_in_batch": 7}
        assert got.keys() == tensors.keys()
        assert all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in tensors.items())
        assert split.frame_receive(read, timeout=5) is None  # the writer closed
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_split_is_only_for_cpu_methods_with_the_trainer_s_own_step(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert engine.split_threads("cpu", True) == 1
    assert engine.split_threads("cpu", False) == 0  # MeZO's own step, LT-SFT's after-step hook...
    assert engine.split_threads("cuda", True) == 0
    settings.TRAIN_FORK = "off"
    assert engine.split_threads("cpu", True) == 0
    settings.TRAIN_FORK = "auto"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert engine.split_threads("cpu", True) == 0  # one free core: nothing to split over
