"""The ``export`` stage: deployment artifacts, parity checks, latency report and model card."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import rank_zero, tensorboard_writer
from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.export import ModelInterface, export_model
from lightning_mlcycle.export.callback import collect_samples

log = logging.getLogger(__name__)


def _training_config(cfg: Any) -> dict[str, Any]:
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # interpolations that only resolve inside the Hydra app (e.g. ${hydra:...})
        out = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items() if k != "hydra"}


def export_stage(ctx: RunContext) -> None:
    """Export the tested model and the compressed variants into ``<run>/export/``."""
    if not rank_zero():
        return
    cfg = ctx.cfg.export
    if ctx.model is None or ctx.datamodule is None:
        raise MLCycleError(
            "The export stage needs the trained model and data of the fit/test stages."
        )
    dm = ctx.datamodule
    x, y = collect_samples(dm.test_dataloader(), int(cfg.max_samples))
    interface = ModelInterface.infer(module=ctx.model, datamodule=dm)
    variants = dict(ctx.extras.get("models") or {}) if cfg.get("variants", True) else {}
    onnx_files = dict(ctx.extras.get("onnx") or {}) if cfg.get("onnx_files", True) else {}
    metrics = {k: float(v) for k, v in ctx.summary.items() if k.startswith("test/")}
    backbone_cfg = (
        OmegaConf.select(ctx.cfg, "model.backbone._target_") or type(ctx.model.backbone).__name__
    )
    tolerances = (
        OmegaConf.to_container(cfg.tolerances, resolve=True) if cfg.get("tolerances") else None
    )
    out = ctx.run_dir / "export"
    result = export_model(
        ctx.model.backbone,
        out,
        test_data=(x, y),
        interface=interface,
        variants=variants,
        onnx_files=onnx_files,
        formats=list(cfg.formats),
        runtimes=list(cfg.runtimes),
        opset=int(cfg.opset),
        tolerances=tolerances,  # type: ignore[arg-type]
        batch_sizes=[int(b) for b in cfg.batch_sizes],
        warmup=int(cfg.warmup),
        repeats=int(cfg.repeats),
        max_seconds_per_cell=cfg.get("max_seconds_per_cell"),
        max_parity_samples=int(cfg.max_samples),
        device=str(cfg.device),
        name=str(backbone_cfg).rsplit(".", 1)[-1],
        metrics=metrics,
        training_config=_training_config(ctx.cfg),
        tensorboard=tensorboard_writer(ctx.trainer) if ctx.trainer is not None else None,
        global_step=int(getattr(ctx.trainer, "global_step", 0) or 0),
    )
    ctx.extras["export"] = result
    ctx.summary.update(result.summary())
    ctx.artifacts["export"] = str(out)
    ctx.artifacts["model_card"] = str(out / "model_card.md")
    ctx.extras.setdefault("printouts", []).append(_latency_table(result))


def _latency_table(result: Any) -> Any:
    from rich.table import Table

    table = Table(title="export: latency (median ms) on this machine", header_style="bold")
    sizes = sorted({r.batch_size for r in result.latency})
    for col in ("artifact", "runtime", *[f"batch {b}" for b in sizes], "accuracy"):
        table.add_column(col, justify="left" if col in ("artifact", "runtime") else "right")
    rows: dict[tuple[str, str], dict[int, Any]] = {}
    acc: dict[tuple[str, str], Any] = {}
    for r in result.latency:
        rows.setdefault((r.artifact, r.runtime), {})[r.batch_size] = r.median_ms
        acc[(r.artifact, r.runtime)] = r.accuracy
    for (art, rt), cells in rows.items():
        a = acc[(art, rt)]
        table.add_row(
            art,
            rt,
            *[f"{cells[b]:.3f}" if b in cells else "" for b in sizes],
            "n/a" if a is None else f"{a:.4f}",
        )
    return table
