"""QuantizationAwareTraining: fake-quant training, convert, int8 QDQ ONNX parity, resume, test(ckpt_path)."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.compression import _pt2e
from lightning_mlcycle.compression.qat import (
    QuantizationAwareTraining,
    convert_qat,
    freeze_epoch,
    freeze_observers,
    prepare_qat,
)


def _data(n: int = 192, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    for c in range(4):  # the class lights up one quadrant: learnable in a few steps
        r, k = divmod(c, 2)
        x[y == c, :, 4 * r : 4 * r + 4, 4 * k : 4 * k + 4] += 1.0
    return TensorDataset(x, y)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    )


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _trainer(tmp_path, epochs: int, callbacks: list, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw,
    )


def _loader(shuffle: bool = False) -> DataLoader:
    return DataLoader(_data(), batch_size=32, shuffle=shuffle)


def test_fake_quant_training_converts_and_onnx_agrees(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort

    from lightning_mlcycle._onnx import to_onnx

    net = _net()
    x, y = _data().tensors
    qat = prepare_qat(net, x[:4])
    assert qat.meta[_pt2e.META_KEY]["folded"] == 2  # both conv-BN pairs folded
    assert _pt2e.fake_quantizers(qat), "no fake quantization was inserted"
    opt = torch.optim.Adam(qat.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        for i in range(0, 192, 32):
            loss = F.cross_entropy(qat(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    assert losses[-1] < losses[0]
    qat.eval()
    converted = convert_qat(qat)
    with torch.no_grad():
        ref = converted(x).numpy()
        fake = qat(x).numpy()
    # the converted model computes what the fake-quantized one simulated
    assert np.abs(ref - fake).max() < 0.05 * np.abs(fake).max() + 1e-3
    path = to_onnx(converted, x[:2], tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 1e-3
    assert (out.argmax(1) == ref.argmax(1)).mean() > 0.97
    # int8 weights: the file is far smaller than the fp32 parameters would be... for layers this
    # tiny the graph overhead dominates, so only check the weights are int8 initializers
    int8_inits = [t for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_inits
    from onnx import numpy_helper

    from lightning_mlcycle.compression.ptq import needs_reduce_range

    top = max(int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in int8_inits)
    assert top <= (63 if needs_reduce_range() else 127)  # 7-bit weights where u8s8 kernels saturate


def test_observers_freeze_and_mode_switch() -> None:
    x = _data().tensors[0]
    qat = prepare_qat(_net(), x[:4])
    qat(x[:32])
    fqs = _pt2e.fake_quantizers(qat)
    qat.eval()  # validation never moves the ranges
    assert all(int(fq.observer_enabled[0]) == 0 for fq in fqs)
    qat.train()
    assert all(int(fq.observer_enabled[0]) == 1 for fq in fqs)
    freeze_observers(qat)
    scales = [fq.scale.clone() for fq in fqs]
    qat.train()
    qat(x[:32] * 5)  # a very different range would move unfrozen scales
    assert all(torch.equal(s, fq.scale) for s, fq in zip(scales, fqs, strict=True))
    assert freeze_epoch(0.75, 8) == 6 and freeze_epoch(2, 8) == 2 and freeze_epoch(None, 8) is None


def test_callback_resume_second_fit_and_test_ckpt(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = Tiny()
    cb = QuantizationAwareTraining(example_input=_data().tensors[0][:4], freeze_observers_at=1)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = _trainer(tmp_path, 1, [cb, ckpt], limit_val_batches=2)
    trainer.fit(model, _loader(True), _loader())
    assert _pt2e.is_prepared(model.net)
    last = tmp_path / "ckpt" / "last.ckpt"
    # resume in a fresh process-like setting: new module, new callback, continue to epoch 2
    model2 = Tiny()
    cb2 = QuantizationAwareTraining(example_input=_data().tensors[0][:4], freeze_observers_at=1)
    trainer2 = _trainer(tmp_path, 2, [cb2], limit_val_batches=2)
    trainer2.fit(model2, _loader(True), _loader(), ckpt_path=last)
    assert cb2.prepared and cb2.observers_frozen  # frozen at epoch 1 of the resumed run
    assert all(int(fq.observer_enabled[0]) == 0 for fq in _pt2e.fake_quantizers(model2.net) if model2.net.training)
    # a second fit of the same module keeps the prepared graph (Lightning #7427)
    trainer3 = _trainer(tmp_path, 3, [cb2], limit_val_batches=2)
    trainer3.fit(model2, _loader(True), _loader())
    assert trainer3.current_epoch == 3
    # test(ckpt_path=...) with a plain module (Lightning #12896): prepared before the weights load
    trainer3.save_checkpoint(tmp_path / "final.ckpt")
    fresh = Tiny()
    result = _trainer(tmp_path, 1, [QuantizationAwareTraining(example_input=_data().tensors[0][:4])]).test(
        fresh, _loader(), ckpt_path=tmp_path / "final.ckpt", verbose=False
    )
    assert _pt2e.is_prepared(fresh.net)
    x = _data().tensors[0][:16]
    model2.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(model2(x), fresh(x), atol=1e-5)
    assert result[0]["test/acc"] > 0.5  # it learned; the quadrant task is easy


def test_errors() -> None:
    with pytest.raises(ValueError, match="`backend`"):
        QuantizationAwareTraining(backend="arm")
    with pytest.raises(ValueError, match="`batch_norm`"):
        QuantizationAwareTraining(batch_norm="keep")
    with pytest.raises(MLCycleError, match="freeze_observers_at"):
        QuantizationAwareTraining(freeze_observers_at=1.5)
    with pytest.raises(MLCycleError, match="start_epoch"):
        QuantizationAwareTraining(start_epoch=-1)
    with pytest.raises(MLCycleError, match=r"Layer `rnn` \(LSTM\) is not supported"):
        net = nn.Module()
        net.rnn = nn.LSTM(4, 4)
        net.fc = nn.Linear(4, 2)
        prepare_qat(net, torch.randn(2, 4))
    with pytest.raises(MLCycleError, match="has no nn.Linear or nn.Conv"):
        prepare_qat(nn.Sequential(nn.ReLU()), torch.randn(2, 4))

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum().item() > 0:  # data-dependent control flow
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(MLCycleError, match="cannot be captured by torch.export"):
        prepare_qat(Branchy(), torch.randn(2, 4))
    with pytest.raises(MLCycleError, match="module_name"):
        QuantizationAwareTraining(module_name="nope")._get(Tiny())


def test_missing_backend_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)
    with pytest.raises(MLCycleError, match=r"torchao.*pip install"):
        QuantizationAwareTraining()


class _Block(nn.Module):  # as torchvision's BasicBlock: one ReLU module called twice, `out += x`
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.head(self.relu(out))



def test_resnet_style_block_shared_relu_and_inplace_residual() -> None:
    x = torch.randn(4, 4, 6, 6)
    qat = prepare_qat(_Block(), x)
    qat(x)
    qat.eval()
    with torch.no_grad():
        assert convert_qat(qat)(x).shape == (4, 2)


@pytest.mark.parametrize(("backend", "fp32_convs"), [("onnxruntime", 0), ("x86", 1)])
def test_residual_convs_run_as_int8_in_onnxruntime(tmp_path, backend, fp32_convs) -> None:
    """With the default quantizer ONNX Runtime runs every conv of a residual block in int8.

    The x86 (Inductor) recipe leaves the conv that feeds the residual add unquantized at its
    output, so ONNX Runtime has to run it in fp32 (a ``FusedConv``).
    """
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from lightning_mlcycle._onnx import to_onnx

    torch.manual_seed(0)
    x = torch.randn(16, 4, 6, 6)
    qat = prepare_qat(_Block(), x[:4], backend=backend)
    qat(x)
    qat.eval()
    converted = convert_qat(qat)
    path = to_onnx(converted, x[:2], tmp_path / "int8.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 2 - fp32_convs
    assert sum(op in ("Conv", "FusedConv") for op in ops) == fp32_convs
    if backend == "onnxruntime":
        assert "QLinearAdd" in ops
    with torch.no_grad():
        ref = converted(x).numpy()
    out = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 1e-3
