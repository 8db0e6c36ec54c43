"""Low-rank factorization: error bounded by the discarded singular values, ranks, callback, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle.compression import (
    LowRankFactorization,
    factorize_conv,
    factorize_linear,
    low_rank_factorize,
    rank_for,
)
from lightning_mlcycle.models import ClassificationModule
from lightning_mlcycle.models.zoo import SmallCNN


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_linear_error_is_the_discarded_singular_values(rank):
    lin = nn.Linear(12, 9)
    s = torch.linalg.svdvals(lin.weight.detach())
    two = factorize_linear(lin, rank)
    w_r = (two[1].weight @ two[0].weight).detach()
    err = lin.weight.detach() - w_r
    # Eckart-Young: Frobenius error^2 = sum of the discarded s_i^2, spectral error = s_{r+1}
    assert torch.linalg.matrix_norm(err) ** 2 == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-4)
    x = torch.randn(50, 12)
    out_err = (two(x) - lin(x)).detach().norm(dim=1)
    assert torch.all(out_err <= s[rank] * x.norm(dim=1) + 1e-5)


@pytest.mark.parametrize("rank", [2, 5])
def test_conv_error_is_bounded_by_the_discarded_singular_values(rank):
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    s = torch.linalg.svdvals(conv.weight.detach().flatten(1))
    two = factorize_conv(conv, rank)
    assert [type(m) for m in two] == [nn.Conv2d, nn.Conv2d] and two[1].kernel_size == (1, 1)
    x = torch.randn(4, 3, 9, 9)
    assert two(x).shape == conv(x).shape
    # every output pixel is W @ patch: its error is at most s_{r+1} * ||patch|| <= s_{r+1} * 3 * ||x||_pixelwise
    patches = nn.functional.unfold(x, 3, padding=1, stride=2)  # (N, 27, L)
    err = (two(x) - conv(x)).detach().flatten(2)  # (N, 8, L)
    assert torch.all(err.norm(dim=1) <= s[rank] * patches.norm(dim=1) + 1e-5)


def test_rank_choice():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert rank_for(s, (4, 4), energy=16 / 22) == 1
    assert rank_for(s, (4, 4), energy=0.9) == 2
    assert rank_for(s, (4, 4), energy=1.0) == 4
    assert rank_for(s, (100, 60), compression=0.5) == 18  # 18 * 160 <= 3000


def test_compression_halves_the_factorized_weights():
    model = SmallCNN(10, (1, 8, 8), width=16)
    before = sum(p.numel() for p in model.parameters())
    rep = low_rank_factorize(model, compression=0.45, exclude=["head.1"])
    assert rep.params_after <= 0.5 * rep.params_before
    assert "head.1" not in rep.ranks and set(rep.ranks) == {"features.0", "features.3", "features.7"}
    assert sum(p.numel() for p in model.parameters()) < before
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert all(0 <= e < 1 for e in rep.discarded_energy.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"`energy` must be in \(0, 1\], but got energy=1.5"):
        LowRankFactorization(energy=1.5)
    with pytest.raises(ValueError, match=r"`compression` must be in \(0, 1\)"):
        LowRankFactorization(compression=1.0)
    with pytest.raises(ValueError, match=r"`layers`: \['fc'\] are not Linear/Conv2d.*valid names: \['0', '2'\]"):
        low_rank_factorize(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), energy=0.9, layers=["fc"])
    with pytest.raises(ValueError, match=r"`rank` must be in \[1, 2\]"):
        factorize_linear(nn.Linear(4, 2), 3)


def test_callback_factorizes_fine_tunes_and_resumes(tmp_path):
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)),
                        batch_size=16)

    def trainer(epochs, cb):
        return pl.Trainer(max_epochs=epochs, callbacks=[cb], default_root_dir=tmp_path, logger=False,
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                          enable_checkpointing=False)

    module = ClassificationModule(SmallCNN(3, (1, 8, 8), width=8), num_classes=3)
    cb = LowRankFactorization(compression=0.5, module="backbone", exclude=["head.1"])
    t = trainer(2, cb)
    t.fit(module, loader)
    assert isinstance(module.backbone.features[3], nn.Sequential)
    ckpt = tmp_path / "lr.ckpt"
    t.save_checkpoint(ckpt)
    fresh = ClassificationModule(SmallCNN(3, (1, 8, 8), width=8), num_classes=3)
    cb2 = LowRankFactorization(compression=0.5, module="backbone", exclude=["head.1"])
    trainer(3, cb2).fit(fresh, loader, ckpt_path=ckpt)  # structure rebuilt before the weights load
    assert cb2.recipe == cb.recipe
    assert isinstance(fresh.backbone.features[3], nn.Sequential)


def test_global_allocation_meets_the_budget_with_equal_energy():
    torch.manual_seed(0)
    # one layer with a fast-decaying spectrum (nearly rank 2), one with a flat one
    fast = nn.Linear(64, 64)
    with torch.no_grad():
        fast.weight.copy_(torch.randn(64, 2) @ torch.randn(2, 64) + 0.01 * torch.randn(64, 64))
    net = nn.Sequential(fast, nn.ReLU(), nn.Linear(64, 64))
    rep = low_rank_factorize(net, compression=0.5, allocation="global")
    assert rep.params_after <= 0.5 * rep.params_before
    # the redundant layer gives up its rank; the flat one keeps what the budget allows
    assert rep.ranks["0"] < 8 < rep.ranks["2"]
    with pytest.raises(ValueError, match=r"`allocation` to be one of \['layer', 'global'\]"):
        low_rank_factorize(net, compression=0.5, allocation="model")
