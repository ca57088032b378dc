"""The training engine's fast path keeps its numerics: same seed, same losses; packing changes nothing but
speed; the token cache returns what encoding returns; an out-of-memory error halves the micro-batch."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from api.datasets.examples import Example
from tests.unit.test_methods_table import _batch, _build, _case_id, _cases
from workers.base_models import base_model_get, model_load, tokenizer_load
from workers.methods.registry import method_config_resolve, method_get
from workers.training import engine, estimate
from workers.training.data import encode_all
from workers.training.hyperparameters import Hyperparameters

WORDS = ["good", "bad", "fine film", "a dull and tedious story", "wonderful", "awful acting throughout the film"]
TRAIN = [Example(text=f"{w} {i}", label=str(i % 2)) for i, w in enumerate(WORDS * 8)]
SFT = [Example(messages=(("user", f"say {w}"), ("assistant", w))) for w in WORDS * 4]


@pytest.fixture(autouse=True)
def var_dir(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path


def losses(fit: engine.Fit) -> list[float]:
    return [h["loss"] for h in fit.trainer.state.log_history if "loss" in h]


def test_same_seed_gives_the_same_loss_curve(tmp_path: Path) -> None:
    hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=5e-3, seed=3)
    runs = [engine.examples_train(base_model="tiny-bert", task="classification", method_name="lora", method_config={},
                                  hp=hp, train=TRAIN, evaluation=TRAIN[:8], out=tmp_path / str(i)) for i in range(2)]
    first, second = losses(runs[0]), losses(runs[1])
    assert len(first) == 12
    assert first == pytest.approx(second, rel=1e-3, abs=1e-4)
    trained = [{n: p.detach() for n, p in run.trainer.model.named_parameters() if p.requires_grad} for run in runs]
    assert trained[0].keys() == trained[1].keys() and any("lora_A" in n for n in trained[0])
    for name, value in trained[0].items():  # the adapter's initialisation is drawn from the seed too
        torch.testing.assert_close(value, trained[1][name], rtol=1e-3, atol=1e-5, msg=name)


def test_the_seed_draws_the_head_and_adapter_initialisation() -> None:
    entry = base_model_get("minilm-l6")
    tokenizer, lora = tokenizer_load(entry), method_get("lora")
    config = method_config_resolve("lora", {})

    def built(seed: int) -> dict[str, torch.Tensor]:
        model = engine.model_build(entry, lora, config, task="classification", tokenizer=tokenizer,
                                   labels=["0", "1"], train_rows=[], hp=Hyperparameters(seed=seed))
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    first, again, other = built(3), built(3), built(4)
    assert any("classifier" in n for n in first) and any("lora_A" in n for n in first)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first if "lora_A" in n or "classifier.weight" in n)


def test_packed_sft_batch_has_the_loss_of_the_padded_batch() -> None:
    entry = base_model_get("tiny-llama")
    tokenizer = tokenizer_load(entry)
    model = model_load(entry, task="sft", vocab_size=len(tokenizer)).eval()
    model.config.use_cache = False  # as trainer_fit sets it: a cache turns off the packed-sequence mask
    rows = encode_all(tokenizer, "sft", SFT[:6], 64)
    padded = engine.collator_build("sft", tokenizer, packed=False)(rows)
    packed = engine.collator_build("sft", tokenizer, packed=True)(rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        assert float(model(**packed).loss) == pytest.approx(float(model(**padded).loss), rel=1e-4)
        # without the row boundaries the packed loss would differ: rows would attend across each other
        flat = {"input_ids": packed["input_ids"], "labels": packed["labels"]}
        assert float(model(**flat).loss) != pytest.approx(float(model(**padded).loss), rel=1e-4)


def test_token_cache_returns_what_encoding_returns(tmp_path: Path) -> None:
    tokenizer = tokenizer_load(base_model_get("tiny-llama"))
    for task, examples, label2id in (("sft", SFT, None), ("classification", TRAIN, {"0": 0, "1": 1})):
        fresh = encode_all(tokenizer, task, examples, 32, label2id)
        assert engine.rows_encode(tokenizer, task, examples, 32, label2id, sha256="ab" * 32) == fresh
        cached = list((tmp_path / "cache" / "tokens").glob(f"*-{task}-32-*.safetensors"))
        assert len(cached) == 1
        assert engine.rows_encode(tokenizer, task, examples, 32, label2id, sha256="ab" * 32) == fresh


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path: Path, monkeypatch: Any) -> None:
    from transformers import Trainer

    real_step = Trainer.training_step
    raised: list[int] = []

    def step_once_out_of_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not raised:
            raised.append(self.args.per_device_train_batch_size)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", step_once_out_of_memory)
    entry = base_model_get("tiny-bert")
    tokenizer = tokenizer_load(entry)
    rows = encode_all(tokenizer, "classification", TRAIN, 32, {"0": 0, "1": 1})
    model = model_load(entry, task="classification", vocab_size=len(tokenizer), labels=["0", "1"])
    lora = method_get("lora")
    model = lora.build(model, lora.config().model_dump(), task="classification")
    retries: list[engine.OomRetry] = []
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer, hp=Hyperparameters(batch_size=8),
                                 train_rows=rows, eval_rows=[], out=tmp_path, device="cpu", on_oom=retries.append)
    assert raised == [8]
    assert [(r.micro_batch, r.accumulation) for r in retries] == [(4, 2)]
    assert trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps == 8
    assert trainer.state.global_step == 6  # 48 rows / effective batch 8


def test_estimate_counts_tokens_steps_memory_and_time() -> None:
    stats = {"rows": 1000, "token_lengths": {"p50": 10, "p90": 20, "p95": 30, "p99": 40, "max": 200}}
    assert estimate.mean_length(stats["token_lengths"], 128) == pytest.approx(13.24, abs=0.01)
    estimate.calibration.cache_clear()  # measured afresh under this test's VAR_DIR
    result = estimate.job_estimate(stats=stats, base_model="tiny-bert", task="classification", method="lora",
                                   hyperparameters={"epochs": 2, "batch_size": 32}, device="cpu")
    assert result["steps"] == 64
    assert result["tokens"] == pytest.approx(2000 * 13.24, rel=0.01)
    assert result["seconds"] > 0 and result["peak_memory_bytes"] > 0
    assert list((Path(estimate.settings.VAR_DIR) / "cache" / "calibration").glob("tiny-bert-cpu-*.json"))
    long = {"epochs": 50, "batch_size": 8}  # training stops at max_train_seconds: the estimate does too
    uncapped = estimate.job_estimate(stats=stats, base_model="tiny-bert", task="classification", method="lora",
                                     hyperparameters=long, device="cpu")
    capped = estimate.job_estimate(stats=stats, base_model="tiny-bert", task="classification", method="lora",
                                   hyperparameters={**long, "max_train_seconds": 10}, device="cpu")
    assert uncapped["seconds"] > 10 and "capped" not in uncapped["basis"]
    assert capped["seconds"] == 10 and "capped" in capped["basis"] and capped["steps"] == uncapped["steps"]


def lora_tiny_bert() -> Any:
    entry = base_model_get("tiny-bert")
    tokenizer = tokenizer_load(entry)
    model = model_load(entry, task="classification", vocab_size=len(tokenizer), labels=["0", "1"])
    lora = method_get("lora")
    model = lora.build(model, {**lora.config().model_dump(), "init": "kaiming"}, task="classification")
    return model, tokenizer


def test_fast_path_stores_frozen_weights_in_bf16_and_gives_the_model_back_unchanged() -> None:
    model, tokenizer = lora_tiny_bert()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    batch = engine.collator_build("classification", tokenizer, packed=False)(
        encode_all(tokenizer, "classification", TRAIN[:8], 32, {"0": 0, "1": 1}))
    with engine.fast_path(model, device="cpu", bf16=True) as applied:
        assert applied == ["frozen_weights_bf16", "lora_fused", "dropout_int16", "attention_dropout_int16"]
        assert model.config._attn_implementation == engine.ATTENTION_FAST
        params = dict(model.named_parameters())
        assert params["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"].dtype == \
            torch.bfloat16
        assert params["base_model.model.bert.embeddings.word_embeddings.weight"].dtype == torch.bfloat16
        assert params["base_model.model.bert.embeddings.LayerNorm.weight"].dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32
                   for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert not any("forward" in vars(m) for m in model.modules())  # torch's dropout is back
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    assert model.config._attn_implementation == "sdpa"


def test_fast_path_loss_is_the_fp32_loss_within_bf16_rounding() -> None:
    model, tokenizer = lora_tiny_bert()
    model.eval()  # no dropout: the same function on both sides
    batch = engine.collator_build("classification", tokenizer, packed=False)(
        encode_all(tokenizer, "classification", TRAIN[:16], 32, {"0": 0, "1": 1}))
    with torch.no_grad():
        fp32 = float(model(**batch).loss)
        with engine.fast_path(model, device="cpu", bf16=True), torch.autocast("cpu", dtype=torch.bfloat16):
            fast = float(model(**batch).loss)
    assert fast == pytest.approx(fp32, rel=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_mask_is_exactly_zero_or_the_scale_with_probability_p(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    mask = engine.dropout_mask((500, 800), 0.05, dtype=dtype, device="cpu", scale=2.0)
    assert mask.dtype == dtype and mask.shape == (500, 800)
    assert sorted(mask.unique().tolist()) == [0.0, 2.0]
    assert float((mask == 0).float().mean()) == pytest.approx(0.05, abs=0.002)
    # p = 0 keeps everything; p = 1 - 1/65536 drops all but a few
    assert bool((engine.dropout_mask((1000,), 0.0, dtype=dtype, device="cpu") == 1).all())
    assert float(engine.dropout_mask((100_000,), 0.5, dtype=dtype, device="cpu").mean()) == pytest.approx(0.5, abs=0.01)
    torch.manual_seed(1)
    assert torch.equal(engine.dropout_mask((500, 800), 0.05, dtype=dtype, device="cpu", scale=2.0), mask)
    torch.manual_seed(2)  # made in `dtype` directly: what the fp32 mask rounds to
    direct = engine.dropout_mask((5000,), 0.1, dtype=dtype, device="cpu", scale=1 / 0.9)
    torch.manual_seed(2)
    assert torch.equal(direct, engine.dropout_mask((5000,), 0.1, dtype=torch.float32, device="cpu",
                                                   scale=1 / 0.9).to(dtype))


def _lora_grads(model: Any, batch: dict[str, Any], *, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_fused_lora_forward_gives_peft_s_loss_and_gradients(bf16: bool, monkeypatch: Any) -> None:
    """Without dropout (eval mode, gradients on) the fused forward is the same function as peft's."""
    model, tokenizer = lora_tiny_bert()
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter's contribution real
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    batch = engine.collator_build("classification", tokenizer, packed=False)(
        encode_all(tokenizer, "classification", TRAIN[:16], 32, {"0": 0, "1": 1}))
    with engine.fast_path(model, device="cpu", bf16=bf16) as applied:
        assert "lora_fused" in applied
        fused_loss, fused_grads = _lora_grads(model, batch, bf16=bf16)
    monkeypatch.setattr(engine, "_lora_fused_on", lambda model: lambda: None)  # the rest of the fast path, peft's
    with engine.fast_path(model, device="cpu", bf16=bf16):
        peft_loss, peft_grads = _lora_grads(model, batch, bf16=bf16)
    tolerance = {"rel": 2e-2, "abs": 1e-3} if bf16 else {"rel": 1e-4, "abs": 1e-6}
    assert fused_loss == pytest.approx(peft_loss, **tolerance)
    assert fused_grads.keys() == peft_grads.keys() and len(fused_grads) > 4
    for name, grad in peft_grads.items():
        if bf16 and float(grad.norm()) == 0:
            assert float(fused_grads[name].norm()) == 0, name
        elif bf16:  # bf16 rounding in different places: the same direction and size, not the same bits
            cosine = torch.nn.functional.cosine_similarity(fused_grads[name].flatten(), grad.flatten(), dim=0)
            assert float(cosine) > 0.99, name
            assert float(fused_grads[name].norm()) == pytest.approx(float(grad.norm()), rel=0.05), name
        else:
            assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-7), name


