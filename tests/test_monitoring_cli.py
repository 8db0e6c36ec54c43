"""The ``monitor`` stage of ``mlcycle`` and the ``mlcycle-monitor`` console script, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lightning_mlcycle import MLCycleError


def test_monitor_config_is_last_and_documented(compose_cfg):
    from lightning_mlcycle.cli.stages import STAGES

    assert STAGES[-1][0] == "monitor" and STAGES[-1][2] == "monitor"
    cfg = compose_cfg()
    assert cfg.monitor.enabled is True and cfg.monitor.alpha == 0.05
    assert list(cfg.monitor.detectors) == ["ks", "mmd", "prediction"]
    off = compose_cfg("monitor.enabled=false")
    assert OmegaConf.select(off, "monitor").enabled is False


@pytest.mark.slow
def test_monitor_stage_and_console_script(compose_cfg, tmp_path, capsys):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_mlcycle.cli.main import run
    from lightning_mlcycle.cli.stages.monitor import monitor_stage
    from lightning_mlcycle.monitoring import ReferenceProfile, apply_shift
    from lightning_mlcycle.monitoring._cli import main

    cfg = compose_cfg(
        "model=mlp",
        "compress/prune=none",
        "export.formats=[onnx]",
        "export.variants=false",
        "export.batch_sizes=[1]",
        "export.repeats=1",
        "monitor.stress.severities=[1,5]",
        "monitor.calibration_splits=100",
    )
    ctx = run(cfg)
    run_dir = ctx.run_dir
    mon_dir, export_dir = run_dir / "monitoring", run_dir / "export"
    for name in ("profile.json", "profile.npz", "stress_test.json", "stress_test.md"):
        assert (mon_dir / name).is_file(), name
    assert (export_dir / "profile.json").is_file() and (export_dir / "profile.npz").is_file()
    s = ctx.summary
    assert s["monitor/stress_model"] == "onnx"  # the exported model passed the fingerprint check
    assert s["monitor/false_alarm"] == 0.0
    assert s["monitor/detected_shifts"] >= 0.5
    assert "time/monitor_s" in s
    rows = json.loads((mon_dir / "stress_test.json").read_text())["rows"]
    assert len(rows) == 1 + 6 * 2
    profile = ReferenceProfile.load(export_dir)
    assert profile.projection == "pca" and profile.input_shape == (1, 8, 8)
    assert profile.metrics["test/acc"] == pytest.approx(s["test/acc"])
    acc = EventAccumulator(ctx.artifacts["tensorboard"])
    acc.Reload()
    assert "monitor/stress_test" in acc.Tags()["images"]

    ctx.cfg.monitor.alpha = 2.0
    with pytest.raises(MLCycleError, match=r"Config `monitor`: `alpha` must be in \(0, 1\)"):
        monitor_stage(ctx)

    # the console script on new inputs: a .npy of clean test data, then shifted data
    x_test, y_test = ctx.datamodule.raw_split("test")
    clean, shifted = tmp_path / "clean.npy", tmp_path / "shifted.npy"
    np.save(clean, x_test.numpy())
    np.save(tmp_path / "labels.npy", y_test.numpy())
    np.save(shifted, apply_shift(x_test, "gaussian_blur", 3).numpy())
    log = tmp_path / "log.jsonl"
    capsys.readouterr()
    # one window of clean data at a 1% false-alarm rate (several windows would fire by chance)
    n = x_test.shape[0]
    assert (
        main(
            [
                str(clean),
                "--model",
                str(run_dir),
                "--window",
                str(n),
                "--alpha",
                "0.01",
                "--log",
                str(log),
                "--labels",
                str(tmp_path / "labels.npy"),
                "--fail-on-drift",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"window 0 [0:{n}]: ok" in out and "accuracy=" in out
    assert (
        main(
            [
                str(shifted),
                "--model",
                str(export_dir),
                "--window",
                "120",
                "--log",
                str(log),
                "--fail-on-drift",
            ]
        )
        == 3
    )
    assert "DRIFT" in capsys.readouterr().out
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 4 and [ln["drifted"] for ln in lines] == [False, True, True, True]

    # a folder of images, with the checkpoint instead of the exported model
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(x_test[:60]):
        Image.fromarray((img[0].numpy() / 16 * 255).round().astype(np.uint8)).save(
            folder / f"{i:03d}.png"
        )
    ckpt = ctx.artifacts["best_checkpoint"]
    assert main([str(folder), "--model", ckpt, "--profile", str(mon_dir), "--window", "60"]) == 0
    assert "60 inputs" in capsys.readouterr().out

    # errors: exit status 1 with a message
    assert main([str(clean), "--model", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert (
        main([str(tmp_path / "labels.npy"), "--model", str(run_dir), "--detectors", "ks,chi2"]) == 1
    )
    assert "`detectors` to be one of" in capsys.readouterr().err
    other = tmp_path / "other"
    ReferenceProfile.capture(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), x_test
    ).save(other)
    assert main([str(clean), "--model", str(export_dir), "--profile", str(other)]) == 1
    assert "different model" in capsys.readouterr().err
