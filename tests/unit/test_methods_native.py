"""The methods written here (not peft-backed), on every task they support with the tiny models: each builds, learns
a fixed batch, saves, loads back with its own load() and gives identical outputs; those that merge give the same
outputs merged. Then one test of each method's maths."""

from typing import Any

import pytest
import torch

from tests.unit.test_methods_table import STEPS, _base, _batch, _loss, _outputs
from workers.methods.registry import METHODS, Method, method_config_resolve, method_get

NATIVE = sorted(name for name, method in METHODS.items() if not method.peft_backed)
# the 32-wide test models and a 20-step run need bolder settings than the defaults, sized for real models
TINY: dict[str, dict[str, Any]] = {
    "adapter_houlsby": {"reduction_factor": 4},
    "adapter_pfeiffer": {"reduction_factor": 4},
    "adapter_parallel": {"reduction_factor": 4, "scaling": 1.0},
    "lisa": {"n_layers": 1, "period": 5},
    "mezo": {"lr": 1e-3},
    "mixlora": {"num_experts": 4, "r": 4},
}


def _build(name: str, task: str, **extra: Any) -> tuple[Method, Any]:
    method = method_get(name)
    config = method_config_resolve(name, {**TINY.get(name, {}), **extra})
    kwargs = {"total_step": STEPS} if method.needs_total_step else {}
    return method, method.build(_base(task), config, task=task, **kwargs)


def _train(method: Method, model: Any, batch: dict[str, torch.Tensor], steps: int = STEPS) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(1, steps + 1):
        if method.training_step:
            method.training_step(model, batch, step=step)
        else:
            model(**batch).loss.backward()
        optimizer.step()
        if method.after_step:
            method.after_step(model, step)
        optimizer.zero_grad()


@pytest.mark.parametrize(("name", "task"), [(n, t) for n in NATIVE for t in METHODS[n].tasks])
def test_native_method_learns_saves_and_loads_back(name: str, task: str, tmp_path: Any) -> None:
    batch = _batch(task)
    method, model = _build(name, task)
    before = _loss(model, batch)
    _train(method, model, batch)
    after = _loss(model, batch)
    assert after < before, f"{name} on {task}: loss {before:.4f} -> {after:.4f}"

    method.save(model, str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    expected = _outputs(model, batch)
    assert method.load is not None and method.loading
    loaded = method.load(_base(task), str(tmp_path))
    assert torch.allclose(_outputs(loaded, batch), expected, atol=1e-5), "loaded adapter gives other outputs"
    if method.mergeable:
        merged = model.merge_and_unload()
        assert torch.allclose(_outputs(merged, batch), expected, atol=1e-4), "merged differs from unmerged"


def test_lt_sft_keeps_exactly_k_parameters_and_differences_compose_by_addition(tmp_path: Any) -> None:
    from workers.methods.lt_sft.model import diff_add, diff_apply, diff_read, load

    saved = []
    for seed in (1, 2):
        method, model = _build("lt_sft", "classification", density=0.001)
        torch.manual_seed(seed)
        with torch.no_grad():  # stand-ins for the two phases' optimizer steps, which may touch every entry
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            method.after_step(model, model.switch_step)  # selection: top k kept, all reset to theta_0
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            method.after_step(model, model.switch_step + 1)  # the sparse phase puts the others back
        changed = sum(int((p != model.initial(i)).sum()) for i, p in enumerate(model.params()))
        assert sum(int(model.mask(i).sum()) for i in range(len(model.names))) == model.k
        assert changed == model.k
        method.save(model, str(tmp_path / str(seed)))
        sparse, _ = diff_read(str(tmp_path / str(seed)))
        assert sum(len(indices) for indices, _ in sparse.values()) == model.k
        saved.append(sparse)

    both = load(_base("classification"), str(tmp_path / "1"), str(tmp_path / "2"))
    one_by_one = _base("classification")
    diff_apply(one_by_one, saved[0])
    diff_apply(one_by_one, saved[1])
    added = _base("classification")
    diff_apply(added, diff_add(saved[0], saved[1]))
    base = dict(_base("classification").named_parameters())
    for name, p in both.named_parameters():
        if name.startswith("classifier"):
            continue
        dense = base[name].detach().clone().view(-1)
        for sparse in saved:
            if name in sparse:
                dense.index_add_(0, *sparse[name])
        assert torch.equal(p.view(-1), dense), name
        assert torch.equal(p, dict(one_by_one.named_parameters())[name]), name
        assert torch.allclose(p, dict(added.named_parameters())[name]), name


def test_mezo_never_calls_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.methods.mezo.model import _move

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("MeZO called backward")

    monkeypatch.setattr(torch.Tensor, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "backward", refuse)
    method, model = _build("mezo", "classification", lr=1e-1, seed=7)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.register_hook(refuse)
    before = [p.detach().clone() for p in params]
    assert method.training_step is not None
    loss = method.training_step(model, _batch("classification"), step=3)
    assert loss.grad_fn is None and all(p.grad is None for p in params)
    # the update is -lr * g * z with z drawn again from seed + step: one scalar times z for every parameter
    z = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        _move(z, 7 + 3, 1.0)  # type: ignore[arg-type]
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(params, before, strict=True)])
    direction = torch.cat([zi.flatten() for zi in z])
    scale = delta @ direction / (direction @ direction)
    assert scale != 0 and torch.linalg.norm(delta - scale * direction) < 1e-2 * torch.linalg.norm(delta)


