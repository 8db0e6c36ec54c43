"""The ``monitor`` stage: save the reference profile with the model and stress-test the monitor."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import rank_zero, tensorboard_writer
from lightning_mlcycle.cli.context import RunContext

log = logging.getLogger(__name__)


def _deployed_model(ctx: RunContext, use_exported: bool) -> tuple[Any, str]:
    """The exported ONNX model when the export stage wrote one, else the trained module."""
    card = ctx.run_dir / "export" / "model_card.json"
    if use_exported and card.is_file():
        from lightning_mlcycle.export import Predictor

        try:
            return Predictor(card.parent, threads=1), "onnx"
        except MLCycleError as err:
            log.warning(
                "Stress test on the torch model: the exported model did not load (%s).", err
            )
    return ctx.model, "torch"


def monitor_stage(ctx: RunContext) -> None:
    """Capture the reference profile (validation split), save it, run the stress test (test split)."""
    # the monitor's tensors are small: one thread is faster, and on a busy machine several
    # threads (torch's and ONNX Runtime's, spinning) slowed the stage 10x in our runs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _monitor_stage(ctx)
    finally:
        torch.set_num_threads(threads)


def _monitor_stage(ctx: RunContext) -> None:
    from lightning_mlcycle.monitoring import DriftMonitor, ReferenceProfile, stress_test

    cfg = ctx.cfg.monitor
    dm, module = ctx.datamodule, ctx.model
    start = time.perf_counter()
    x_val, y_val = dm.raw_split("val")
    x_train, _ = dm.raw_split("train")
    g = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    fit_idx = torch.randperm(x_train.shape[0], generator=g)[: int(cfg.get("max_fit_samples", 5000))]
    metrics = {k: float(v) for k, v in ctx.summary.items() if k.startswith("test/")}
    try:
        profile = ReferenceProfile.capture(
            module,
            x_val,
            y_val,
            projection=cfg.get("projection", "auto"),
            n_components=int(cfg.get("n_components", 16)),
            fit_inputs=x_train[fit_idx],
            class_names=list(dm.class_names),
            metrics=metrics,
            fingerprint_atol=float(cfg.get("fingerprint_atol", 0.02)),
            seed=int(cfg.get("seed", 0)),
        )
    except (ValueError, TypeError) as err:
        raise MLCycleError(f"Config `monitor`: {err}") from err
    out = ctx.run_dir / "monitoring"
    if rank_zero():
        ctx.artifacts["monitor_profile"] = str(profile.save(out))
        export_dir = ctx.run_dir / "export"
        if export_dir.is_dir():
            ctx.artifacts["export_profile"] = str(profile.save(export_dir))
    ctx.extras["profile"] = profile
    ctx.summary["monitor/fingerprint"] = profile.fingerprint
    ctx.summary["monitor/temperature"] = round(profile.temperature, 4)
    ctx.summary["monitor/estimated_val_acc"] = profile.prediction_stats["estimated_accuracy"]
    stress_cfg = cfg.get("stress") or {}
    if not stress_cfg.get("enabled", True):
        return
    model, kind = _deployed_model(ctx, bool(cfg.get("use_exported", True)))
    try:
        monitor = DriftMonitor(
            model,
            profile,
            alpha=float(cfg.get("alpha", 0.05)),
            detectors=list(cfg.get("detectors", ["ks", "mmd", "prediction"])),
            permutations=int(cfg.get("permutations", 200)),
            calibration_splits=int(cfg.get("calibration_splits", 500)),
            seed=int(cfg.get("seed", 0)),
        )
    except (ValueError, TypeError) as err:
        raise MLCycleError(f"Config `monitor`: {err}") from err
    x_test, y_test = dm.raw_split("test")
    shifts = stress_cfg.get("shifts")
    report = stress_test(
        monitor,
        x_test,
        y_test,
        shifts=list(shifts) if shifts is not None else None,
        severities=[int(s) for s in stress_cfg.get("severities", [1, 2, 3, 4, 5])],
        window_size=stress_cfg.get("window_size"),
        windows=int(stress_cfg.get("windows", 1)),
        seed=int(cfg.get("seed", 0)),
    )
    if rank_zero():
        ctx.artifacts["stress_test"] = str(report.save(out))
        writer = tensorboard_writer(ctx.trainer) if ctx.trainer is not None else None
        if writer is not None:
            report.log_to_tensorboard(writer, step=int(getattr(ctx.trainer, "global_step", 0)))
    shifted = [r for r in report.rows if r["shift"] != "none"]
    ctx.summary["monitor/stress_model"] = kind
    ctx.summary["monitor/false_alarm"] = report.cell("none", 0)["detected"]
    ctx.summary["monitor/detected_shifts"] = round(
        sum(r["detected"] for r in shifted) / max(1, len(shifted)), 4
    )
    worst = min(shifted, key=lambda r: r["accuracy"], default=None)
    if worst is not None:
        ctx.summary["monitor/worst_shift"] = f"{worst['shift']}@{worst['severity']}"
        ctx.summary["monitor/worst_acc"] = worst["accuracy"]
    ctx.summary["monitor/seconds"] = round(time.perf_counter() - start, 2)
    ctx.extras.setdefault("printouts", []).append(_table(report, kind))
    log.info("Monitor stage: profile in %s, stress test %.1f s", out, report.seconds)


def _table(report: Any, kind: str) -> Any:
    """Accuracy per shift (rows) and severity (columns); '*' where the monitor fired."""
    from rich.table import Table

    severities = sorted({r["severity"] for r in report.rows if r["shift"] != "none"})
    base = report.cell("none", 0)
    table = Table(
        title=f"stress test ({kind} model): test accuracy per shift and severity, * = drift detected",
        caption=f"no shift: accuracy {base['accuracy']:.3f}, false alarm {base['detected']:.0%}",
    )
    table.add_column("shift")
    for s in severities:
        table.add_column(str(s), justify="right")
    for shift in dict.fromkeys(r["shift"] for r in report.rows if r["shift"] != "none"):
        cells = []
        for s in severities:
            row = report.cell(shift, s)
            cells.append(f"{row['accuracy']:.2f}{'*' if row['detected'] >= 0.5 else ' '}")
        table.add_row(shift, *cells)
    return table
