"""MAD-X's invertible adapter (optional on every bottleneck placement): the coupling is exactly invertible, starts
as the identity, trains, and round-trips through save and load on every task."""

from typing import Any

import pytest
import torch

from tests.unit.test_methods_native import _build, _train
from tests.unit.test_methods_table import _base, _batch, _loss, _outputs
from workers.methods.bottleneck_adapter.model import InvertibleAdapter
from workers.methods.registry import ConfigError

CONFIG = {"reduction_factor": 4, "invertible_reduction_factor": 2, "non_linearity": "relu"}


def test_coupling_inverts_exactly_and_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    adapter = InvertibleAdapter(32, CONFIG, torch.zeros(1))
    x = torch.randn(3, 5, 32)
    assert torch.equal(adapter(x), x)  # F and G start at zero
    for module in (adapter.f.up, adapter.g.up):
        torch.nn.init.normal_(module.weight)
    y = adapter(x)
    assert not torch.allclose(y, x)
    assert torch.allclose(adapter.inverse(y), x, atol=1e-5)
    assert torch.allclose(adapter(adapter.inverse(x)), x, atol=1e-5)
    # NICE: the first half moves by F of the second, the second by G of the new first
    assert torch.allclose(y[..., :16], x[..., :16] + adapter.f(x[..., 16:]))
    assert torch.allclose(y[..., 16:], x[..., 16:] + adapter.g(y[..., :16]))


def test_odd_hidden_size_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        InvertibleAdapter(33, CONFIG, torch.zeros(1))
    assert err.value.param == "method_config.invertible"


# every placement and every task, each once (the coupling does not depend on the placement)
@pytest.mark.parametrize(("name", "task"), [("adapter_houlsby", "classification"), ("adapter_pfeiffer", "sft"),
                                            ("adapter_parallel", "token-classification")])
def test_invertible_adapter_trains_saves_and_loads_back(name: str, task: str, tmp_path: Any) -> None:
    batch = _batch(task)
    method, model = _build(name, task, invertible=True)
    inv = model.base.invertible_adapter
    before = _loss(model, batch)
    _train(method, model, batch)
    assert _loss(model, batch) < before
    assert inv.f.up.weight.abs().sum() > 0 and inv.g.up.weight.abs().sum() > 0, "the coupling did not train"

    method.save(model, str(tmp_path))
    loaded = method.load(_base(task), str(tmp_path))
    assert torch.allclose(_outputs(loaded, batch), _outputs(model, batch), atol=1e-5)
    plain = method.load(_base(task), str(tmp_path))
    with torch.no_grad():  # the same adapters without the coupling's effect: the outputs must change
        for p in plain.base.invertible_adapter.parameters():
            p.zero_()
    assert not torch.allclose(_outputs(plain, batch), _outputs(model, batch), atol=1e-4)


def test_sft_inverts_before_the_language_model_head() -> None:
    _, model = _build("adapter_pfeiffer", "sft", invertible=True)
    inv = model.base.invertible_adapter
    with torch.no_grad():
        for module in (inv.f.up, inv.g.up):
            torch.nn.init.normal_(module.weight)
    seen: dict[str, torch.Tensor] = {}
    head = model.base.get_output_embeddings()
    head.register_forward_hook(lambda module, args, output: seen.update(head_input=args[0]))
    model.eval()
    with torch.no_grad():
        out = model.base.model(input_ids=_batch("sft")["input_ids"])  # the decoder alone, no head
        model.base(input_ids=_batch("sft")["input_ids"])
    assert torch.allclose(seen["head_input"], inv.inverse(out.last_hidden_state), atol=1e-6)
