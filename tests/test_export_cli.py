"""The mlcycle export stage (real config, real run) and the mlcycle-export command."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.cli.export_main import main as export_main
from lightning_mlcycle.export import Predictor, load_model_card
from lightning_mlcycle.export.checkpoint import load_classifier
from lightning_mlcycle.models import MLP


def test_export_config_composes(compose_cfg):
    cfg = compose_cfg()
    assert cfg.export.enabled and list(cfg.export.formats) == ["onnx", "pt2"]
    assert list(cfg.export.batch_sizes) == [1, 8, 64]
    tvm = compose_cfg("export=tvm")
    assert (
        list(tvm.export.formats) == ["onnx", "pt2", "tvm"]
        and tvm.export.repeats == cfg.export.repeats
    )


@pytest.mark.slow
def test_export_stage_in_a_run_then_mlcycle_export(compose_cfg, tmp_path, monkeypatch, capsys):
    from lightning_mlcycle.cli import stages
    from lightning_mlcycle.cli.main import run

    def add_variant(ctx):  # what a compression stage hands on: a smaller model, same interface
        ctx.extras.setdefault("models", {})["tiny"] = MLP(
            10, ctx.datamodule.input_shape, hidden=(8,)
        ).eval()

    at = [n for n, _, _ in stages.STAGES].index("export")
    monkeypatch.setattr(
        stages, "STAGES", [*stages.STAGES[:at], ("variant", add_variant, None), *stages.STAGES[at:]]
    )
    cfg = compose_cfg(
        "model=mlp",
        "trainer.max_epochs=1",
        "compress/prune=none",
        "monitor.enabled=false",
        "export.repeats=2",
        "export.warmup=0",
        "export.batch_sizes=[1,8]",
    )
    ctx = run(cfg)
    out = ctx.run_dir / "export"
    assert ctx.artifacts["export"] == str(out)
    names = {p.name for p in out.iterdir()}
    assert {
        "model.onnx",
        "model.pt2",
        "model_tiny.onnx",
        "model_tiny.pt2",
        "latency.json",
        "latency.md",
        "model_card.json",
        "model_card.md",
    } <= names
    card = load_model_card(out)
    # one check per artifact; int8 files of the quantize stage (on by default) are checked too
    assert ctx.summary["export/parity_passed"] == len(card["artifacts"]) >= 4
    for entry in card["artifacts"]:
        if entry["variant"] in ctx.extras.get("onnx", {}):
            assert entry["precision"] == "int8" and entry["parity"][0]["agreement"] >= 0.97
    assert ctx.summary["export/model.onnx/onnxruntime/b1_ms"] > 0
    assert card["metrics"]["test/acc"] == pytest.approx(ctx.summary["test/acc"])
    assert card["training_config"]["model"]["backbone"]["_target_"].endswith("MLP")
    assert card["name"] == "MLP"
    summary = json.loads((ctx.run_dir / "summary.json").read_text())
    assert summary["summary"]["time/export_s"] > 0
    x_raw, _ = ctx.datamodule.raw_split("test")
    assert Predictor(out).predict(x_raw.numpy()).shape == (len(x_raw),)

    # mlcycle-export on the run's best checkpoint, with the digits test split for parity
    ckpt = ctx.artifacts["best_checkpoint"]
    dest = tmp_path / "cli_export"
    assert (
        export_main(
            [
                ckpt,
                "--data",
                "digits",
                "-o",
                str(dest),
                "--formats",
                "pt2",
                "--batch-sizes",
                "1",
                "--repeats",
                "2",
                "--warmup",
                "0",
            ]
        )
        == 0
    )
    assert "| model (eager) | eager | 1 |" in capsys.readouterr().out
    card = load_model_card(dest)
    assert card["interface"]["preprocessing"]["raw_range"] == [0.0, 16.0]
    assert (
        card["artifacts"][0]["file"] == "model.pt2" and card["artifacts"][0]["parity"][0]["passed"]
    )
    assert card["metrics"]["parity_set/acc"] == pytest.approx(ctx.summary["test/acc"], abs=1e-6)


def test_mlcycle_export_bad_checkpoints(tmp_path, capsys):
    assert export_main([str(tmp_path / "missing.ckpt")]) == 2
    assert "Checkpoint '" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(
        MLCycleError, match="is not a PyTorch checkpoint that loads with weights_only=True"
    ):
        load_classifier(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, foreign)
    with pytest.raises(
        MLCycleError, match="was not written for a lightning_mlcycle ClassificationModule"
    ):
        load_classifier(foreign)
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(MLCycleError, match="is not a Lightning checkpoint"):
        load_classifier(plain)
    assert export_main([str(foreign)]) == 2
    assert "backbone_config" in capsys.readouterr().err