def test_first_token_last_layer_gives_the_same_loss_and_gradients(monkeypatch: Any) -> None:
    """The pooler reads position 0 of the last layer: computing the rest of that layer's output changes nothing."""
    entry = base_model_get("tiny-bert")
    tokenizer = tokenizer_load(entry)
    model = model_load(entry, task="classification", vocab_size=len(tokenizer), labels=["0", "1"])
    lora = method_get("lora")
    model = lora.build(model, {**lora.config().model_dump(), "init": "kaiming",
                               "target_modules": ["query", "key", "value", "dense"]}, task="classification")
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    batch = engine.collator_build("classification", tokenizer, packed=False)(
        encode_all(tokenizer, "classification", TRAIN[:16], 32, {"0": 0, "1": 1}))
    with engine.fast_path(model, device="cpu", bf16=False, task="classification") as applied:
        assert "first_token_last_layer" in applied
        last = model.get_base_model().bert.encoder.layer[-1].attention.self
        assert "forward" in vars(last)  # queries and scores for position 0 alone (first_token_self_attention)
        sliced_loss, sliced_grads = _lora_grads(model, batch, bf16=False)
        with torch.no_grad():
            assert model(**batch, output_hidden_states=True).hidden_states[-1].shape[1] == 1
    assert "forward" not in vars(last)  # given back
    with engine.fast_path(model, device="cpu", bf16=False) as applied:
        assert "first_token_last_layer" not in applied
        full_loss, full_grads = _lora_grads(model, batch, bf16=False)
        with torch.no_grad():
            assert model(**batch, output_hidden_states=True).hidden_states[-1].shape[1] == batch["input_ids"].shape[1]
    assert sliced_loss == pytest.approx(full_loss, rel=1e-5)
    last = [n for n in full_grads if "encoder.layer.1.output.dense.lora_A" in n]  # the sliced feed-forward's
    assert last and float(full_grads[last[0]].abs().sum()) > 0
    for name, grad in full_grads.items():
        assert torch.allclose(sliced_grads[name], grad, rtol=1e-4, atol=1e-6), name
    # not for a task that reads every position
    assert engine._first_token_last_layer(model, "token-classification") is None


