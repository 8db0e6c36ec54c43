"""Quantization-aware training in a plain Lightning Trainer, exported to an int8 ONNX model.

Run: ``python examples/quantization.py``. The LightningModule below is ordinary user code; the
``QuantizationAwareTraining`` callback trains it in fp32 for ``start_epoch`` epochs, then with fake
int8 quantization (torchao PT2E), and writes an int8 QuantizeLinear/DequantizeLinear ONNX file
that ONNX Runtime runs with integer kernels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle import DigitsDataModule
from lightning_mlcycle.compression import QuantizationAwareTraining
from lightning_mlcycle.compression.ptq import file_size, onnx_accuracy


class UserModel(pl.LightningModule):
    """A user's own model: nothing of lightning_mlcycle inside."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    root = Path(tempfile.mkdtemp(prefix="mlcycle_quant_"))
    dm = DigitsDataModule(batch_size=64)
    # fp32 for 3 epochs, then 2 epochs of QAT (the optimizer is rebuilt on the quantized graph);
    # the quantization ranges freeze for the last epoch
    qat = QuantizationAwareTraining(start_epoch=3, freeze_observers_at=4, export_path=root / "model_int8_qat.onnx")
    trainer = pl.Trainer(max_epochs=5, callbacks=[qat], default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(UserModel(), datamodule=dm)
    onnx_path = root / "model_int8_qat.onnx"  # written by the callback at the end of fit
    acc = onnx_accuracy(onnx_path, dm.test_dataloader())
    print(f"int8 QAT model: {onnx_path} ({file_size(onnx_path) / 1024:.1f} KB), "
          f"ONNX Runtime test accuracy {acc:.3f}, fake-quant val/acc {float(trainer.callback_metrics['val/acc']):.3f}")


if __name__ == "__main__":
    main()
