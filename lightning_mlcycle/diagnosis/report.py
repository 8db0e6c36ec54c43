"""``DiagnosisReport``: the fit state, the ranked findings and the learning curve behind them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_mlcycle.diagnosis.finding import (  # Severity: used by the doctest
    Finding,
    FitState,
    Severity,  # noqa: F401
    Symptom,
    _jsonable,
)
from lightning_mlcycle.diagnosis.rules import PRIORITY

_STATE_TEXT = {
    FitState.UNDERFITTING: "under-fitting (high bias): the model does not fit the training data well",
    FitState.OVERFITTING: "over-fitting (high variance): it fits training data much better than "
                          "validation data",
    FitState.GOOD_FIT: "good fit: low training loss and a small generalization gap",
    FitState.UNKNOWN: "unknown: too early to tell (or nothing finite to compare)",
}


def _sort_key(f: Finding) -> tuple[int, int, int, float]:
    # a critical event ranks first even once past (it usually caused what followed)
    active = 0 if f.active else 1
    return (f.severity.rank, active, PRIORITY.index(f.symptom), -f.confidence)


@dataclass
class DiagnosisReport:
    """What :class:`~lightning_mlcycle.diagnosis.FitDiagnosis` concluded about a training run.

    Attributes:
        fit_state: ``underfitting``, ``overfitting``, ``good_fit`` or ``unknown``.
        findings: ranked hypotheses: by severity, then still-seen before resolved, then root causes
            before their effects, then confidence.
        history: one record per validation check (epoch, step, train/val loss, monitored metric).
        fit_evidence: the numbers behind ``fit_state`` (bias, variance, trend, reference loss).
        stop_reason: why training stopped early (early stopping, a fatal finding), if it did.
        meta: what the diagnosis assumed (number of classes, chance loss, keys it read).

    Example:
        >>> r = DiagnosisReport(fit_state=FitState.OVERFITTING)
        >>> r.add(Finding(Symptom.OVERFITTING, Severity.WARNING, step=50, epoch=5,
        ...               evidence={"relative_gap": 0.4}, message="val loss far above train"))
        >>> r.top(1)[0].symptom.value, r.to_dict()["fit_state"]
        ('overfitting', 'overfitting')
        >>> "## Findings" in r.to_markdown()
        True
    """

    fit_state: FitState = FitState.UNKNOWN
    findings: list[Finding] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    fit_evidence: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fit_state = FitState(self.fit_state)

    # -- content -------------------------------------------------------------------------------
    def add(self, finding: Finding) -> None:
        """Add a finding, or update the one with the same symptom (keeping when it was first seen)."""
        for i, old in enumerate(self.findings):
            if old.symptom == finding.symptom:
                finding.first_step = old.first_step
                self.findings[i] = finding
                break
        else:
            self.findings.append(finding)
        self.findings.sort(key=_sort_key)

    def finding(self, symptom: Symptom | str) -> Finding | None:
        """The finding for ``symptom``, or None."""
        s = Symptom(symptom)
        return next((f for f in self.findings if f.symptom == s), None)

    @property
    def symptoms(self) -> list[Symptom]:
        """Symptoms found, in rank order."""
        return [f.symptom for f in self.findings]

    @property
    def faults(self) -> list[Finding]:
        """Findings that are training faults (not the bias/variance states or slowness)."""
        return [f for f in self.findings if f.symptom.is_fault]

    def top(self, n: int = 3) -> list[Finding]:
        """The ``n`` highest-ranked findings."""
        return self.findings[:n]

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``json.dumps`` works on it as is)."""
        return {
            "fit_state": self.fit_state.value,
            "fit_state_text": _STATE_TEXT[self.fit_state],
            "stop_reason": self.stop_reason,
            "fit_evidence": _jsonable(self.fit_evidence),
            "findings": [f.to_dict() for f in self.findings],
            "history": _jsonable(self.history),
            "meta": _jsonable(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiagnosisReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            fit_state=FitState(d.get("fit_state", "unknown")),
            findings=[Finding.from_dict(f) for f in d.get("findings", [])],
            history=list(d.get("history", [])),
            fit_evidence=dict(d.get("fit_evidence", {})),
            stop_reason=d.get("stop_reason"),
            meta=dict(d.get("meta", {})),
        )

    def to_markdown(self) -> str:
        """A human-readable report: fit state, ranked findings with evidence and remedies."""
        lines = ["# Fit diagnosis", "", f"**Fit state: `{self.fit_state.value}`** - "
                 f"{_STATE_TEXT[self.fit_state]}.", ""]
        ev = self.fit_evidence
        if ev.get("train_loss") is not None:
            parts = [f"train loss {ev['train_loss']:.4g}"]
            if ev.get("val_loss") is not None:
                parts.append(f"val loss {ev['val_loss']:.4g}")
            if ev.get("reference") is not None:
                parts.append(f"reference (chance) loss {ev['reference']:.4g}")
            if ev.get("bias") is not None:
                parts.append(f"relative bias {ev['bias']:.3f}")
            if ev.get("variance") is not None:
                parts.append(f"relative gap {ev['variance']:.3f}")
            if ev.get("trend") is not None:
                parts.append(f"train-loss trend {ev['trend']:+.2%}/check")
            lines += ["Evidence: " + ", ".join(parts) + ".", ""]
        if self.stop_reason:
            lines += [f"Stopped early: {self.stop_reason}", ""]
        lines += ["## Findings", ""]
        if not self.findings:
            lines += ["No symptom found.", ""]
        for i, f in enumerate(self.findings, 1):
            active = "" if f.active else " (no longer seen)"
            lines.append(f"### {i}. `{f.symptom.value}` ({f.severity.value}, confidence "
                         f"{f.confidence:.2f}){active}")
            lines.append("")
            lines.append(f"{f.message} (first at step {f.first_step}, last at epoch {f.epoch}, "
                         f"step {f.step}).")
            lines.append("")
            shown = _jsonable(f.evidence)
            if shown:
                lines.append("Evidence: " + ", ".join(f"`{k}`={v}" for k, v in shown.items()))
                lines.append("")
            if f.remedies:
                lines.append("Try, in order:")
                for r in f.remedies:
                    lines.append(f"1. {r.action}" + (f" (`{r.override}`)" if r.override else ""))
                lines.append("")
        if self.history:
            lines += ["## Learning curve", "", "| epoch | step | train loss | val loss | monitor |",
                      "|---:|---:|---:|---:|---:|"]
            for h in self.history:
                lines.append("| {} | {} | {} | {} | {} |".format(
                    h.get("epoch"), h.get("step"), _fmt(h.get("train_loss")),
                    _fmt(h.get("val_loss")), _fmt(h.get("monitor"))))
            lines.append("")
        return "\n".join(lines)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``diagnosis.json`` and ``diagnosis.md`` into ``directory``; return their paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"json": d / "diagnosis.json", "markdown": d / "diagnosis.md"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        paths["markdown"].write_text(self.to_markdown())
        return paths


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)
