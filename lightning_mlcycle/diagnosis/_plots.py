"""The learning-curve figure with the diagnosis marked on it (private)."""

from __future__ import annotations

import math
from typing import Any

from lightning_mlcycle.diagnosis.report import DiagnosisReport


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def learning_curve_figure(report: DiagnosisReport) -> Any:
    """Train/val loss per check, the best validation check, and each finding where first seen."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    h = report.history
    steps = [r.get("step", i) for i, r in enumerate(h)]
    for key, label, style in (("train_loss", "train loss", "-o"), ("val_loss", "val loss", "-s")):
        pts = [(s, r[key]) for s, r in zip(steps, h, strict=False) if _finite(r.get(key))]
        if pts:
            ax.plot(*zip(*pts, strict=False), style, ms=3, label=label)
    vals = [(s, r["val_loss"]) for s, r in zip(steps, h, strict=False) if _finite(r.get("val_loss"))]
    if vals:
        best = min(vals, key=lambda sv: sv[1])
        ax.axvline(best[0], color="green", ls=":", lw=1)
        ax.annotate("best val", (best[0], best[1]), textcoords="offset points", xytext=(4, 8),
                    fontsize=7, color="green")
    ymax = ax.get_ylim()[1] if ax.has_data() else 1.0
    for i, f in enumerate(report.findings):
        x = f.first_step if f.first_step is not None else f.step
        color = {"critical": "red", "warning": "darkorange", "info": "grey"}[f.severity.value]
        ax.axvline(x, color=color, ls="--", lw=1)
        ax.text(x, ymax * (0.95 - 0.08 * (i % 6)), f" {f.symptom.value}", color=color, fontsize=7,
                va="top")
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    positive = [r.get(k) for r in h for k in ("train_loss", "val_loss") if _finite(r.get(k))]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    top = report.findings[0].symptom.value if report.findings else "none"
    ax.set_title(f"fit state: {report.fit_state.value}   top finding: {top}", fontsize=10)
    if ax.has_data():
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig
