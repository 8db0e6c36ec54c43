"""A plain user LightningModule and Trainer (not ours), with lightning_mlcycle callbacks added.

Run: ``python examples/existing_trainer.py``. Everything below the marked lines is ordinary
Lightning code; our callbacks are added to the ``callbacks=[...]`` list in a few lines.
"""

from __future__ import annotations

import tempfile

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle import DigitsDataModule, EarlyStopping, FitDiagnosis
from lightning_mlcycle.compression import MagnitudePruning
from lightning_mlcycle.export import DeploymentExport


class UserModel(pl.LightningModule):
    """A user's own model: nothing of lightning_mlcycle inside."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    root = tempfile.mkdtemp(prefix="mlcycle_example_")
    callbacks: list[pl.Callback] = []
    # --- lightning_mlcycle callbacks: add them here ---------------------------------------
    # fit state (under/over-fitting), training faults and remedies: TensorBoard + <logs>/diagnosis.md
    diagnosis = FitDiagnosis(monitor="val/acc", mode="max")
    # stop when val/loss stalls; the best epoch's weights are put back when training ends
    callbacks += [diagnosis, EarlyStopping(monitor="val/loss", patience=3)]
    # 80% of the weights pruned along Zhu & Gupta's ramp, kept at zero (also in checkpoints)
    callbacks.append(MagnitudePruning(0.8, schedule="gradual", every_n_steps=5, fine_tune_epochs=1))
    # at fit end: model.onnx (one file, dynamic batch), parity-checked, timed, with a model card
    callbacks.append(DeploymentExport(f"{root}/export", formats=["onnx"], batch_sizes=[1, 64], repeats=5))
    # --------------------------------------------------------------------------------------
    trainer = pl.Trainer(
        max_epochs=3,
        default_root_dir=root,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=pl.loggers.TensorBoardLogger(root, name="tb"),
    )
    dm = DigitsDataModule(batch_size=64)
    trainer.fit(UserModel(), datamodule=dm)
    print(f"fit diagnosis: {diagnosis.report.fit_state.value}, findings: "
          f"{[f.symptom.value for f in diagnosis.report.findings] or 'none'}")
    print(f"done: val/acc={float(trainer.callback_metrics['val/acc']):.3f}, logs in {root}")


if __name__ == "__main__":
    main()
