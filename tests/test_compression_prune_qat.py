"""Magnitude pruning and quantization-aware training in one fit (Lightning #11047)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle.compression import MagnitudePruning
from lightning_mlcycle.models import ClassificationModule

qat = pytest.importorskip("lightning_mlcycle.compression.qat")


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    )


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (96,), generator=g)
    x = torch.randn(96, 1, 8, 8, generator=g) * 0.3
    for c in range(4):
        r, k = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * k : 4 * k + 4] += 1.0
    return DataLoader(TensorDataset(x, y), batch_size=32)


@pytest.mark.slow  # PT2E capture + convert + ONNX export: ~20 s on 2 cores
@pytest.mark.parametrize("prune_first", [True, False], ids=["prune-then-qat", "qat-then-prune"])
def test_prune_and_qat_in_one_fit(tmp_path, prune_first):
    import onnxruntime as ort

    module = ClassificationModule(_net(), num_classes=4)
    prune = MagnitudePruning(0.6, schedule="one_shot")
    quant = qat.QuantizationAwareTraining(freeze_observers_at=None, example_input=torch.zeros(2, 1, 8, 8))
    callbacks = [prune, quant] if prune_first else [quant, prune]
    trainer = pl.Trainer(max_epochs=2, callbacks=callbacks, default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         enable_checkpointing=False)
    trainer.fit(module, _loader())
    assert quant.prepared
    assert set(prune.masks) == {"backbone.0.weight", "backbone.3.weight", "backbone.8.weight"}
    params = dict(module.named_parameters())
    for name, mask in prune.masks.items():
        assert torch.all(params[name][~mask] == 0)  # the fake-quantized weights stayed pruned
    assert prune.sparsity_report()["overall"] == pytest.approx(0.6, abs=1e-2)
    x = next(iter(_loader()))[0]
    path = quant.export_onnx(module, tmp_path / "int8.onnx", example_input=x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    ref = module.eval()(x).detach().numpy()
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) > 0.9
