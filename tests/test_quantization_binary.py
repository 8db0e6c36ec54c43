"""Binarized layers: STE gradients, training, binarize() conversion, bit-packed save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.compression.binary import (
    BinaryConv2d,
    BinaryLinear,
    binarize,
    binary_layers,
    load_binarized,
    save_binarized,
    sign_ste,
)


def test_ste_passes_gradient_inside_clip_only() -> None:
    x = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    y = sign_ste(x, clip=1.0)
    assert set(y.tolist()) == {-1.0, 1.0}
    (y * torch.arange(7.0)).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0]


@pytest.mark.parametrize("layer_cls", [BinaryLinear, BinaryConv2d])
def test_binary_layers_compute_with_signs_and_get_gradients(layer_cls) -> None:
    layer = BinaryLinear(6, 3) if layer_cls is BinaryLinear else BinaryConv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 6) if layer_cls is BinaryLinear else torch.randn(4, 2, 5, 5)
    w = layer.binary_weight()
    per_channel = w.flatten(1).abs()
    # every weight of a channel has the same magnitude: the XNOR scale, the mean |latent weight|
    assert torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel))
    assert torch.allclose(per_channel[:, 0], layer.weight.detach().abs().flatten(1).mean(1))
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def _task(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :8].sum(1) > x[:, 8:].sum(1)).long() + 2 * (x[:, 0] > 0).long()
    return x, y


@pytest.mark.parametrize("act", [nn.Hardtanh, nn.ReLU])  # ReLU: inputs >= 0 need the RSign threshold
def test_binarized_network_trains(act) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 64), nn.BatchNorm1d(64), act(),
        nn.Linear(64, 64), nn.BatchNorm1d(64), act(),
        nn.Linear(64, 4),
    )
    net = binarize(net)
    assert [type(m).__name__ for m in net if isinstance(m, nn.Linear)] == ["Linear", "BinaryLinear", "Linear"]
    x, y = _task()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_bit_packed_save_load_roundtrip(tmp_path) -> None:
    net = binarize(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16, 3),
    ))
    assert list(binary_layers(net)) == ["2", "4"]
    info = save_binarized(net, tmp_path / "b.pt")
    assert info["binary_params"] == 8 * 64 * 9 + 64 * 64 * 9
    assert info["fp32_bytes"] / info["file_bytes"] > 3  # first/last layers stay fp32
    fresh = binarize(nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16, 3),
    ))
    load_binarized(fresh, tmp_path / "b.pt")
    x = torch.randn(2, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(net(x), fresh(x), atol=1e-5)


def test_errors(tmp_path) -> None:
    net = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(MLCycleError, match="Cannot binarize a Conv1d"):
        binarize(net, layers=["0"])
    with pytest.raises(MLCycleError, match=r"\['9'\] are not modules"):
        binarize(net, layers=["9"])
    with pytest.raises(MLCycleError, match="Nothing to binarize"):
        binarize(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    with pytest.raises(TypeError, match="`scale`"):
        BinaryLinear(4, 2, scale="yes")
    with pytest.raises(ValueError, match="`clip`"):
        BinaryConv2d(1, 2, 3, clip=0)
    with pytest.raises(MLCycleError, match="call binarize"):
        save_binarized(nn.Linear(2, 2), tmp_path / "x.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(MLCycleError, match="not a file written by save_binarized"):
        load_binarized(net, tmp_path / "other.pt")
