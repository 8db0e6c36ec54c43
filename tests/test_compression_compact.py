"""Compact convolutions: depthwise-separable replacement, SVD initialization, callback, errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle.compression import (
    CompactConvolutions,
    compact_convolutions,
    depthwise_separable,
)
from lightning_mlcycle.models import ClassificationModule
from lightning_mlcycle.models.zoo import SmallCNN


def test_separable_init_is_exact_for_rank_one_slices():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    with torch.no_grad():  # every input channel's slice is an outer product: rank 1
        conv.weight.copy_(torch.randn(6, 4, 1, 1) * torch.randn(1, 4, 3, 3))
    sep = depthwise_separable(conv, 1)
    assert sep[0].groups == 4 and sep[1].kernel_size == (1, 1)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(sep(x), conv(x), atol=1e-4, rtol=1e-4)


def test_separable_error_is_bounded_by_the_discarded_singular_values():
    conv = nn.Conv2d(3, 8, 3, bias=False)
    sep = depthwise_separable(conv, 2)
    # reconstructed full weight: pointwise (8, 3*2) x depthwise (3*2, 9)
    pw = sep[1].weight.view(8, 3, 2)
    dw = sep[0].weight.view(3, 2, 9)
    w_hat = torch.einsum("ocm,cmk->ock", pw, dw).detach()
    w = conv.weight.detach().view(8, 3, 9)
    for c in range(3):
        s = torch.linalg.svdvals(w[:, c])
        err = torch.linalg.matrix_norm(w[:, c] - w_hat[:, c])
        assert err ** 2 == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-3, abs=1e-8)


def test_model_gets_fewer_weights_same_outputs_shape():
    model = SmallCNN(10, (1, 8, 8), width=16)
    before = sum(p.numel() for p in model.parameters())
    recipe = compact_convolutions(model)
    assert set(recipe) == {"features.3", "features.7"}  # the 1-channel stem is left alone
    assert sum(p.numel() for p in model.parameters()) < 0.4 * before
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`depth_multiplier` must be an integer >= 1, but got depth_multiplier=0"):
        CompactConvolutions(depth_multiplier=0)
    with pytest.raises(ValueError, match=r"`layers`: \['features.0'\] are not k x k Conv2d.*valid names: \['features.3'"):
        compact_convolutions(SmallCNN(10, (1, 8, 8), width=4), layers=["features.0"])
    with pytest.raises(ValueError, match="Only k x k"):
        depthwise_separable(nn.Conv2d(4, 4, 1))


def test_callback_replaces_and_fine_tunes(tmp_path):
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)),
                        batch_size=16)
    module = ClassificationModule(SmallCNN(3, (1, 8, 8), width=8), num_classes=3)
    cb = CompactConvolutions(module="backbone")
    trainer = pl.Trainer(max_epochs=1, callbacks=[cb], default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         enable_checkpointing=False)
    before = module.backbone.features[3].weight.detach().clone()
    trainer.fit(module, loader)
    assert set(cb.recipe) == {"features.3", "features.7"}
    dw = module.backbone.features[3][0]
    assert dw.groups == 8 and dw.weight.grad is not None  # the new layers trained
    assert before.shape == (16, 8, 3, 3)