def test_fused_lora_forward_applies_dropout_as_peft_with_the_same_mask() -> None:
    """In training mode: base(x) + s * B A (x * m / (1 - p)), m drawn by dropout_mask from torch's seed."""
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10)
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as LoraLinear

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.25)
    layer = LoraLinear(base, "default", config, r=4, lora_alpha=8, lora_dropout=0.25)
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    layer.train()
    x = torch.randn(3, 5, 12)
    torch.manual_seed(7)
    fused = engine.lora_linear_fast(layer, {}, x)
    torch.manual_seed(7)
    mask = engine.dropout_mask(x.shape, 0.25, dtype=x.dtype, device="cpu", scale=1 / 0.75)
    lora = layer.lora_B["default"](layer.lora_A["default"](x * mask)) * layer.scaling["default"]
    assert torch.allclose(fused, base(x) + lora, atol=1e-5)
    assert not torch.allclose(fused, base(x) + layer.lora_B["default"](layer.lora_A["default"](x)) * 2.0, atol=1e-3)
    # what it does not handle goes to peft: adapters off, merged weights
    layer.enable_adapters(False)
    assert torch.allclose(engine.lora_linear_fast(layer, {}, x), base(x))


def test_attention_with_fast_dropout_is_sdpa_without_dropout_and_masks_with_it() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal = False  # type: ignore[assignment]
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, :, 3:] = False  # the second row's last two keys are padding
    want, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    got, _ = engine.attention_fast_dropout(module, q, k, v, mask, dropout=0.0)
    assert torch.allclose(got, want, atol=1e-5)
    torch.manual_seed(3)
    dropped, _ = engine.attention_fast_dropout(module, q, k, v, mask, dropout=0.3)
    torch.manual_seed(3)
    keep = engine.dropout_mask((2, 3, 5, 5), 0.3, dtype=torch.float32, device="cpu", scale=1 / 0.7)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, torch.finfo(torch.float32).min)
    expected = ((scores.softmax(-1) * keep) @ v).transpose(1, 2)
    assert torch.allclose(dropped, expected, atol=1e-5)