@pytest.mark.parametrize("task", ["classification", "sft"])
def test_mezo_lora_moves_only_lora_and_the_head_and_loads_back(task: str, tmp_path: Any) -> None:
    from safetensors.torch import load_file

    method, model = _build("mezo", task, trainable="lora", lora_r=4, lr=1e-2)
    trainable = {n for n, p in model.base.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable) == (task == "classification")
    start = {n: p.detach().clone() for n, p in model.base.named_parameters()}
    batch = _batch(task)
    before = _loss(model, batch)
    _train(method, model, batch)
    assert _loss(model, batch) < before
    assert {n for n, p in model.base.named_parameters() if not torch.equal(p, start[n])} == trainable

    method.save(model, str(tmp_path))
    assert set(load_file(str(tmp_path / "adapter_model.safetensors"))) == trainable  # the base is not copied
    assert method.load is not None
    loaded = method.load(_base(task), str(tmp_path))
    assert torch.allclose(_outputs(loaded, batch), _outputs(model, batch), atol=1e-5)


def test_mezo_head_lr_scales_the_heads_step_alone() -> None:
    from workers.methods.mezo.model import _move

    method, model = _build("mezo", "classification", trainable="lora", lora_r=4, lr=0.1, head_lr=5.0, seed=7)
    named = [(n, p) for n, p in model.base.named_parameters() if p.requires_grad]
    before = [p.detach().clone() for _, p in named]
    assert method.training_step is not None
    method.training_step(model, _batch("classification"), step=3)
    z = [torch.zeros_like(p) for _, p in named]
    with torch.no_grad():
        _move(z, 7 + 3, 1.0)  # type: ignore[arg-type]
    # delta = -rate * g * z: the head's scale is head_lr / lr = 50 times the LoRA matrices'
    scales: dict[bool, list[float]] = {True: [], False: []}
    for (name, p), b, zi in zip(named, before, z, strict=True):
        delta = (p.detach() - b).flatten()
        scale = float(delta @ zi.flatten() / (zi.flatten() @ zi.flatten()))
        assert torch.allclose(delta, scale * zi.flatten(), atol=1e-6, rtol=1e-3), name
        scales[name.startswith("classifier.")].append(scale)
    rest = scales[False][0]
    assert rest != 0 and scales[False] == pytest.approx([rest] * len(scales[False]), rel=1e-2)
    assert scales[True] == pytest.approx([50 * rest] * len(scales[True]), rel=1e-2)


