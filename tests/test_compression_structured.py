"""Structured pruning: smaller models with the same outputs' shape, save/load, ONNX, resume, errors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle.compression import (
    StructuredPruning,
    load_pruned,
    save_pruned,
    structured_prune,
)
from lightning_mlcycle.compression.structured_pruning import count_macs_params, target_widths
from lightning_mlcycle.models import ClassificationModule
from lightning_mlcycle.models.zoo import SmallCNN, mobilenet_v3_small, resnet18


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (lambda: SmallCNN(10, (1, 8, 8), width=8), (1, 8, 8)),
        (lambda: resnet18(10, (3, 16, 16)), (3, 16, 16)),
        (lambda: mobilenet_v3_small(10, (3, 16, 16)), (3, 16, 16)),
    ],
    ids=["small_cnn", "resnet18", "mobilenet_v3_small"],
)
def test_zoo_models_get_smaller_and_reload(build, shape, tmp_path):
    model = build().eval()
    x = torch.randn(3, *shape)
    res = structured_prune(model, x[:1], ratio=0.5)
    assert res.params_after < 0.5 * res.params_before
    assert res.macs_after < 0.5 * res.macs_before
    out = model(x)
    assert out.shape == (3, 10)
    path = save_pruned(model, tmp_path / "m.pt", history=res.history, input_shape=shape)
    again = load_pruned(path, model=build())
    torch.testing.assert_close(again(x), out)


def test_target_macs_and_taylor():
    model = SmallCNN(4, (1, 8, 8), width=8).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    res = structured_prune(model, x[:1], target_macs=0.4, importance="taylor", batches=[(x, y)])
    assert res.macs_after <= 0.4 * res.macs_before
    assert res.macs_after > 0.1 * res.macs_before  # stopped near the target, not at the floor


@pytest.mark.slow  # the dynamo ONNX exporter takes ~20 s on a 2-core machine
def test_load_from_saved_config_and_onnx(tmp_path):
    import onnxruntime as ort

    from lightning_mlcycle._onnx import to_onnx

    builder = {"_target_": "lightning_mlcycle.models.SmallCNN", "num_classes": 10,
               "input_shape": [1, 8, 8], "width": 8}
    from hydra.utils import instantiate

    model = instantiate(builder).eval()
    res = structured_prune(model, torch.zeros(1, 1, 8, 8), ratio=0.5)
    path = save_pruned(model, tmp_path / "m.pt", history=res.history, input_shape=[1, 8, 8], builder=builder)
    again = load_pruned(path)  # no code needed: the config rebuilds the unpruned model
    x = torch.randn(5, 1, 8, 8)
    onnx_path = to_onnx(again, x, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-4)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        # leaves autograd: Torch-Pruning cannot see how the layers connect
        h = torch.from_numpy(self.lin(x).detach().numpy())
        return self.out(h).detach()


def test_bad_arguments_and_untraceable_models():
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"`ratio` must be in \[0, 1\), but got ratio=1.0"):
        structured_prune(nn.Linear(4, 2), x, ratio=1.0)
    with pytest.raises(ValueError, match="no prunable channel groups in _Untraceable"):
        structured_prune(_Untraceable(), x, ratio=0.5)
    with pytest.raises(ValueError, match=r"`importance` to be one of \['magnitude', 'taylor'\]"):
        StructuredPruning(ratio=0.5, importance="l1")
    with pytest.raises(ValueError, match=r"`ignored_layers`: \['nope'\] are not modules.*valid names: \['lin', 'out'\]"):
        structured_prune(_Untraceable(), x, ratio=0.5, ignored_layers=["nope"])
    with pytest.raises(ValueError, match="could not trace"):
        structured_prune(nn.Linear(3, 2), x, ratio=0.5)  # wrong input width: forward fails
    with pytest.raises(ValueError, match="`rounds` must be an integer >= 1"):
        StructuredPruning(ratio=0.5, rounds=0)
    with pytest.raises(ValueError, match=r"`lr_schedule` to be one of \['cosine', None\], but got 'step'"):
        StructuredPruning(ratio=0.5, lr_schedule="step")


def _module() -> ClassificationModule:
    return ClassificationModule(SmallCNN(3, (1, 8, 8), width=8), num_classes=3)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(tmp_path, epochs, cb):
    return pl.Trainer(max_epochs=epochs, callbacks=[cb], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      enable_checkpointing=False)


def test_callback_prunes_in_rounds_and_resumes(tmp_path):
    module = _module()
    cb = StructuredPruning(ratio=0.5, rounds=2, every_n_epochs=1, module="backbone", importance="taylor")
    trainer = _trainer(tmp_path, 2, cb)
    trainer.fit(module, _loader())
    assert cb.rounds_done == 2
    assert cb.macs_after < 0.4 * cb.macs_before
    assert module.backbone.features[0].out_channels == 4
    # the optimizer was rebuilt around the new, smaller parameters
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in module.parameters())
    ckpt = tmp_path / "pruned.ckpt"
    trainer.save_checkpoint(ckpt)

    fresh = _module()
    cb2 = StructuredPruning(ratio=0.5, rounds=2, every_n_epochs=1, module="backbone", importance="taylor")
    _trainer(tmp_path, 3, cb2).fit(fresh, _loader(), ckpt_path=ckpt)  # shapes replayed first
    assert fresh.backbone.features[0].out_channels == 4
    path = cb2.save(fresh, tmp_path / "b.pt")
    again = load_pruned(path, model=SmallCNN(3, (1, 8, 8), width=8))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(again(x), fresh.backbone.eval()(x))
    assert count_macs_params(again, x)[0] == cb2.macs_after
    with pytest.raises(ValueError, match=r"no sub-module 'body'; valid: \["):
        StructuredPruning(ratio=0.5, module="body").target(fresh)


@pytest.mark.parametrize(("option", "cls"), [("magnitude", "MagnitudePruning"), ("structured", "StructuredPruning")])
def test_prune_configs_build_their_callbacks(compose_cfg, option, cls):
    from hydra.utils import instantiate

    cfg = compose_cfg(f"compress/prune={option}")
    cb = instantiate(cfg.compress.prune.callback)
    assert type(cb).__name__ == cls
    assert cfg.compress.prune.enabled and cfg.compress.prune.fine_tune_epochs >= 1


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["compress.prune.callback.sparsity=1.5"], r"Config `compress.prune.callback`: `sparsity` must be in \[0, 1\)"),
        (["compress.prune.fine_tune_epochs=0"], r"`compress.prune.fine_tune_epochs` must be an integer >= 1"),
        (["compress/prune=structured", "compress.prune.fine_tune_epochs=4"],
         r"the last of 3 rounds is at epoch 4 .*, but fine_tune_epochs=4"),
        (["compress/lowrank=default", "compress.lowrank.callback.module=body"],
         r"`compress.lowrank.callback.module` must be 'backbone'"),
    ],
)
def test_bad_compress_config_fails_before_training(compose_cfg, overrides, match):
    from lightning_mlcycle.cli.main import run

    cfg = compose_cfg(*overrides)
    with pytest.raises(ValueError, match=match):
        run(cfg)
    assert not (Path(cfg.run_dir) / "checkpoints").exists()  # nothing was trained


class _LRs(pl.Callback):
    """Records the learning rate of every optimizer step and the channels of the first conv."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_segment_after_every_round_and_on_resume(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(cb, lrs, **fit_kwargs):
        module = ClassificationModule(SmallCNN(3, (1, 8, 8), width=8), num_classes=3,
                                      optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
        every = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
        trainer = pl.Trainer(max_epochs=5, callbacks=[cb, lrs, every], default_root_dir=tmp_path, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, _loader(), **fit_kwargs)
        return trainer

    lrs = _LRs()
    trainer = run(StructuredPruning(ratio=0.5, rounds=2, every_n_epochs=2, module="backbone"), lrs)
    # 3 steps per epoch: rounds at epochs 0 and 2, segments of 2 epochs (6 steps) and 3 epochs (9)
    first = [0.05 * (1 + np.cos(np.pi * k / 6)) for k in range(6)]
    second = [0.05 * (1 + np.cos(np.pi * k / 9)) for k in range(9)]
    np.testing.assert_allclose(lrs.lrs, first + second, rtol=1e-6)  # a warm restart at round 2
    assert trainer.lr_scheduler_configs[0].interval == "step"

    lrs2 = _LRs()  # resumed after epoch 2 (the first of the last segment's 3 epochs)
    run(StructuredPruning(ratio=0.5, rounds=2, every_n_epochs=2, module="backbone"), lrs2,
        ckpt_path=tmp_path / "epoch=2.ckpt")
    np.testing.assert_allclose(lrs2.lrs, second[3:], rtol=1e-6)  # the rest of the segment, not a restart


def test_constant_lr_without_schedule_and_warning_when_rounds_do_not_fit(tmp_path, caplog):
    module = ClassificationModule(SmallCNN(3, (1, 8, 8), width=8), num_classes=3,
                                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    cb = StructuredPruning(ratio=0.5, module="backbone", lr_schedule=None)  # rounds at epochs 0, 2, 4
    lrs = _LRs()
    trainer = pl.Trainer(max_epochs=3, callbacks=[cb, lrs], default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         enable_checkpointing=False)
    with caplog.at_level("WARNING", logger="lightning_mlcycle.compression.structured_pruning"):
        trainer.fit(module, _loader())
    assert "the last of 3 rounds is at epoch 4 but max_epochs=3" in caplog.text
    assert cb.rounds_done == 2 and lrs.lrs == [0.1] * 9


def test_prunes_the_student_of_a_distillation(tmp_path):
    from lightning_mlcycle.compression import DistillationModule

    teacher = SmallCNN(3, (1, 8, 8), width=8)
    module = DistillationModule(teacher, SmallCNN(3, (1, 8, 8), width=8), input_shape=(1, 8, 8), alpha=0.5)
    cb = StructuredPruning(ratio=0.5, rounds=1, module="student")
    _trainer(tmp_path, 2, cb).fit(module, _loader())
    assert module.student.features[0].out_channels == 4  # the student lost half its channels
    assert teacher.features[0].out_channels == 8  # the teacher is whole and frozen
    assert not any(p.requires_grad for p in teacher.parameters())
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


class _Modes(pl.Callback):
    def __init__(self) -> None:
        self.training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.training.append(all(m.training for m in pl_module.backbone.modules()))


def test_stage_fine_tunes_in_train_mode_even_from_an_eval_model(tmp_path):
    # Lightning keeps the modes it is given: a tested (eval-mode) backbone must not be fine-tuned
    # with frozen BatchNorm statistics and no dropout
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lightning_mlcycle import DigitsDataModule
    from lightning_mlcycle.cli.stages.compress import _fine_tune

    dm = DigitsDataModule(batch_size=256, seed=0)
    dm.setup()
    model = ClassificationModule(SmallCNN(10, dm.input_shape, width=4, dropout=0.1), num_classes=10).eval()
    cfg = OmegaConf.create({"compress": {"prune": {"fine_tune_epochs": 1, "lr": 1e-3}},
                            "trainer": {"accelerator": "cpu", "enable_progress_bar": False}})
    ctx = SimpleNamespace(cfg=cfg, datamodule=dm, model=model, artifacts={}, run_dir=tmp_path)
    modes = _Modes()
    _fine_tune(ctx, "compress.prune", modes)  # type: ignore[arg-type]
    assert modes.training and all(modes.training)
    assert not model.backbone.training  # the tested model itself is left as it was


def test_rounds_land_on_the_one_shot_channel_counts(tmp_path):
    # 3 rounds of 1/6 each would keep int(int(int(32 * 5/6) * 4/5) * 3/4) = 15 of 32 channels if
    # every round rounded down the model as it is; aiming at the unpruned widths keeps 16
    module = ClassificationModule(SmallCNN(3, (1, 8, 8), width=32), num_classes=3)
    cb = StructuredPruning(ratio=0.5, rounds=3, every_n_epochs=1, module="backbone")
    _trainer(tmp_path, 3, cb).fit(module, _loader())
    one_shot = SmallCNN(3, (1, 8, 8), width=32).eval()
    structured_prune(one_shot, torch.zeros(1, 1, 8, 8), ratio=0.5)
    widths = [m.out_channels for m in module.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [m.out_channels for m in one_shot.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 32]
    assert cb.state_dict()["widths"]["features.0"] == 32


def test_round_to_keeps_the_nearest_multiple_and_never_empties_a_layer(tmp_path):
    # Torch-Pruning's own round_to rounds down (32 channels at ratio 0.3 kept 16)
    assert target_widths({"a": 32, "b": 24, "c": 12, "d": 6}, 0.3, round_to=8) == {
        "a": 24, "b": 16, "c": 8, "d": 4}
    assert target_widths({"a": 32, "b": 24, "c": 40}, 0.5, round_to=8) == {"a": 16, "b": 16, "c": 24}  # ties up
    assert target_widths({"a": 100}, 0.999, round_to=8) == {"a": 8}  # at least one multiple
    assert target_widths({"a": 10}, 0.999) == {"a": 1}  # never zero channels
    net = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 54, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(54 * 16, 4))
    structured_prune(net, torch.zeros(1, 1, 8, 8), ratio=0.3, round_to=8)
    assert (net[0].out_channels, net[2].out_channels) == (24, 40)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    # the callback's rounds aim at rounded shares of the unpruned widths
    module = ClassificationModule(SmallCNN(3, (1, 8, 8), width=28), num_classes=3)
    cb = StructuredPruning(ratio=0.3, rounds=2, every_n_epochs=1, module="backbone", round_to=8)
    _trainer(tmp_path, 2, cb).fit(module, _loader())
    assert [m.out_channels for m in module.backbone.modules() if isinstance(m, nn.Conv2d)] == [16, 40, 40]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="`round_to` must be a positive integer or None"):
            StructuredPruning(ratio=0.5, round_to=bad)
    with pytest.raises(ValueError, match="`round_to` must be a positive integer or None"):
        structured_prune(nn.Linear(4, 2), torch.zeros(1, 4), ratio=0.5, round_to=-8)