@pytest.mark.parametrize("pattern", ["bool", "additive", "causal-no-mask"])
def test_attention_without_dropout_while_training_gives_sdpa_s_output_and_gradients(pattern: str,
                                                                                   monkeypatch: Any) -> None:
    """Training without attention dropout on CPU (a decoder's usual config) computes attention itself, since
    torch's CPU sdpa backward is several times slower at these shapes: the same output and gradients."""
    import transformers.integrations.sdpa_attention as sdpa_module

    torch.manual_seed(1)
    module = torch.nn.Module()
    module.is_causal = pattern == "causal-no-mask"  # type: ignore[assignment]
    q, k, v = (torch.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))
    mask = None
    if pattern != "causal-no-mask":
        mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
        mask[0, :, :, 4:] = False
        if pattern == "additive":
            mask = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    want, _ = sdpa_module.sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
    want_grads = torch.autograd.grad(want.pow(2).sum(), (q, k, v))
    calls: list[int] = []
    original = sdpa_module.sdpa_attention_forward
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    got, _ = engine.attention_fast_dropout(module, q, k, v, mask, dropout=0.0)
    assert not calls  # computed here, not by sdpa
    got_grads = torch.autograd.grad(got.pow(2).sum(), (q, k, v))
    assert torch.allclose(got, want, atol=1e-5)
    for mine, theirs in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)
    with torch.no_grad():  # evaluation: sdpa's own
        engine.attention_fast_dropout(module, q, k, v, mask, dropout=0.0)
    assert calls == [1]
    monkeypatch.setattr(engine, "MANUAL_ATTENTION_MAX_KEYS", 5)  # longer sequences: sdpa's
    engine.attention_fast_dropout(module, q, k, v, mask, dropout=0.0)
    assert calls == [1, 1]