def test_dylora_at_rank_b_equals_the_truncated_product(tmp_path: Any) -> None:
    from workers.methods.dylora.model import DyLoraLinear

    method, model = _build("dylora", "classification", r=4, alpha=8)
    batch = _batch("classification")
    _train(method, model, batch, steps=5)
    layer = next(m for m in model.modules() if isinstance(m, DyLoraLinear))
    x = torch.randn(3, layer.linear.in_features)
    method.save(model, str(tmp_path))
    for b in (1, 2, 4):
        model.rank_set(b)
        a, bb = layer.lora_A[:b], layer.lora_B[:, :b]
        expected = x @ (layer.linear.weight + (8 / b) * bb @ a).T + layer.linear.bias
        assert torch.allclose(layer(x), expected, atol=1e-5)
        assert method.load is not None
        loaded = method.load(_base("classification"), str(tmp_path), rank=b)
        assert torch.allclose(_outputs(loaded, batch), _outputs(model, batch), atol=1e-5)
    model.rank_set(2)
    unmerged = _outputs(model, batch)
    assert torch.allclose(_outputs(model.merge_and_unload(), batch), unmerged, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_ssf_merged_equals_unmerged(bias: bool) -> None:
    from workers.methods.ssf.model import SsfLinear

    torch.manual_seed(0)
    layer = SsfLinear(torch.nn.Linear(8, 5, bias=bias), init_std=0.5)
    x = torch.randn(4, 8)
    scaled = layer.ssf_scale * (x @ layer.linear.weight.T + (layer.linear.bias if bias else 0)) + layer.ssf_shift
    assert torch.allclose(layer(x), scaled)
    assert torch.allclose(layer.merged()(x), layer(x), atol=1e-6)


def test_mixlora_routes_each_token_to_its_top_k_and_balances_by_the_formula() -> None:
    from workers.methods.mixlora.model import MixLoraFfn

    torch.manual_seed(0)  # the router's initial weights: unseeded, the test passed or failed at random
    _, model = _build("mixlora", "sft", num_experts=4, top_k=2, r=2, aux_loss_coef=0.5)
    layer = next(m for m in model.modules() if isinstance(m, MixLoraFfn))
    with torch.no_grad():
        for b in layer.lora_B.values():
            b.normal_()
    x = torch.randn(2, 5, 32)
    out = layer(x)
    flat = x.reshape(-1, 32)
    probs = torch.softmax(flat @ layer.router.weight.T, -1).detach()
    counts = torch.zeros(4)
    for t in range(flat.shape[0]):
        top = sorted(range(4), key=lambda e: -float(probs[t, e]))[:2]
        counts[top] += 1
        expected = sum(probs[t, e] / probs[t, top].sum() * layer.expert(flat[t : t + 1], e)[0] for e in top)
        # outputs of size ~10 (B ~ N(0, 1)) summed in another order: float32 rounding reaches ~2e-4
        assert torch.allclose(out.reshape(-1, 32)[t], expected, atol=1e-3)
    balance = 4 * sum(counts[e] / (flat.shape[0] * 2) * probs[:, e].mean() for e in range(4))
    assert torch.allclose(layer.balance, balance, atol=1e-6)
    model.train()
    layers = [m for m in model.modules() if isinstance(m, MixLoraFfn)]
    batch = _batch("sft")
    task_loss = model.base(**batch).loss
    assert torch.allclose(model(**batch).loss, task_loss + 0.5 * sum(m.balance for m in layers), atol=1e-6)


def test_lisa_unfreezes_exactly_n_layers_per_period() -> None:
    from workers.methods.native import blocks

    method, model = _build("lisa", "sft", n_layers=1, period=2)
    layers = blocks(model.base)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    batch = _batch("sft")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # built before the first draw, as in the Trainer
    model.train()
    draws = []
    for step in range(1, 9):
        model(**batch).loss.backward()
        trainable = [i for i, layer in enumerate(layers) if all(p.requires_grad for p in layer.parameters())]
        frozen = [i for i, layer in enumerate(layers) if not any(p.requires_grad for p in layer.parameters())]
        assert len(trainable) == 1 and len(frozen) == len(layers) - 1
        assert all(p.grad is None for i in frozen for p in layers[i].parameters())
        assert all(p.requires_grad for p in model.parameters() if id(p) not in in_layers)  # embeddings, norm, head
        draws.append(trainable[0])
        optimizer.step()
        assert method.after_step is not None
        method.after_step(model, step)
        optimizer.zero_grad()
    assert all(draws[i] == draws[i + 1] for i in range(0, 8, 2)), "a draw lasts one period"


def test_mezo_centroid_head_is_the_nearest_centroid_rule_from_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.methods.mezo.model import SCALES, centroid_head

    batch = _batch("classification")
    base = _base("classification").eval()
    random_loss = _loss(base, batch)
    features: list[torch.Tensor] = []
    handle = base.classifier.register_forward_hook(lambda m, args, out: features.append(args[0].detach()))
    with torch.no_grad():
        base(**{k: v for k, v in batch.items() if k != "labels"})
    handle.remove()
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: pytest.fail("backward called"))
    scale = centroid_head(base, [batch])
    assert scale in SCALES
    x, y = features[0], batch["labels"]
    mu = torch.stack([x[y == c].mean(0) for c in range(2)])
    nearest = torch.cdist(x, mu).argmin(dim=1)  # the rule the linear head must now compute
    logits = _outputs(base, batch)
    assert torch.equal(logits.argmax(dim=1), nearest)
    assert torch.allclose(base.classifier.weight, scale * mu, atol=1e-5)
    assert _loss(base, batch) < random_loss
    assert centroid_head(base, []) is None


