"""FitDiagnosis and EarlyStopping as callbacks: validation, resume, outputs, policies, CLI stage."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle import ClassificationModule, EarlyStopping, FitDiagnosis, Symptom
from lightning_mlcycle.diagnosis import DiagnosisThresholds, FitState
from lightning_mlcycle.models import MLP


def _loaders(n: int = 240, features: int = 8, classes: int = 3, scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 2
    y = torch.randint(0, classes, (n,), generator=g)
    x = (centers[y] + torch.randn(n, features, generator=g)) * scale
    tr = DataLoader(TensorDataset(x[: n * 3 // 4], y[: n * 3 // 4]), batch_size=30, shuffle=True)
    va = DataLoader(TensorDataset(x[n * 3 // 4:], y[n * 3 // 4:]), batch_size=60)
    return tr, va


def _module(lr: float = 3e-3, hidden=(16,), **kw) -> ClassificationModule:
    return ClassificationModule(MLP(3, (8,), hidden=hidden, **kw), num_classes=3,
                                optimizer=lambda p: torch.optim.Adam(p, lr=lr))


def _trainer(tmp_path: Path, callbacks, epochs: int, logger=False, **kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=logger, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                      num_sanity_val_steps=0, **kw)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"val_loss_key": ""}, ValueError, "`val_loss_key` to be a metric name"),
        ({"mode": "up"}, ValueError, r"`mode` to be one of \['min', 'max', None\]"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be an integer >= 2"),
        ({"chance_loss": 0}, ValueError, "`chance_loss` must be positive"),
        ({"every_n_steps": 0}, ValueError, "`every_n_steps` must be a positive integer"),
        ({"on_finding": "panic"}, ValueError, r"`on_finding` to be one of \['warn', 'stop'\]"),
        ({"leakage_max_samples": 0}, ValueError, "`leakage_max_samples` must be a positive"),
        ({"thresholds": {"nope": 1}}, ValueError, r"Unknown threshold\(s\)"),
    ],
)
def test_fit_diagnosis_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        FitDiagnosis(**kwargs)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"monitor": ""}, ValueError, "`monitor` must be a metric name"),
        ({"monitor": "val/loss", "mode": "low"}, ValueError, r"`mode` to be one of \['min', 'max'\]"),
        ({"monitor": "val/loss", "patience": -1}, ValueError, "`patience` cannot be negative"),
        ({"monitor": "val/loss", "restore_best_weights": "yes"}, TypeError, "`restore_best_weights` must be a bool"),
    ],
)
def test_early_stopping_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        EarlyStopping(**kwargs)


class _HookCounter(Callback):
    """Counts training steps that ran with forward hooks on the activation modules."""

    def __init__(self) -> None:
        self.with_hooks = 0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # runs before FitDiagnosis' hook (earlier in the list): hooks are still there when sampled
        acts = [m for m in pl_module.modules() if isinstance(m, nn.ReLU)]
        self.steps += 1
        self.with_hooks += any(len(m._forward_hooks) for m in acts)


def test_activation_hooks_exist_only_on_sampled_steps(tmp_path):
    tr, va = _loaders()
    counter, diag = _HookCounter(), FitDiagnosis(every_n_steps=4, write_files=False)
    module = _module()
    _trainer(tmp_path, [counter, diag], epochs=3).fit(module, tr, va)
    assert counter.steps == 18
    # step 0, 4, 8, 12, 16 plus the first step after each of the 2 mid-run validations (6, 12)
    assert 4 <= counter.with_hooks <= 8, counter.with_hooks
    assert all(not m._forward_hooks for m in module.modules())
    assert diag.report.meta["num_classes"] == 3 and len(diag.report.history) == 3


def test_infers_classes_from_logits_of_any_module(tmp_path):
    class Bare(pl.LightningModule):  # no num_classes attribute anywhere
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return {"loss": nn.functional.cross_entropy(self(batch[0]), batch[1])}

        def validation_step(self, batch, batch_idx):
            self.log("valid_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    tr, va = _loaders()
    diag = FitDiagnosis(write_files=False)
    _trainer(tmp_path, [diag], epochs=3).fit(Bare(), tr, va)
    assert diag.report.meta["num_classes"] == 3
    assert all(h["val_loss"] is not None for h in diag.report.history)  # found "valid_loss"
    assert diag.report.meta["chance_loss"] == pytest.approx(math.log(3))


def test_resume_restores_report_and_history(tmp_path):
    tr, va = _loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    diag = FitDiagnosis(write_files=False, thresholds={"min_checks": 2})
    _trainer(tmp_path, [diag, ckpt], epochs=3).fit(_module(hidden=(512, 512)), tr, va)
    first = diag.report.to_dict()
    assert len(first["history"]) == 3

    state = diag.state_dict()
    clone = FitDiagnosis(write_files=False)
    clone.load_state_dict(state)
    assert clone.report.to_dict() == first and clone.state_dict()["train_loss"] == state["train_loss"]

    resumed = FitDiagnosis(write_files=False, thresholds={"min_checks": 2})
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    _trainer(tmp_path, [resumed, ckpt2], epochs=5).fit(_module(hidden=(512, 512)), tr, va,
                                                      ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    hist = resumed.report.history
    assert len(hist) == 5 and [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]
    # the report's JSON rounds to 4 significant digits
    assert [h["train_loss"] for h in hist[:3]] == pytest.approx([h["train_loss"] for h in first["history"]],
                                                                rel=1e-3)
    assert resumed.report.meta["initial_loss"] == pytest.approx(first["meta"]["initial_loss"], rel=1e-3)
    # a symptom seen before the checkpoint is not announced again after resuming
    assert set(diag._notified) <= set(resumed._notified)


def test_tensorboard_scalars_text_figure_and_files(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr, va = _loaders()
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    diag = FitDiagnosis()
    _trainer(tmp_path, [diag], epochs=4, logger=logger).fit(_module(), tr, va)
    log_dir = Path(logger.log_dir)
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    for tag in ("diagnosis/generalization_gap", "diagnosis/relative_gap", "diagnosis/fit_state",
                "diagnosis/grad_norm/backbone.net.1", "diagnosis/update_ratio/backbone.net.1",
                "diagnosis/dead_fraction/backbone.net.2", "diagnosis/input_rms"):
        assert tag in scalars, sorted(scalars)
    gaps = [e.value for e in ea.Scalars("diagnosis/generalization_gap")]
    assert len(gaps) == 4
    last = diag.report.history[-1]
    assert gaps[-1] == pytest.approx(last["val_loss"] - last["train_loss"], rel=1e-4)
    assert "diagnosis/report/text_summary" in ea.Tags()["tensors"]
    text = ea.Tensors("diagnosis/report/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Fit diagnosis" in text and diag.report.fit_state.value in text
    assert "diagnosis/learning_curve" in ea.Tags()["images"]
    data = json.loads((log_dir / "diagnosis.json").read_text())
    assert data["fit_state"] == diag.report.fit_state.value and len(data["history"]) == 4
    assert (log_dir / "diagnosis.md").read_text().startswith("# Fit diagnosis")
    assert (log_dir / "learning_curve.png").stat().st_size > 1000


def test_on_finding_stop_halts_on_divergence(tmp_path):
    tr, va = _loaders()
    seen = []
    module = ClassificationModule(MLP(3, (8,), hidden=(32,)), num_classes=3,
                                  optimizer=lambda p: torch.optim.SGD(p, lr=50.0, momentum=0.9))
    diag = FitDiagnosis(on_finding="stop", every_n_steps=1, write_files=False)
    trainer = _trainer(tmp_path, [diag], epochs=20)
    trainer.fit(module, tr, va)
    assert trainer.current_epoch < 19
    assert diag.report.faults[0].symptom in (Symptom.DIVERGING_LOSS, Symptom.EXPLODING_GRADIENTS)
    assert diag.report.stop_reason.startswith("FitDiagnosis stopped training")

    cb = FitDiagnosis(on_finding=lambda f, t: seen.append(f.symptom), every_n_steps=1, write_files=False)
    module = ClassificationModule(MLP(3, (8,), hidden=(32,)), num_classes=3,
                                  optimizer=lambda p: torch.optim.SGD(p, lr=50.0, momentum=0.9))
    _trainer(tmp_path, [cb], epochs=3).fit(module, tr, va)
    assert seen and seen[0] in (Symptom.DIVERGING_LOSS, Symptom.EXPLODING_GRADIENTS)
    assert len(seen) == len(set(seen))  # each symptom announced once


class _Snapshots(Callback):
    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_early_stopping_restores_best_weights_and_reports_why(tmp_path):
    tr, va = _loaders(n=120)
    snaps = _Snapshots()
    es = EarlyStopping(monitor="val/loss", patience=2, min_delta=0.0)
    diag = FitDiagnosis(write_files=False)
    module = _module(lr=0.05, hidden=(256, 256))  # over-fits 90 samples quickly
    trainer = _trainer(tmp_path, [snaps, diag, es], epochs=40)
    trainer.fit(module, tr, va)
    assert es.stopped_epoch > 0 and trainer.current_epoch < 40
    best = es.best_epoch
    assert best is not None and best < es.stopped_epoch and es.restored_epoch == best
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, snaps.weights[best][k])
    assert diag.report.stop_reason.startswith("EarlyStopping (patience_exhausted)")
    assert f"epoch {best}" in diag.report.stop_reason
    assert diag.report.meta["early_stopping"]["restored_best_weights_from_epoch"] == best
    # the best weights survive a checkpoint round trip
    again = EarlyStopping(monitor="val/loss")
    again.load_state_dict(es.state_dict())
    assert again.best_epoch == best and again._best_weights.keys() == es._best_weights.keys()


def test_configs_instantiate_and_list_every_threshold(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg()
    node = cfg.callbacks.fit_diagnosis
    assert set(node.thresholds) == {f.name for f in fields(DiagnosisThresholds)}
    diag = instantiate(node)
    assert isinstance(diag, FitDiagnosis) and diag.thresholds == DiagnosisThresholds()
    es = instantiate(cfg.callbacks.early_stopping)
    assert isinstance(es, EarlyStopping) and es.restore_best_weights and es.monitor == "val/loss"


def test_remedies_are_rendered_for_the_run_config(compose_cfg):
    from lightning_mlcycle.cli.stages.diagnosis import override_applies, render_for_config
    from lightning_mlcycle.diagnosis import DiagnosisReport, Finding, Severity

    cnn = compose_cfg()
    mlp = compose_cfg("model=mlp")
    assert override_applies(cnn, "model.backbone.width=64")
    assert not override_applies(mlp, "model.backbone.width=64")
    assert override_applies(mlp, "model.backbone.hidden=[256,128]")
    assert override_applies(cnn, "data=digits_augmented") and override_applies(cnn, "data.leakage=drop")
    assert not override_applies(cnn, "data=no_such_option")
    report = DiagnosisReport(fit_state="overfitting")
    report.add(Finding(Symptom.OVERFITTING, Severity.WARNING, step=1, epoch=1))
    report.add(Finding(Symptom.DIVERGING_LOSS, Severity.CRITICAL, step=1, epoch=1))
    overrides = {r.override for f in render_for_config(report, cnn).findings for r in f.remedies}
    lr = float(cnn.model.optimizer.lr)
    assert f"model.optimizer.lr={lr / 10:.3g}" in overrides
    assert f"model.backbone.width={cnn.model.backbone.width // 2}" in overrides
    assert "model.backbone.dropout=0.3" in overrides and "data=digits_augmented" in overrides


@pytest.mark.slow
def test_cli_stage_writes_summary_files_and_printout(compose_cfg):
    from lightning_mlcycle.cli.context import RunContext
    from lightning_mlcycle.cli.stages import STAGES
    from lightning_mlcycle.cli.stages.diagnosis import diagnosis_stage
    from lightning_mlcycle.cli.stages.train import build_stage, fit_stage, test_stage

    names = [s[0] for s in STAGES]
    assert names[names.index("test") + 1] == "diagnosis"
    cfg = compose_cfg("trainer.max_epochs=3", "model.backbone.width=8")
    ctx = RunContext(cfg=cfg, run_dir=Path(cfg.run_dir))
    for stage in (build_stage, fit_stage, test_stage, diagnosis_stage):
        stage(ctx)
    assert ctx.summary["diagnosis/fit_state"] in {s.value for s in FitState}
    assert isinstance(ctx.summary["diagnosis/top_findings"], str)
    data = json.loads((ctx.run_dir / "diagnosis.json").read_text())
    assert data["fit_state"] == ctx.summary["diagnosis/fit_state"] and len(data["history"]) == 3
    assert (ctx.run_dir / "tensorboard" / "diagnosis.json").is_file()
    assert (ctx.run_dir / "diagnosis.md").is_file() and ctx.extras["printouts"]