def test_length_groups_keep_their_rows_and_come_in_a_random_order() -> None:
    lengths = [int(n) for n in torch.randint(1, 60, (4000,), generator=torch.Generator().manual_seed(0))]
    indices = engine.length_grouped_shuffled_indices(lengths, 32, generator=torch.Generator().manual_seed(1))
    assert sorted(indices) == list(range(4000))
    batches = [indices[i : i + 32] for i in range(0, 4000, 32)]
    padding = sum(32 * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches) / sum(lengths)
    assert padding < 0.1  # grouped by length: a random batching would pad ~0.9 of the real tokens here
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest first, for an early OOM
    tops = [max(lengths[i] for i in b) for b in batches[1:]]
    assert tops != sorted(tops, reverse=True)  # not transformers' longest-to-shortest run per mega-batch
    descents = sum(a > b for a, b in zip(tops, tops[1:], strict=False))
    assert 0.3 < descents / len(tops) < 0.7  # about as many steps up as down: a random order
    again = engine.length_grouped_shuffled_indices(lengths, 32, generator=torch.Generator().manual_seed(1))
    assert again == indices


def test_trainer_fit_samples_shuffled_length_groups(tmp_path: Path, settings: Any) -> None:
    settings.TRAIN_PACKING = "off"  # packed classification batches are a random sample (the test below)
    model, tokenizer = lora_tiny_bert()
    rows = encode_all(tokenizer, "classification", TRAIN, 32, {"0": 0, "1": 1})
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer,
                                 hp=Hyperparameters(batch_size=8, epochs=1), train_rows=rows, eval_rows=[],
                                 out=tmp_path, device="cpu")
    assert type(trainer._get_train_sampler()).__name__ == "ShuffledGroups"


def test_int16_dropout_drops_p_of_the_values_and_keeps_the_mean() -> None:
    layer = torch.nn.Dropout(0.1)
    x = torch.ones(400_000, requires_grad=True)
    torch.manual_seed(0)
    out = engine.dropout_fast(layer, x)
    dropped = float((out == 0).float().mean())
    assert dropped == pytest.approx(0.1, abs=0.003)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.9)]
    assert float(out.mean()) == pytest.approx(1.0, abs=0.005)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # d(out)/dx is the scaled mask
    torch.manual_seed(0)
    assert torch.equal(engine.dropout_fast(layer, x), out)  # the seed decides the mask
    assert engine.dropout_fast(layer.eval(), x) is x


def test_time_budget_stops_training_and_keeps_the_adapter(tmp_path: Path, monkeypatch: Any) -> None:
    now = iter(range(0, 10_000, 6))  # every look at the clock is 6 s later
    monkeypatch.setattr(engine, "clock", lambda: next(now))
    model, tokenizer = lora_tiny_bert()
    rows = encode_all(tokenizer, "classification", TRAIN, 32, {"0": 0, "1": 1})
    hp = Hyperparameters(batch_size=8, epochs=3, max_train_seconds=10)
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer, hp=hp, train_rows=rows,
                                 eval_rows=[], out=tmp_path, device="cpu")
    assert trainer.state.max_steps == 18
    assert trainer.state.global_step == 2  # 6 s after the first step, 12 s after the second


