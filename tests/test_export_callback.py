"""DeploymentExport in a real Trainer with a plain user LightningModule."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle import DigitsDataModule, MLCycleError
from lightning_mlcycle.export import DeploymentExport, Predictor, load_model_card


class UserModel(pl.LightningModule):
    """Not ours: no hparams with shapes or class names."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.slow
def test_deployment_export_in_a_trainer_and_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pl.seed_everything(0)
    cb = DeploymentExport(
        formats=["onnx"], batch_sizes=[1, 4], warmup=0, repeats=2, max_samples=200
    )
    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[cb],
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    dm = DigitsDataModule(batch_size=64)
    model = UserModel()
    trainer.fit(model, datamodule=dm)
    out = tmp_path / "tb" / "export"
    assert cb.exports == 1 and cb.last_dir == str(out)
    assert (out / "model.onnx").is_file() and (out / "latency.md").is_file()
    card = load_model_card(out)
    assert card["interface"]["input_shape"] == ["batch", 1, 8, 8]
    assert card["interface"]["preprocessing"]["raw_range"] == [0.0, 16.0]
    assert card["interface"]["preprocessing"]["normalization"]["mean"] == pytest.approx(
        dm.normalization["mean"]
    )
    assert card["name"] == "UserModel" and "val/acc" in card["metrics"]
    assert all(p["passed"] for a in card["artifacts"] for p in a["parity"])
    # the exported model predicts what the trained module predicts, from raw digits
    x_raw, _ = dm.raw_split("test")
    with torch.no_grad():
        expected = model((x_raw - dm.mean) / dm.std).argmax(-1).numpy()
    np.testing.assert_array_equal(Predictor(out).predict(x_raw.numpy()), expected)
    # the latency table and card went to TensorBoard's text tab
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    assert {"export/latency/text_summary", "export/model_card/text_summary"} <= set(
        acc.Tags()["tensors"]
    )
    # state round-trips through a real checkpoint
    ckpt = tmp_path / "resume.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"][cb.state_key]
    fresh = DeploymentExport(formats=["onnx"], batch_sizes=[1, 4])
    fresh.load_state_dict(state)
    assert fresh.exports == 1 and fresh.last_dir == str(out)
    assert fresh.last_summary["export/parity_passed"] == 1
    fresh.load_state_dict({})  # keys added later default sensibly
    assert fresh.exports == 0 and fresh.last_dir is None


def test_on_demand_export_without_fit_end(tmp_path):
    cb = DeploymentExport(
        tmp_path / "exp",
        formats=["pt2"],
        on_fit_end=False,
        batch_sizes=[2],
        warmup=0,
        repeats=1,
        max_samples=32,
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    model = UserModel()
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    assert cb.exports == 0 and not (tmp_path / "exp").exists()
    result = cb.export(trainer, model)  # no datamodule: the validation loader is used
    assert cb.exports == 1 and (tmp_path / "exp" / "model.pt2").is_file()
    assert result is not None and result.parity[0].samples == 32
    assert result.card["interface"]["input_shape"] == ["batch", 1, 8, 8]
    assert result.card["class_names"] == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"formats": ["onnx", "keras"]}, "`formats` to be one of"),
        ({"formats": []}, "`formats` cannot be empty"),
        ({"max_samples": 0}, "`max_samples` must be a positive integer"),
        ({"batch_sizes": [1, -8]}, "`batch_sizes` must be positive integers"),
        ({"repeats": 0}, "`repeats` must be a positive integer"),
        ({"warmup": -1}, "`warmup` cannot be negative"),
        ({"opset": 13}, "`opset` must be an integer >= 18"),
        ({"device": "tpu"}, "`device` to be one of"),
        ({"tolerances": {"int4": {}}}, "Expected `tolerances` keys"),
    ],
)
def test_deployment_export_validates(kwargs, match):
    with pytest.raises((ValueError, MLCycleError), match=match):
        DeploymentExport(**kwargs)
