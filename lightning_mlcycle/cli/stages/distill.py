"""The ``distill`` stage: the trained model teaches a smaller student; both are measured.

``distill_check`` runs right after ``build`` and constructs the distillation with the (untrained)
model, so a bad ``compress.distill`` config (alpha, temperature, hint names, a student with another
number of outputs) fails before anything is trained. ``distill`` runs after the other compression
stages: it trains the student on ``ctx.datamodule`` with the tested model as the frozen teacher,
compares both on the test split (accuracy, parameters, size, latency), writes TensorBoard scalars
and text, ``<run>/compressed/distilled.pt`` and ``distill_report.json|md``, and hands the student to
the export stage as ``ctx.extras["models"]["distilled"]``. It trains on one device, on rank zero.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import rank_zero, tensorboard_writer
from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.cli.stages.train import _fill_backbone, _instantiate
from lightning_mlcycle.compression._distill_eval import (
    count_parameters,
    evaluate,
    latency_ms,
    size_bytes,
)
from lightning_mlcycle.compression.distillation import DistillationModule

log = logging.getLogger(__name__)

_KEY = "compress.distill"


def _schedule(node: Any, key: str) -> Any:
    """A number, or a schedule config (``_target_: ...LinearSchedule``) instantiated."""
    if isinstance(node, DictConfig):
        return _instantiate(node, key)
    return node


def _build(ctx: RunContext, teacher: torch.nn.Module) -> tuple[DistillationModule, dict[str, Any]]:
    """The DistillationModule the config describes, errors naming ``compress.distill``."""
    cfg = ctx.cfg.compress.distill
    dm = ctx.datamodule
    if "student" not in cfg or cfg.student is None:
        raise MLCycleError(f"`{_KEY}.student` is missing: give the student network's config (_target_ ...).")
    student_cfg = _fill_backbone(cfg.student, dm)
    student = _instantiate(student_cfg, f"{_KEY}.student")
    optimizer = _instantiate(cfg.optimizer, f"{_KEY}.optimizer") if cfg.get("optimizer") else None
    hints = OmegaConf.to_container(cfg.hints, resolve=True) if cfg.get("hints") else None
    try:
        module = DistillationModule(
            teacher,
            student,
            num_classes=dm.num_classes,
            input_shape=dm.input_shape,
            alpha=_schedule(cfg.get("alpha", 0.5), f"{_KEY}.alpha"),
            temperature=_schedule(cfg.get("temperature", 4.0), f"{_KEY}.temperature"),
            hints=hints,  # type: ignore[arg-type]
            hint_weight=_schedule(cfg.get("hint_weight", 1.0), f"{_KEY}.hint_weight"),
            cache_teacher=bool(cfg.get("cache_teacher", False)),
            cache_key=str(cfg.get("cache_key", "content")),
            label_smoothing=float(cfg.get("label_smoothing", 0.0)),
            optimizer=optimizer,
            class_names=list(dm.class_names),
        )
    except (ValueError, TypeError) as err:
        raise MLCycleError(f"Config `{_KEY}`: {err}") from err
    epochs = cfg.get("max_epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise MLCycleError(f"`{_KEY}.max_epochs` must be a positive integer, but got {epochs!r}.")
    return module, OmegaConf.to_container(student_cfg, resolve=True)  # type: ignore[return-value]


def distill_check_stage(ctx: RunContext) -> None:
    """Validate ``compress.distill`` against the built (untrained) model before anything trains."""
    _build(ctx, copy.deepcopy(ctx.model.backbone).cpu())


def distill_stage(ctx: RunContext) -> None:
    """Train the student from the tested model, compare both, and hand the student on."""
    if not rank_zero():
        return
    if ctx.model is None or ctx.datamodule is None:
        raise MLCycleError("The distill stage needs the trained model and data of the fit/test stages.")
    cfg = ctx.cfg.compress.distill
    dm = ctx.datamodule
    teacher = copy.deepcopy(ctx.model.backbone).cpu().eval()
    module, student_cfg = _build(ctx, teacher)
    out_dir = ctx.run_dir / "compressed"
    out_dir.mkdir(parents=True, exist_ok=True)
    tb_dir = ctx.artifacts.get("tensorboard")
    logger: Any = False
    if tb_dir:
        from lightning.pytorch.loggers import TensorBoardLogger

        # a sub-run of the run's TensorBoard folder: the student's curves next to the teacher's
        logger = TensorBoardLogger(save_dir=tb_dir, name="", version="distill", default_hp_metric=False)
    tcfg = ctx.cfg.trainer
    trainer = pl.Trainer(
        max_epochs=int(cfg.max_epochs),
        accelerator=str(tcfg.get("accelerator", "auto")),
        devices=1,
        precision=tcfg.get("precision", "32-true"),
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=bool(tcfg.get("enable_progress_bar", True)),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=int(tcfg.get("log_every_n_steps", 10)),
        default_root_dir=str(out_dir),
    )
    trainer.fit(module, datamodule=dm)
    student = module.student.cpu().eval()
    teacher = ctx.model.backbone.cpu().eval()

    test_loader = dm.test_dataloader()
    example = next(iter(test_loader))[0][: int(cfg.get("latency_batch_size", 1))]
    repeats = int(cfg.get("latency_repeats", 50))
    rows: dict[str, dict[str, float]] = {}
    for name, model in (("teacher", teacher), ("student", student)):
        metrics = evaluate(model, test_loader, dm.num_classes)
        rows[name] = {
            "acc": metrics["acc"],
            "f1": metrics["f1"],
            "params": count_parameters(model),
            "size_bytes": size_bytes(model),
            "latency_ms": latency_ms(model, example, repeats=repeats),
        }
    summary = {f"distill/{who}_{k}": v for who, r in rows.items() for k, v in r.items()}
    summary["distill/param_ratio"] = rows["teacher"]["params"] / max(rows["student"]["params"], 1)
    summary["distill/acc_delta"] = rows["student"]["acc"] - rows["teacher"]["acc"]
    summary["distill/epochs"] = int(trainer.current_epoch)
    cache = module.cache
    if cache is not None:
        summary["distill/cache_used"] = bool(cache.enabled and cache.hits > 0)
    ctx.summary.update(summary)

    path = out_dir / "distilled.pt"
    # the config and the weights, so torch.load(weights_only=True) and instantiate() rebuild it
    torch.save({"backbone_config": student_cfg, "state_dict": student.state_dict()}, path)
    report_md = _report_markdown(rows, summary)
    (out_dir / "distill_report.md").write_text(report_md)
    (out_dir / "distill_report.json").write_text(json.dumps({"teacher": rows["teacher"], "student": rows["student"],
                                                             "summary": summary}, indent=2))
    ctx.artifacts["distilled_model"] = str(path)
    ctx.artifacts["distill_report"] = str(out_dir / "distill_report.md")
    ctx.extras.setdefault("models", {})["distilled"] = student
    _to_tensorboard(ctx, summary, report_md)
    ctx.extras.setdefault("printouts", []).append(_rich_table(rows))


def load_distilled(path: str | Path) -> torch.nn.Module:
    """Rebuild the student saved by the distill stage (safe ``weights_only`` load)."""
    from hydra.utils import instantiate

    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = instantiate(blob["backbone_config"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def _report_markdown(rows: dict[str, dict[str, float]], summary: dict[str, Any]) -> str:
    lines = ["| model | test acc | macro F1 | params | size (KiB) | latency (ms) |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['acc']:.4f} | {r['f1']:.4f} | {int(r['params']):,} | "
                     f"{r['size_bytes'] / 1024:.1f} | {r['latency_ms']:.3f} |")
    lines.append("")
    lines.append(f"The student has {summary['distill/param_ratio']:.1f}x fewer parameters; accuracy "
                 f"change {summary['distill/acc_delta']:+.4f}.")
    return "\n".join(lines) + "\n"


def _to_tensorboard(ctx: RunContext, summary: dict[str, Any], report_md: str) -> None:
    writer = tensorboard_writer(ctx.trainer) if ctx.trainer is not None else None
    if writer is None:
        return
    step = int(getattr(ctx.trainer, "global_step", 0) or 0)
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(key, float(value), global_step=step)
    writer.add_text("distill/report", report_md, global_step=step)
    writer.flush()


def _rich_table(rows: dict[str, dict[str, float]]) -> Any:
    from rich.table import Table

    table = Table(title="distill: teacher vs student (test split)", header_style="bold")
    for col in ("model", "test acc", "params", "size (KiB)", "latency (ms)"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['acc']:.4f}", f"{int(r['params']):,}", f"{r['size_bytes'] / 1024:.1f}",
                      f"{r['latency_ms']:.3f}")
    return table