@pytest.mark.parametrize("fit", [True, False], ids=["fitted", "planned"])
def test_time_budget_fits_the_learning_rate_schedule_to_the_budget(tmp_path: Path, monkeypatch: Any,
                                                                   fit: bool) -> None:
    """18 planned steps, 6 s a step, a 60 s budget: the run stops after step 10. Fitted, the learning rate has
    fallen linearly to 0 by then; planned, it is still more than a third of its peak."""
    now = iter(range(0, 10_000, 6))
    monkeypatch.setattr(engine, "clock", lambda: next(now))
    model, tokenizer = lora_tiny_bert()
    rows = encode_all(tokenizer, "classification", TRAIN, 32, {"0": 0, "1": 1})
    hp = Hyperparameters(batch_size=8, epochs=3, max_train_seconds=60, schedule_fits_budget=fit,
                         learning_rate=1e-3)
    fits: list[tuple[int, int, float]] = []
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer, hp=hp, train_rows=rows,
                                 eval_rows=[], out=tmp_path, device="cpu",
                                 on_schedule_fit=lambda *fit: fits.append(fit))
    assert (trainer.state.max_steps, trainer.state.global_step) == (18, 10)
    assert fits == ([(1, 10, 6.0)] if fit else [])  # the later checks project the same end: no new fit
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert len(rates) == 10 and all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    scheduler = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
    if fit:  # re-planned after step 1 (6 s, 10% of the budget) to reach 0 at step 1 + 54 s / 6 s = 10
        # rates[s - 1] is step s's rate, the schedule's at s - 1: from step 2 on a straight line to 0 at 10
        for s in range(2, 11):
            assert rates[s - 1] == pytest.approx(rates[1] * (10 - (s - 1)) / 9, rel=1e-6)
        assert scheduler.lr_lambdas[0](10) == 0.0
    else:
        assert rates[-1] > 1e-3 / 3 and scheduler.lr_lambdas[0](10) > 0.4


def test_schedule_end_at_keeps_the_past_and_a_warmup_under_the_new_line() -> None:
    from transformers import get_linear_schedule_with_warmup

    from workers.training.callbacks import schedule_end_at

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=10, num_training_steps=100)
    before = scheduler.lr_lambdas[0]
    assert schedule_end_at(scheduler, 5, 25)
    after = scheduler.lr_lambdas[0]
    assert [after(s) for s in range(6)] == [before(s) for s in range(6)]  # steps taken keep their rates
    assert after(8) == pytest.approx(min(before(8), 0.5 * 17 / 20))  # the warmup, under a line from 0.5 at 5
    assert after(15) == pytest.approx(0.5 * 10 / 20) and after(25) == 0.0 and after(60) == 0.0
    assert not schedule_end_at(torch.optim.lr_scheduler.StepLR(optimizer, 10), 5, 25)  # not a LambdaLR


def test_threads_follow_idle_cores(settings: Any) -> None:
    cpus = os.sched_getaffinity(0)
    before = engine.cpu_sample(cpus)
    sum(i * i for i in range(3_000_000))  # this process keeps a core busy: that core counts as free
    after = engine.cpu_sample(cpus)
    assert before is not None and after is not None
    assert 0.2 <= engine.cores_free(before, after) <= len(cpus) + 0.1
    assert 1 <= engine.threads_for_load("cpu") <= len(cpus)
    settings.TRAIN_THREADS = 1
    assert engine.threads_for_load("cpu") == 1


# every method on every task; the LoRA variants (init, DoRA) on classification alone, to keep this short
FAST_PATH_CASES = [c for c in _cases() if c[1] == "classification" or c[0] != "lora" or not c[2]]


