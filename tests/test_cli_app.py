"""The mlcycle app: every config file composes and instantiates, a real run, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.cli.main import config_dir, run

CONF = Path(config_dir())


def _options() -> list[tuple[str, str]]:
    """(group, option) for every config file of every group, nested groups included."""
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        if len(rel.parts) < 2 or rel.parts[0] == "hydra":
            continue
        out.append(("/".join(rel.parts[:-1]), rel.stem))
    return out


def _targets(node):
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            yield node
        for v in node.values():
            yield from _targets(v)
    elif OmegaConf.is_list(node):
        for v in node:
            yield from _targets(v)


@pytest.mark.parametrize(("group", "option"), _options(), ids=lambda v: str(v))
def test_every_config_file_composes_and_its_targets_exist(compose_cfg, tmp_path, group, option):
    from hydra._internal.utils import _locate

    overrides = [f"{group}={option}"]
    if group == "data" and option == "image_folder":
        overrides.append(f"data.root={tmp_path}")
    if group.startswith("hparams_search"):
        pytest.skip("sweep configs are composed by the sweep tests (they set hydra/sweeper)")
    cfg = compose_cfg(*overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    node = OmegaConf.select(cfg, group.replace("/", "."))
    for target in _targets(node) if node is not None else []:
        assert _locate(target._target_) is not None


@pytest.mark.parametrize("option", ["cnn", "mlp", "resnet18", "mobilenet_v3_small"])
def test_every_model_config_instantiates_on_digits(compose_cfg, option):
    from lightning_mlcycle.cli.context import RunContext
    from lightning_mlcycle.cli.stages.train import build_stage

    cfg = compose_cfg(f"model={option}", "logger=none", "callbacks=none")
    ctx = RunContext(cfg=cfg, run_dir=Path(cfg.run_dir))
    build_stage(ctx)
    x, _ = next(iter(ctx.datamodule.train_dataloader()))
    assert ctx.model(x[:2]).shape == (2, 10)
    assert ctx.model.hparams.backbone_config["_target_"].startswith("lightning_mlcycle.models.")


@pytest.mark.parametrize("option", ["default", "cpu"])
def test_trainer_configs_instantiate(compose_cfg, option):
    cfg = compose_cfg(f"trainer={option}")
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == 2


def test_mlcycle_run_writes_tensorboard_metrics_and_summary(compose_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_cfg("model=mlp", "trainer.max_epochs=2")
    ctx = run(cfg)
    run_dir = Path(cfg.run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0.5 < summary["summary"]["test/acc"] <= 1.0
    assert "test/f1" in summary["summary"]
    assert Path(summary["artifacts"]["best_checkpoint"]).is_file()
    tb_dir = run_dir / "tensorboard"
    scalars, images, hparams = set(), set(), False
    for event_file in tb_dir.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
        hparams |= "_hparams_/session_start_info" in acc.summary_metadata
    for tag in (
        "train/loss_step",
        "val/loss",
        "val/acc",
        "val/f1",
        "val/precision",
        "val/recall",
        "test/acc",
        "test/f1",
    ):
        assert tag in scalars, (tag, sorted(scalars))
    assert "test/confusion_matrix" in images
    assert hparams, "the HParams summary was not written"
    assert ctx.summary["test/acc"] == summary["summary"]["test/acc"]


def test_checkpoint_reloads_with_weights_only(compose_cfg):
    import torch

    from lightning_mlcycle.models import ClassificationModule

    ctx = run(compose_cfg("model=mlp", "trainer.max_epochs=1", "logger=none"))
    path = ctx.artifacts["best_checkpoint"]
    model = ClassificationModule.load_from_checkpoint(path, weights_only=True)
    saved = torch.load(path, weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert model.hparams.normalization == ctx.datamodule.normalization
    assert model.hparams.input_shape == [1, 8, 8]


# --- bad input fails before training, naming the key -----------------------------------------


def test_unknown_group_option_names_the_group_and_the_choices(compose_cfg):
    with pytest.raises(
        MissingConfigException,
        match=r"(?s)Could not find 'model/nope'.*Available options in 'model'.*cnn",
    ):
        compose_cfg("model=nope")


@pytest.mark.parametrize("epochs", [-1, 0])
def test_non_positive_epochs_fail_before_training(compose_cfg, epochs):
    cfg = compose_cfg(f"trainer.max_epochs={epochs}")
    with pytest.raises(
        MLCycleError, match=r"`trainer.max_epochs` must be a positive integer, but got"
    ):
        run(cfg)
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def test_missing_data_folder_fails_naming_the_path(compose_cfg, tmp_path):
    cfg = compose_cfg("data=image_folder", f"data.root={tmp_path / 'missing'}")
    with pytest.raises(
        MLCycleError, match=r"Config `data`: `data.root`: the image folder .*missing"
    ):
        run(cfg)


def test_data_folder_with_one_class_fails(compose_cfg, tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "cats" / "a.png")
    cfg = compose_cfg("data=image_folder", f"data.root={tmp_path}")
    with pytest.raises(MLCycleError, match=r"holds 1 class\(es\) with images \(\['cats'\]\)"):
        run(cfg)


def test_bad_value_in_a_group_names_the_key(compose_cfg):
    cfg = compose_cfg("data.batch_size=-4")
    with pytest.raises(
        MLCycleError, match=r"Config `data`: `batch_size` must be a positive integer, but got -4"
    ):
        run(cfg)


@pytest.mark.slow
def test_console_script_end_to_end(tmp_path):
    """`mlcycle` as a user runs it: console script, `--config-dir`, Hydra's run dir, the summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    user = tmp_path / "my_conf" / "model"
    user.mkdir(parents=True)
    (user / "tiny.yaml").write_text("defaults:\n  - mlp\n  - _self_\nbackbone:\n  hidden: [16]\n")
    exe = Path(sys.executable).with_name("mlcycle")
    cmd = [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "lightning_mlcycle.cli.main"]),
    ]
    out = subprocess.run(
        [
            *cmd,
            "--config-dir",
            str(tmp_path / "my_conf"),
            "model=tiny",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path / 'run'}",
            "trainer.enable_progress_bar=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout and "tensorboard --logdir" in out.stdout
    saved = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "hidden:\n    - 16" in saved
    bad = subprocess.run(
        [*cmd, "model=nope", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert bad.returncode != 0
    assert "Could not find 'model/nope'" in bad.stderr


def test_user_config_dir_adds_options(tmp_path):
    """`--config-dir` lets users add their own group options next to ours."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    user = tmp_path / "my_conf" / "model"
    user.mkdir(parents=True)
    (user / "tiny.yaml").write_text("defaults:\n  - mlp\n  - _self_\nbackbone:\n  hidden: [16]\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="mlcycle",
            overrides=[
                "model=tiny",
                "run_dir=x",
                f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
            ],
        )
    GlobalHydra.instance().clear()
    assert list(cfg.model.backbone.hidden) == [16]
    assert cfg.model.backbone._target_ == "lightning_mlcycle.models.MLP"