def test_mezo_mean_pooling_reads_each_row_s_tokens_and_loads_back(tmp_path: Any) -> None:
    from workers.methods.mezo.model import MeanPooler

    method = method_get("mezo")
    config = method_config_resolve("mezo", {"lr": 1e-3, "pooling": "mean", "trainable": "lora", "lora_r": 4})
    batch = _batch("classification")
    base = _base("classification")
    assert method.prepare is not None
    method.prepare(base, config, batches=[batch], task="classification")
    assert isinstance(base.bert.pooler, MeanPooler)
    model = method.build(base, config, task="classification")
    model.eval()
    with torch.no_grad():
        out = base.bert(**{k: v for k, v in batch.items() if k != "labels"})
        mask = batch["attention_mask"].unsqueeze(-1).float()
        assert torch.allclose(out.pooler_output, (out.last_hidden_state * mask).sum(1) / mask.sum(1), atol=1e-6)
        # a padded row gives what the row gives alone: the padding is not in the mean
        short = int(batch["attention_mask"].sum(1).argmin())
        n = int(batch["attention_mask"][short].sum())
        alone = model(input_ids=batch["input_ids"][short : short + 1, :n],
                      attention_mask=batch["attention_mask"][short : short + 1, :n]).logits
        assert n < batch["input_ids"].shape[1]
        assert torch.allclose(alone, _outputs(model, batch)[short : short + 1], atol=1e-5)
    for step in range(1, 4):
        method.training_step(model, batch, step=step)  # type: ignore[misc]
    method.save(model, str(tmp_path))
    expected = _outputs(model, batch)
    loaded = method.load(_base("classification"), str(tmp_path))  # type: ignore[misc]
    assert isinstance(loaded.bert.pooler, MeanPooler)
    assert torch.equal(_outputs(loaded, batch), expected)


def test_mezo_mean_pooling_is_refused_where_there_is_no_pooler() -> None:
    from workers.methods.mezo.model import centroid_head, mean_pooling
    from workers.methods.registry import ConfigError

    decoder = _base("sft")
    with pytest.raises(ConfigError) as error:
        mean_pooling(decoder)
    assert error.value.param == "method_config.pooling"
    assert centroid_head(decoder, [_batch("sft")]) is None  # no classification head to set