@pytest.mark.parametrize("case", FAST_PATH_CASES, ids=_case_id)
def test_every_peft_method_trains_on_the_fast_path(case: tuple[str, str, dict[str, Any]]) -> None:
    """The methods table's cases (tests/unit/test_methods_table.py), a few steps as trainer_fit runs them: frozen
    weights in bf16 under autocast, int16 dropout; then the model is handed back with its fp32 base."""
    name, task, extra = case
    method = method_get(name)
    batch = _batch(task)
    model = _build(method, task, method_config_resolve(name, extra), batch)
    assert engine.autocast_safe(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    with engine.fast_path(model, device="cpu", bf16=True) as applied:
        assert "frozen_weights_bf16" in applied
        for step in range(1, 3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            assert torch.isfinite(loss), f"{name} on {task}: loss {loss}"
            loss.backward()
            optimizer.step()
            if method.after_step:
                method.after_step(model, step)
            optimizer.zero_grad()
    params = dict(model.named_parameters())
    assert all(params[n].dtype == p.dtype and torch.equal(params[n], p) for n, p in frozen.items() if n in params)
    assert any(not torch.equal(params[n], p) for n, p in trainable.items() if n in params), f"{name}: nothing moved"


def test_niced_work_counts_as_free_cores() -> None:
    """A worker that is not niced counts niced processes' CPU as free (they yield to it): with every core busy
    with nice-19 spinners, the cores still read as free; counting them as used would leave about none."""
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        pytest.skip("this test process is niced itself: niced work does not yield to it")
    cpus = os.sched_getaffinity(0)
    spin = "import os, time\nos.nice(19)\nend = time.time() + 4\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in cpus]
    try:
        time.sleep(1.0)
        before = engine.cpu_sample(cpus)
        time.sleep(1.5)
        after = engine.cpu_sample(cpus)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert before is not None and after is not None
    assert engine.cores_free(before, after) >= len(cpus) / 2


def test_lt_sft_sparse_phase_trains_as_a_run_of_its_own(tmp_path: Path) -> None:
    """At LT-SFT's selection the optimizer's moments are cleared and the learning rate starts again from its peak
    (linear to 0 at the end), so the sparse phase is trained like the paper's second run, not on a decayed tail."""
    hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=1e-3, seed=0)  # 12 steps, the switch at step 6
    fit = engine.examples_train(base_model="tiny-bert", task="classification", method_name="lt_sft",
                                method_config={"density": 0.01, "full_phase": 0.5}, hp=hp, train=TRAIN,
                                evaluation=TRAIN[:8], out=tmp_path)
    model = fit.trainer.model
    assert model.phase_start == 6
    lr = {h["step"]: h["learning_rate"] for h in fit.trainer.state.log_history if "learning_rate" in h}
    # the rate each step used: the job's linear schedule through step 6 (the switch), then its peak again
    assert lr[6] == pytest.approx(1e-3 * 7 / 12)  # step s uses the schedule at s - 1
    assert lr[7] == pytest.approx(1e-3)
    assert lr[10] == pytest.approx(1e-3 * 3 / 6)  # falling to 0 at step 12
    optimizer = getattr(fit.trainer.optimizer, "optimizer", fit.trainer.optimizer)
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {6}  # every moment was started afresh at the switch: 6 steps since, not 12


def test_packed_classification_batch_gives_the_padded_loss_and_gradients() -> None:
    """One sequence of the rows end to end, a block-diagonal mask and each row's first token for the pooler: the
    same function of the same rows as the padded batch, without the padding."""
    model, tokenizer = lora_tiny_bert()
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.eval()
    assert engine.classification_packable(model, "classification")
    rows = encode_all(tokenizer, "classification", TRAIN, 32, {"0": 0, "1": 1})
    padded = engine.collator_build("classification", tokenizer, packed=False)(rows)
    packed = engine.PackedClassification(tokenizer.pad_token_id)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    bins = engine.PackedClassification.bins_for(lengths)
    assert bins >= 2 and packed["input_ids"].shape[0] == bins and "attention_mask" not in packed
    real = packed["position_ids"] != engine.PAD_POSITION
    assert int(real.sum()) == sum(lengths)  # every token once
    assert packed["input_ids"].numel() - sum(lengths) < max(lengths)  # the bins even out to less than a row
    assert sorted(packed["labels"].tolist()) == sorted(r["labels"] for r in rows)
    assert int(padded["attention_mask"].eq(0).sum()) > 0  # the padded batch does have padding to save
    with engine.fast_path(model, device="cpu", bf16=False, task="classification"):
        padded_loss, padded_grads = _lora_grads(model, padded, bf16=False)
        packed_loss, packed_grads = _lora_grads(model, packed, bf16=False)
        with torch.no_grad():
            logits = model(**packed).logits
            # the rows in bin order: match each packed row to its padded row by its tokens
            order = []
            for b, row in zip(*(packed["position_ids"] == 0).nonzero(as_tuple=True), strict=True):
                n = 1 + int((packed["position_ids"][b, row + 1 :] > 0).int().cumprod(0).sum())
                tokens = packed["input_ids"][b, row : row + n].tolist()
                order.append(next(i for i, r in enumerate(rows) if r["input_ids"] == tokens and i not in order))
            assert torch.allclose(logits, model(**padded).logits[order], rtol=1e-4, atol=1e-5)
        # the mask matters: without it the rows attend across each other and the loss is another
        leaky = {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
        with torch.no_grad():
            assert float(model(**{k: v for k, v in leaky.items() if k != "labels"}).logits[0, 0]) != pytest.approx(
                float(logits[0, 0]), rel=1e-4)
    assert logits.shape == (len(rows), 2)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, rtol=1e-4, atol=1e-6), name
    pad = engine.PAD_POSITION
    mask, starts, positions = engine.packed_mask(torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, pad, pad]]))
    assert starts.nonzero().tolist() == [[0, 0], [0, 3], [0, 5], [1, 0], [1, 2]]
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 0, 0, 0]] * 3 + [[0, 0, 0, 1, 1, 0]] * 2 + [[0, 0, 0, 0, 0, 1]]
    # padding is no row's key, and attends to itself alone
    assert mask[1, 0].int().tolist() == [[1, 1, 0, 0, 0, 0]] * 2 + [[0, 0, 1, 1, 0, 0]] * 2 + [
        [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]
    assert positions[1].tolist() == [0, 1, 0, 1, 0, 0]


def test_trainer_fit_packs_classification_batches_in_a_random_order(tmp_path: Path, settings: Any) -> None:
    model, tokenizer = lora_tiny_bert()
    rows = encode_all(tokenizer, "classification", TRAIN, 32, {"0": 0, "1": 1})
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer,
                                 hp=Hyperparameters(batch_size=8, epochs=1), train_rows=rows, eval_rows=rows[:8],
                                 out=tmp_path, device="cpu")
    assert type(trainer._get_train_sampler()).__name__ == "RandomSampler"
    batch = next(iter(trainer.get_train_dataloader()))
    assert "position_ids" in batch and "attention_mask" not in batch and batch["labels"].shape == (8,)
    assert trainer.get_eval_dataloader().collate_fn(rows[:4])["input_ids"].shape[0] == 4  # evaluation: padded
    assert trainer.state.global_step == 6 and all(h["loss"] > 0 for h in trainer.state.log_history if "loss" in h)
    settings.TRAIN_PACKING = "off"
    model, tokenizer = lora_tiny_bert()
    trainer = engine.trainer_fit(model, task="classification", tokenizer=tokenizer,
                                 hp=Hyperparameters(batch_size=8, epochs=1), train_rows=rows, eval_rows=[],
                                 out=tmp_path, device="cpu")
    assert type(trainer._get_train_sampler()).__name__ == "ShuffledGroups"
    assert next(iter(trainer.get_train_dataloader()))["input_ids"].shape[0] == 8


