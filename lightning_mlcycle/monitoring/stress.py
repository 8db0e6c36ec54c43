"""Pre-deployment stress test: how accuracy falls under shifts, and whether the monitor sees it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.monitoring.monitor import DriftMonitor
from lightning_mlcycle.monitoring.shifts import SHIFTS, apply_shift, default_shifts


@dataclass
class StressReport:
    """One row per (shift, severity), plus the unshifted baseline (shift ``"none"``, severity 0).

    Attributes:
        rows: dicts with ``shift``, ``severity``, ``accuracy``, ``estimated_accuracy``,
            ``detected`` (fraction of windows in which the monitor fired) and one
            ``detected_<detector>`` per detector.
        window_size: samples per monitored window.
        windows: windows per cell.
        seconds: total time.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    window_size: int = 0
    windows: int = 1
    seconds: float = 0.0

    @property
    def detectors(self) -> list[str]:
        """Detector names in the table."""
        return [
            k[len("detected_") :]
            for k in (self.rows[0] if self.rows else {})
            if k.startswith("detected_")
        ]

    def cell(self, shift: str, severity: int) -> dict[str, Any]:
        """The row of one shift and severity."""
        for row in self.rows:
            if row["shift"] == shift and row["severity"] == severity:
                return row
        raise MLCycleError(f"No row for shift={shift!r}, severity={severity!r} in the stress test.")

    def to_markdown(self) -> str:
        """The table as Markdown."""
        dets = self.detectors
        head = ["shift", "severity", "accuracy", "est. accuracy", "detected", *dets]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [
                r["shift"],
                str(r["severity"]),
                f"{r['accuracy']:.3f}",
                f"{r['estimated_accuracy']:.3f}",
                f"{r['detected']:.2f}",
                *(f"{r['detected_' + d]:.2f}" for d in dets),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        note = (
            f"\nDetection: fraction of {self.windows} window(s) of {self.window_size} samples in "
            "which the monitor fired (the `none` row is the false-alarm rate).\n"
        )
        return "\n".join(lines) + "\n" + note

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "window_size": self.window_size,
            "windows": self.windows,
            "seconds": round(self.seconds, 3),
            "rows": self.rows,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``stress_test.json`` and ``stress_test.md``; returns the Markdown path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "stress_test.json").write_text(json.dumps(self.to_dict(), indent=2))
        path = out / "stress_test.md"
        path.write_text("# Stress test\n\n" + self.to_markdown())
        return path

    def figure(self) -> Any:
        """Accuracy against severity per shift; filled markers where the monitor fired."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        base = next((r for r in self.rows if r["shift"] == "none"), None)
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for shift in dict.fromkeys(r["shift"] for r in self.rows if r["shift"] != "none"):
            rows = [r for r in self.rows if r["shift"] == shift]
            if base is not None:
                rows = [{**base, "detected": 0.0}, *rows]
            xs = [r["severity"] for r in rows]
            (line,) = ax.plot(xs, [r["accuracy"] for r in rows], label=shift)
            for r in rows:
                hit = r["detected"] >= 0.5
                ax.plot(
                    r["severity"],
                    r["accuracy"],
                    "o",
                    color=line.get_color(),
                    markerfacecolor=line.get_color() if hit else "white",
                )
        ax.set_xlabel("severity (0 = no shift)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title("Stress test (filled: monitor detected the shift)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return fig

    def log_to_tensorboard(self, writer: Any, step: int = 0) -> None:
        """Add the figure and per-cell scalars to a ``SummaryWriter``."""
        import matplotlib.pyplot as plt

        fig = self.figure()
        writer.add_figure("monitor/stress_test", fig, global_step=step)
        plt.close(fig)
        for r in self.rows:
            tag = f"{r['shift']}_s{r['severity']}"
            writer.add_scalar(f"stress_accuracy/{tag}", r["accuracy"], step)
            writer.add_scalar(f"stress_detected/{tag}", r["detected"], step)
        writer.add_text("monitor/stress_test", self.to_markdown(), step)
        writer.flush()


def stress_test(
    monitor: DriftMonitor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    shifts: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    window_size: int | None = None,
    windows: int = 1,
    seed: int = 0,
) -> StressReport:
    """Shift the test split at rising severities; measure accuracy and the monitor's detections.

    Args:
        monitor: a :class:`DriftMonitor` of the model (its profile holds the reference).
        inputs: ``(N, ...)`` raw test inputs (not the profile's own data).
        labels: ``(N,)`` their classes.
        shifts: names from :data:`~lightning_mlcycle.monitoring.shifts.SHIFTS`; ``None`` picks
            the image or tabular set from the input shape.
        severities: levels in 1-5.
        window_size: samples per monitored window (``None``: the whole split in one window).
        windows: random windows per cell (detection is then a rate).
        seed: seed of the shifts and the windows.

    Returns:
        A :class:`StressReport` (accuracy is measured on the whole shifted split).

    Example:
        >>> from torch import nn
        >>> from lightning_mlcycle.monitoring import ReferenceProfile
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 2)
        >>> x = torch.randn(300, 4, generator=g)
        >>> monitor = DriftMonitor(model, ReferenceProfile.capture(model, x[:150]), calibration_splits=50)
        >>> report = stress_test(monitor, x[150:], (x[150:, 0] > 0).long(), severities=(3,))
        >>> [(r["shift"], r["severity"]) for r in report.rows][:2]
        [('none', 0), ('gaussian_noise', 3)]
    """
    if not isinstance(monitor, DriftMonitor):
        raise TypeError(
            f"Expected argument `monitor` to be a DriftMonitor, but got {type(monitor).__name__}."
        )
    x = torch.as_tensor(inputs).float()
    y = torch.as_tensor(labels).long()
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise MLCycleError(
            f"`inputs` and `labels` must have the same N >= 2, but got {x.shape[0]} and {y.shape[0]}."
        )
    names = list(shifts) if shifts is not None else list(default_shifts(tuple(x.shape[1:])))
    unknown = [s for s in names if s not in SHIFTS]
    if unknown:
        raise MLCycleError(f"Unknown shifts {unknown}; expected names from {sorted(SHIFTS)}.")
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise MLCycleError(
                f"`severities` must be integers in [1, 5], but got {list(severities)}."
            )
    size = x.shape[0] if window_size is None else int(window_size)
    if not 2 <= size <= x.shape[0]:
        raise MLCycleError(f"`window_size` must be in [2, {x.shape[0]}], but got {window_size!r}.")
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise MLCycleError(f"`windows` must be a positive integer, but got {windows!r}.")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    dets = list(monitor.detectors)
    report = StressReport(window_size=size, windows=windows)
    cells = [("none", 0)] + [(s, sev) for s in names for sev in severities]
    for i, (name, sev) in enumerate(cells):
        shifted = x if name == "none" else apply_shift(x, name, sev, seed=seed + i)
        full = monitor.evaluate(shifted, y) if size == x.shape[0] else None
        hits = dict.fromkeys(["any", *dets], 0)
        for w in range(windows):
            if full is not None and w == 0:
                rep = full
            else:
                idx = torch.randperm(x.shape[0], generator=g)[:size]
                rep = monitor.evaluate(shifted[idx], y[idx])
            hits["any"] += rep.drifted
            for r in rep.results:
                hits[r.detector] += r.drifted
        whole = full if full is not None else monitor.evaluate(shifted, y)
        report.rows.append(
            {
                "shift": name,
                "severity": sev,
                "accuracy": round(float(whole.accuracy), 4),
                "estimated_accuracy": round(float(whole.estimated_accuracy), 4),
                "detected": hits["any"] / windows,
                **{f"detected_{d}": hits[d] / windows for d in dets},
            }
        )
    report.seconds = time.perf_counter() - start
    return report
