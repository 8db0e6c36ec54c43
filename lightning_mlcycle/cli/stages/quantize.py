"""The ``compress.quantize`` stage: int8 ONNX by post-training quantization or QAT, or binarization.

``method: ptq`` (the default, a few seconds): the tested model is exported to fp32 ONNX and
statically quantized by ONNX Runtime, calibrated on a few validation batches
(``export/model_int8.onnx``); optionally also dynamically (``export/model_int8_dynamic.onnx``).
``method: qat``: a copy is fine-tuned with the ``QuantizationAwareTraining`` callback and exported
after ``convert_pt2e`` (``export/model_int8_qat.onnx``); PTQ runs too, for comparison.
``method: binarize``: a copy is binarized (first/last layers full precision), fine-tuned and saved
bit-packed (``compressed/binarized.pt``); it goes to ``ctx.extras["models"]["binarized"]``.

Every variant is measured with ONNX Runtime against the fp32 ONNX model on the test split
(accuracy, file size, median latency at batch 1 and 64): ``compressed/quantization_report.json|md``,
TensorBoard scalars ``quantize/<variant>/...`` and a text table, and ``quantize/...`` summary keys.
The int8 files are handed to the export stage in ``ctx.extras["onnx"]``.
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import torch
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._onnx import to_onnx
from lightning_mlcycle._utils import check_choice, rank_zero, tensorboard_writer
from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.cli.stages.compress import _fine_tune
from lightning_mlcycle.cli.stages.train import _instantiate
from lightning_mlcycle.compression.binary import binarize, save_binarized
from lightning_mlcycle.compression.ptq import (
    add_ratios,
    measure_onnx,
    quantization_table,
    quantize_dynamic_onnx,
    quantize_static_onnx,
)
from lightning_mlcycle.compression.qat import QuantizationAwareTraining

log = logging.getLogger(__name__)

NODE = "compress.quantize"
METHODS = ("ptq", "qat", "binarize")


def _source_model(ctx: RunContext, cfg: Any) -> torch.nn.Module:
    source = cfg.get("source")
    if source is None:
        return ctx.model.backbone
    models = ctx.extras.get("models") or {}
    if source not in models:
        raise MLCycleError(
            f"`{NODE}.source`: no compressed model named {source!r} in this run; available: {sorted(models)} "
            "(or null for the trained model)."
        )
    return models[source]


def quantize_stage(ctx: RunContext) -> None:
    """Quantize (or binarize) the tested model; measure every variant with ONNX Runtime; report."""
    if not rank_zero():
        return
    cfg = OmegaConf.select(ctx.cfg, NODE)
    method = str(cfg.get("method", "ptq"))
    check_choice(f"{NODE}.method", method, METHODS)
    dm = ctx.datamodule
    export_dir = ctx.run_dir / "export"
    out_dir = ctx.run_dir / "compressed"
    out_dir.mkdir(parents=True, exist_ok=True)
    sample_shape = tuple(int(s) for s in dm.input_shape)
    batch_sizes = tuple(int(b) for b in cfg.get("latency_batch_sizes", [1, 64]))
    repeats = int(cfg.get("latency_repeats", 20))
    test = list(dm.test_dataloader())
    val = dm.val_dataloader()

    model = copy.deepcopy(_source_model(ctx, cfg)).cpu().eval()
    example = next(iter(val))[0][:2].cpu()
    fp32_path = to_onnx(model, example, out_dir / "model_fp32.onnx")

    def measure(path: Any) -> dict[str, float]:
        return measure_onnx(path, test, sample_shape, batch_sizes=batch_sizes, repeats=repeats)

    rows: dict[str, dict[str, Any]] = {"fp32_ort": measure(fp32_path)}
    onnx_files: dict[str, str] = {}
    if method in ("ptq", "qat") and cfg.get("static", True):
        path = quantize_static_onnx(
            fp32_path, export_dir / "model_int8.onnx", val,
            num_batches=int(cfg.get("calibration_batches", 8)),
            per_channel=bool(cfg.get("per_channel", True)),
            calibration=str(cfg.get("calibration", "minmax")),
        )
        rows["int8_ptq"] = measure(path)
        onnx_files["int8_ptq"] = str(path)
    if method == "ptq" and cfg.get("dynamic", False):
        path = quantize_dynamic_onnx(fp32_path, export_dir / "model_int8_dynamic.onnx")
        rows["int8_dynamic"] = measure(path)
        onnx_files["int8_dynamic"] = str(path)
    if method == "qat":
        cb = _instantiate(cfg.callback, f"{NODE}.callback")
        if not isinstance(cb, QuantizationAwareTraining):
            raise MLCycleError(f"`{NODE}.callback` must build a QuantizationAwareTraining, but got {type(cb).__name__}.")
        module = _fine_tune(ctx, NODE, cb)
        path = cb.export_onnx(module.cpu(), export_dir / "model_int8_qat.onnx", example)
        rows["int8_qat"] = measure(path)
        onnx_files["int8_qat"] = str(path)
    if method == "binarize":
        rows.update(_binarize(ctx, cfg, model, example, measure))

    add_ratios(rows)
    _report(ctx, rows, method)
    ctx.extras.setdefault("onnx", {}).update(onnx_files)
    for name, path in onnx_files.items():
        ctx.artifacts[f"onnx_{name}"] = path


def _binarize(ctx: RunContext, cfg: Any, model: torch.nn.Module, example: torch.Tensor, measure: Any) -> dict:
    out_dir = ctx.run_dir / "compressed"
    opts = {k: cfg.get(k) for k in ("keep_first_last", "scale", "binarize_input") if cfg.get(k) is not None}
    binary = binarize(model, **opts).train()  # the copy is in eval mode; Lightning keeps sub-module modes
    original = ctx.model.backbone
    ctx.model.backbone = binary  # _fine_tune fine-tunes a copy of ctx.model.backbone
    try:
        module = _fine_tune(ctx, NODE, Callback())  # a plain fine-tune: the base Callback does nothing
    finally:
        ctx.model.backbone = original
    trained = module.backbone.cpu().eval()
    info = save_binarized(trained, out_dir / "binarized.pt")
    ctx.artifacts["compressed_binarized"] = str(out_dir / "binarized.pt")
    ctx.extras.setdefault("models", {})["binarized"] = trained
    row = measure(to_onnx(trained, example, out_dir / "binarized_fp32.onnx"))
    # what ships is the bit-packed file; the ONNX graph computes with +-1 stored as fp32
    row["onnx_size_bytes"] = row["size_bytes"]
    row["size_bytes"] = info["file_bytes"]
    row["binary_params"] = info["binary_params"]
    return {"binarized": row}


def _report(ctx: RunContext, rows: dict[str, dict[str, Any]], method: str) -> None:
    out_dir = ctx.run_dir / "compressed"
    (out_dir / "quantization_report.json").write_text(json.dumps({"method": method, "rows": rows}, indent=2))
    table = quantization_table(rows)
    (out_dir / "quantization_report.md").write_text(
        "# Quantization report\n\nONNX Runtime (CPU) on the test split; latency = median of repeated runs; "
        "ratios against fp32 ONNX Runtime.\n\n" + table + "\n"
    )
    ctx.artifacts["quantization_report"] = str(out_dir / "quantization_report.md")
    writer = tensorboard_writer(ctx.trainer) if ctx.trainer is not None else None
    step = int(getattr(ctx.trainer, "global_step", 0) or 0)
    for name, row in rows.items():
        for key, value in row.items():
            if isinstance(value, (int, float)):
                ctx.summary[f"quantize/{name}/{key}"] = value
                if writer is not None:
                    writer.add_scalar(f"quantize/{name}/{key}", float(value), step)
    if writer is not None:
        writer.add_text("quantize/report", table, step)
        writer.flush()
    ctx.extras.setdefault("printouts", []).append(f"quantize ({method}):\n" + table)