def test_lean_steps_log_the_trainer_s_flops_and_clip_and_zero_as_the_module_tree_does(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    model, tokenizer = lora_tiny_bert()
    args = TrainingArguments(output_dir=str(tmp_path), max_grad_norm=0.5, report_to=[], use_cpu=True)
    plain, lean = Trainer(model=model, args=args), engine._lean_steps(Trainer)(model=model, args=args)
    inputs = {"input_ids": torch.ones((4, 9), dtype=torch.long)}
    assert lean.floating_point_ops(inputs) == plain.floating_point_ops(inputs) > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    grads = [torch.randn_like(p) * 3 for p in trainable]
    clipped = {}
    for name, trainer in (("plain", plain), ("lean", lean)):
        for param, grad in zip(trainable, grads, strict=True):
            param.grad = grad.clone()
        norm = trainer._clip_grad_norm(model)
        clipped[name] = (float(norm), [p.grad.clone() for p in trainable])
    assert clipped["lean"][0] == pytest.approx(clipped["plain"][0]) and clipped["plain"][0] > 0.5
    assert all(torch.equal(a, b) for a, b in zip(clipped["lean"][1], clipped["plain"][1], strict=True))
    assert torch.cat([g.flatten() for g in clipped["lean"][1]]).norm() == pytest.approx(0.5, rel=1e-4)
    undo = engine._zero_grad_lean(model)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    undo()
    assert "zero_grad" not in model.__dict__
