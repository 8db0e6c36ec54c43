"""The mlcycle `compress.quantize` stage: PTQ by default, QAT and binarize on request."""

from __future__ import annotations

import json

import pytest

from lightning_mlcycle.cli.main import run

# the other post-training stages are off: this file tests the quantize stage alone
_ALONE = ("compress/prune=none", "export.enabled=false", "monitor.enabled=false",
          "trainer.max_epochs=1", "compress.quantize.latency_repeats=3")


@pytest.mark.slow
def test_default_ptq_stage_writes_int8_onnx_and_report(compose_cfg) -> None:
    cfg = compose_cfg(*_ALONE)
    assert cfg.compress.quantize.method == "ptq"  # on by default
    ctx = run(cfg)
    run_dir = ctx.run_dir
    assert (run_dir / "export" / "model_int8.onnx").is_file()
    assert ctx.extras["onnx"]["int8_ptq"] == str(run_dir / "export" / "model_int8.onnx")
    report = json.loads((run_dir / "compressed" / "quantization_report.json").read_text())
    rows = report["rows"]
    assert set(rows) == {"fp32_ort", "int8_ptq"}
    assert rows["int8_ptq"]["smaller_x"] > 2.5
    assert abs(rows["int8_ptq"]["accuracy"] - rows["fp32_ort"]["accuracy"]) < 0.1
    assert "| int8_ptq |" in (run_dir / "compressed" / "quantization_report.md").read_text()
    assert ctx.summary["quantize/int8_ptq/accuracy"] == rows["int8_ptq"]["accuracy"]
    assert ctx.summary["time/quantize_s"] < 60
    # the scalars went to TensorBoard: read the event file back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(ctx.artifacts["tensorboard"])
    acc.Reload()
    assert "quantize/int8_ptq/accuracy" in acc.Tags()["scalars"]


@pytest.mark.slow
def test_qat_and_binarize_methods(compose_cfg) -> None:
    cfg = compose_cfg(*_ALONE, "compress/quantize=qat", "compress.quantize.fine_tune_epochs=1")
    ctx = run(cfg)
    rows = json.loads((ctx.run_dir / "compressed" / "quantization_report.json").read_text())["rows"]
    assert {"fp32_ort", "int8_ptq", "int8_qat"} <= set(rows)
    assert (ctx.run_dir / "export" / "model_int8_qat.onnx").is_file()
    assert rows["int8_qat"]["accuracy"] > 0.5
    cfg = compose_cfg(*_ALONE, "compress/quantize=binarize", "compress.quantize.fine_tune_epochs=1")
    ctx = run(cfg)
    rows = json.loads((ctx.run_dir / "compressed" / "quantization_report.json").read_text())["rows"]
    assert set(rows) == {"fp32_ort", "binarized"}
    assert (ctx.run_dir / "compressed" / "binarized.pt").is_file()
    assert rows["binarized"]["smaller_x"] > 2  # bit-packed inner layers; first/last layers stay fp32
    assert "binarized" in ctx.extras["models"]


def test_bad_method_names_the_key(compose_cfg) -> None:
    from lightning_mlcycle.cli.stages.quantize import quantize_stage

    cfg = compose_cfg("compress.quantize.method=int4")
    with pytest.raises(ValueError, match=r"compress.quantize.method"):
        from lightning_mlcycle.cli.context import RunContext

        quantize_stage(RunContext(cfg=cfg, run_dir=cfg.run_dir))
