"""Put the fit diagnosis into the run's summary, folder and printout, in terms of its config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.diagnosis import DiagnosisReport, FitDiagnosis, Remedy, remedies_for
from lightning_mlcycle.diagnosis.remedies import derived_context

log = logging.getLogger(__name__)

_TOP = 3


def _config_dir() -> Path:
    from lightning_mlcycle.cli.main import config_dir

    return Path(config_dir())


def _option_target(group: str, option: str, key: str) -> str | None:
    """``_target_`` at ``key`` of a config group option (following one ``defaults`` level)."""
    path = _config_dir() / group / f"{option}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    target = OmegaConf.select(node, key) if key else node.get("_target_")
    if target is None:
        for entry in node.get("defaults", []) or []:
            if isinstance(entry, str) and entry != "_self_":
                return _option_target(group, entry, key)
    return None if target is None else str(target)


def override_applies(cfg: DictConfig, override: str) -> bool:
    """True when ``override`` would change something in this run's config.

    ``a.b.c=v`` needs the key to exist; ``group=option`` needs the option file, and for ``data``
    the same data module without augmentation, for ``model`` a different backbone.
    """
    key, _, value = override.partition("=")
    if "." in key:
        return OmegaConf.select(cfg, key, default=None) is not None or (
            OmegaConf.select(cfg, key.rsplit(".", 1)[0], default=None) is not None
            and key.rsplit(".", 1)[1] in (OmegaConf.select(cfg, key.rsplit(".", 1)[0]) or {})
        )
    if not (_config_dir() / key / f"{value}.yaml").is_file():
        return False
    if key == "data":
        target = _option_target("data", value, "_target_") or _option_target("data", value, "")
        same = target is None or target == OmegaConf.select(cfg, "data._target_")
        return same and not OmegaConf.select(cfg, "data.augmentation", default=None)
    if key == "model":
        other = _option_target("model", value, "backbone._target_")
        return other is not None and other != OmegaConf.select(cfg, "model.backbone._target_")
    return True


def _context(cfg: DictConfig) -> dict[str, Any]:
    values = {
        "lr": OmegaConf.select(cfg, "model.optimizer.lr", default=None),
        "weight_decay": OmegaConf.select(cfg, "model.optimizer.weight_decay", default=None),
        "width": OmegaConf.select(cfg, "model.backbone.width", default=None),
        "dropout": OmegaConf.select(cfg, "model.backbone.dropout", default=None),
        "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs", default=None),
        "batch_size": OmegaConf.select(cfg, "data.batch_size", default=None),
    }
    hidden = OmegaConf.select(cfg, "model.backbone.hidden", default=None)
    if hidden is not None:
        values["hidden"] = list(hidden)
    return derived_context(values)


def render_for_config(report: DiagnosisReport, cfg: DictConfig) -> DiagnosisReport:
    """A copy of ``report`` whose remedies carry only overrides valid for ``cfg``.

    Override values are derived from ``cfg`` (e.g. ``model.optimizer.lr`` a tenth of its value).
    """
    out = DiagnosisReport.from_dict(report.to_dict())
    context = _context(cfg)
    for f in out.findings:
        f.remedies = [
            r if r.override is None or override_applies(cfg, r.override) else Remedy(r.action)
            for r in remedies_for(f.symptom, context)
        ]
    return out


def _printout(report: DiagnosisReport) -> Any:
    from rich.panel import Panel
    from rich.table import Table

    color = {"good_fit": "green", "unknown": "yellow"}.get(report.fit_state.value, "red")
    table = Table(show_header=True, header_style="bold", expand=False, box=None)
    table.add_column("#")
    table.add_column("finding")
    table.add_column("evidence", overflow="fold")
    table.add_column("try", overflow="fold")
    for i, f in enumerate(report.top(_TOP), 1):
        tries = [r.action + (f" [cyan]{r.override}[/cyan]" if r.override else "") for r in f.remedies[:3]]
        table.add_row(str(i), f"{f.symptom.value}\n({f.severity.value})", f.message, "\n".join(tries))
    title = f"fit diagnosis: [bold {color}]{report.fit_state.value}[/bold {color}]"
    body: Any = table if report.findings else "No symptom found."
    if report.stop_reason:
        from rich.console import Group

        body = Group(body, f"[dim]{report.stop_reason}[/dim]")
    return Panel(body, title=title, expand=False)


def diagnosis_stage(ctx: RunContext) -> None:
    """Summarize the ``FitDiagnosis`` callback of the fit stage (skipped when it is not used)."""
    trainer = ctx.trainer
    cb = next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, FitDiagnosis)), None)
    if cb is None:
        return
    report = render_for_config(cb.report, ctx.cfg)
    ctx.summary["diagnosis/fit_state"] = report.fit_state.value
    ctx.summary["diagnosis/findings"] = len(report.findings)
    ctx.summary["diagnosis/top_findings"] = ", ".join(f.symptom.value for f in report.top(_TOP)) or "none"
    if report.stop_reason:
        ctx.summary["diagnosis/stop_reason"] = report.stop_reason
    if trainer.is_global_zero:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (ctx.run_dir / "diagnosis.json").write_text(json.dumps(report.to_dict(), indent=2))
        (ctx.run_dir / "diagnosis.md").write_text(report.to_markdown())
        ctx.artifacts["diagnosis"] = str(ctx.run_dir / "diagnosis.md")
        for name, path in cb.files.items():
            if name == "learning_curve":
                ctx.artifacts["learning_curve"] = path
    ctx.extras.setdefault("printouts", []).append(_printout(report))
