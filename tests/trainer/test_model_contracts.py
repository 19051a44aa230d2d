"""The training-side contract of every model family (`tests.exporters.families`):

- forward gives the declared output shapes at batch 1 and 3;
- one optimiser step on a tiny batch with fixed targets lowers the loss;
- the weights written as safetensors load back into a fresh instance that gives the same
  outputs (exactly: the same float32 tensors through the same graph).

The ONNX parity contract (export matches eager within 1e-4) is in
`tests/exporters/test_onnx_export.py`, over the same families.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from tests.exporters.families import ALL_FAMILIES

SIZE = 32


def _outputs(model: nn.Module, x: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    out = model(*x) if isinstance(x, tuple) else model(x)
    return tuple(out) if isinstance(out, tuple | list) else (out,)


@pytest.fixture(params=ALL_FAMILIES, ids=lambda f: f.__name__)
def family(request: pytest.FixtureRequest) -> type:
    return request.param  # type: ignore[no-any-return]


def _batch(family: type, n: int, seed: int = 0) -> Tensor | tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if hasattr(family, "inputs"):  # a family whose inputs are not one image batch (a GAN's)
        return family.inputs(n, SIZE, g)  # type: ignore[no-any-return]
    return torch.rand(n, family.in_channels, SIZE, SIZE, generator=g) * 2 - 1


def test_forward_shapes_at_batch_1_and_3(family: type) -> None:
    torch.manual_seed(0)
    model = family.build().eval()
    for n in (1, 3):
        with torch.no_grad():
            got = tuple(tuple(t.shape) for t in _outputs(model, _batch(family, n)))
        assert got == family.output_shapes(n, SIZE)
        assert len(got) == len(family.output_names)


def test_one_training_step_lowers_the_loss(family: type) -> None:
    torch.manual_seed(0)
    model = family.build().train()
    x = _batch(family, 4)
    # Dropout off for the comparison (eval), on for the step: the step is a real training one.
    model.eval()
    with torch.no_grad():
        before = float(family.loss(model, x))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    loss = family.loss(model, x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), (
        "a parameter got no gradient: it is not part of the training graph"
    )
    opt.step()
    model.eval()
    with torch.no_grad():
        after = float(family.loss(model, x))
    assert after < before


def test_safetensors_weights_load_back_into_the_same_outputs(family: type) -> None:
    torch.manual_seed(0)
    model = family.build().eval()
    data = save_tensors({k: v.contiguous() for k, v in model.state_dict().items()})
    torch.manual_seed(1)  # a fresh instance with other initial weights
    fresh = family.build().eval()
    x = _batch(family, 2, seed=3)
    with torch.no_grad():
        pairs = zip(_outputs(model, x), _outputs(fresh, x), strict=True)
        assert any(not torch.equal(a, b) for a, b in pairs), (
            "the fresh instance already matches: the round trip would prove nothing"
        )
        fresh.load_state_dict(load_tensors(data), strict=True)
        for a, b in zip(_outputs(model, x), _outputs(fresh, x), strict=True):
            assert torch.equal(a, b)
