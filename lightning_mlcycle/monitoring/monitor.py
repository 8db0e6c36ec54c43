"""``DriftMonitor``: checks windows of live inputs of a deployed model against its reference profile."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice
from lightning_mlcycle.monitoring._model import ModelAdapter
from lightning_mlcycle.monitoring.detectors import (
    DriftResult,
    KSDrift,
    MMDDrift,
    PredictionDrift,
    _check_alpha,
    _check_count,
)
from lightning_mlcycle.monitoring.performance import accuracy, estimate_accuracy, macro_f1
from lightning_mlcycle.monitoring.profile import ReferenceProfile

log = logging.getLogger(__name__)

DETECTORS = ("ks", "mmd", "prediction")


@dataclass
class WindowReport:
    """What the monitor found in one window.

    Attributes:
        index: the window's number (counting bad windows too).
        size: samples in the window.
        status: ``"ok"`` or ``"error"`` (a bad window: see ``error``).
        drifted: whether any detector fired.
        results: one :class:`DriftResult` per detector.
        estimated_accuracy: label-free estimate (temperature-scaled mean confidence).
        reference_accuracy: the same estimate on the reference, for comparison.
        accuracy: real accuracy when labels came with the window.
        macro_f1: real macro F1 when labels came with the window.
        retrain_suggested: drift persisted for ``patience`` windows in a row.
        message: a one-line human summary.
        error: why a bad window was rejected.
        seconds: time spent on the window.
    """

    index: int
    size: int
    status: str = "ok"
    drifted: bool = False
    results: list[DriftResult] = field(default_factory=list)
    estimated_accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    retrain_suggested: bool = False
    message: str = ""
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (one line of the monitor's log)."""
        out: dict[str, Any] = {
            "window": self.index,
            "size": self.size,
            "status": self.status,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.status == "error":
            out["error"] = self.error
            return out
        out.update(
            {
                "drifted": self.drifted,
                "tests": {r.detector: r.to_dict() for r in self.results},
                "estimated_accuracy": self.estimated_accuracy,
                "reference_accuracy": self.reference_accuracy,
                "accuracy": self.accuracy,
                "macro_f1": self.macro_f1,
                "retrain_suggested": self.retrain_suggested,
                "message": self.message,
                "seconds": round(self.seconds, 4),
            }
        )
        return out


class DriftMonitor:
    """Watch a deployed model: test each window of live inputs against the reference profile.

    Every window is tested by the chosen detectors on the profile's features (KS, MMD) and on the
    model's outputs (prediction distribution). Each detector runs at ``alpha / len(detectors)``
    (Bonferroni over detectors), so a window of in-distribution data raises a false alarm with
    probability at most ``alpha``. Every window goes to the JSON-lines log and to TensorBoard; a
    drifted one triggers a warning log record and ``on_alert(report)``; ``patience`` drifted windows
    in a row add a retraining suggestion. A bad window (wrong shape or dtype, NaN) raises
    :class:`~lightning_mlcycle.MLCycleError` from :meth:`check` and is logged; the next good
    window is checked as usual (:meth:`run` logs bad windows and carries on).

    Args:
        model: the deployed model: a ``Predictor`` from ``lightning_mlcycle.export``, a
            LightningModule / ``nn.Module`` or any callable from raw inputs to logits/probabilities.
        profile: a :class:`ReferenceProfile` (or the directory it was saved in).
        alpha: false-alarm rate per window, for all detectors together.
        detectors: any of ``"ks"``, ``"mmd"``, ``"prediction"``.
        log_path: JSON-lines file that gets one line per window (appended).
        tensorboard: a ``SummaryWriter`` or a directory to create one in.
        on_alert: called with the :class:`WindowReport` of every drifted window.
        patience: drifted windows in a row before retraining is suggested.
        preprocess: raw -> model input for modules that do not normalize themselves.
        check_model: refuse a profile captured from a different model (see
            :meth:`ReferenceProfile.check_model`).
        permutations: MMD permutations per window.
        calibration_splits: KS calibration splits per window size.
        seed: seed of every random choice.

    Example:
        >>> from torch import nn
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Linear(4, 3)
        >>> profile = ReferenceProfile.capture(model, torch.randn(300, 4, generator=g))
        >>> monitor = DriftMonitor(model, profile, calibration_splits=100)
        >>> monitor.check(torch.randn(100, 4, generator=g) + 2.0).drifted
        True
    """

    def __init__(
        self,
        model: Any,
        profile: ReferenceProfile | str | os.PathLike[str],
        *,
        alpha: float = 0.05,
        detectors: Sequence[str] = DETECTORS,
        log_path: str | os.PathLike[str] | None = None,
        tensorboard: Any = None,
        on_alert: Callable[[WindowReport], Any] | None = None,
        patience: int = 3,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        check_model: bool = True,
        permutations: int = 200,
        calibration_splits: int = 500,
        seed: int = 0,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        detectors = list(detectors)
        if not detectors:
            raise ValueError(
                f"`detectors` must name at least one of {list(DETECTORS)}, but got []."
            )
        for d in detectors:
            check_choice("detectors", d, DETECTORS)
        self.patience = _check_count("patience", patience, 1)
        if on_alert is not None and not callable(on_alert):
            raise TypeError(
                f"Expected argument `on_alert` to be callable, but got {type(on_alert).__name__}."
            )
        if not isinstance(profile, ReferenceProfile):
            profile = ReferenceProfile.load(profile)
        self.profile = profile
        embedding = profile.embedding_layer if profile.projection == "embedding" else None
        self.adapter = ModelAdapter(model, preprocess=preprocess, embedding_layer=embedding)
        if check_model:
            profile.check_model(model, self.adapter)
        per_test = self.alpha / len(detectors)
        feats, probs = profile.arrays["features"], profile.arrays["probs"]
        self.detectors: dict[str, Any] = {}
        for name in detectors:
            if name == "ks":
                self.detectors[name] = KSDrift(
                    per_test, calibration_splits=calibration_splits, seed=seed
                ).fit(feats)
            elif name == "mmd":
                perms = max(permutations, int(np.ceil(1.0 / per_test)))
                self.detectors[name] = MMDDrift(per_test, permutations=perms, seed=seed).fit(feats)
            else:
                self.detectors[name] = PredictionDrift(per_test, seed=seed).fit(probs)
        self.log_path = Path(log_path) if log_path is not None else None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = self._writer(tensorboard)
        self.on_alert = on_alert
        self.reference_accuracy = estimate_accuracy(probs, profile.temperature)
        self.windows_seen = 0
        self.drift_streak = 0
        self.alerts = 0

    @staticmethod
    def _writer(tensorboard: Any) -> Any:
        if tensorboard is None or hasattr(tensorboard, "add_scalar"):
            return tensorboard
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(tensorboard))

    # -- input checks ------------------------------------------------------------------------
    def _validate(self, window: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(window, np.ndarray):
            if window.dtype.kind not in "fiu":
                raise MLCycleError(
                    f"`window` must hold numbers (float or int), but got dtype {window.dtype}."
                )
            window = torch.from_numpy(np.ascontiguousarray(window))
        if not isinstance(window, torch.Tensor):
            raise MLCycleError(
                f"`window` must be a tensor or numpy array, but got {type(window).__name__}."
            )
        if window.dtype in (torch.bool, torch.complex64, torch.complex128) or window.is_complex():
            raise MLCycleError(f"`window` must hold real numbers, but got dtype {window.dtype}.")
        expected = tuple(self.profile.input_shape)
        if window.ndim == len(expected):  # one sample
            window = window[None]
        if tuple(window.shape[1:]) != expected:
            raise MLCycleError(
                f"`window` must have shape (N, {', '.join(map(str, expected))}) like the profile's "
                f"inputs, but got {tuple(window.shape)}."
            )
        if window.shape[0] < 2:
            raise MLCycleError(
                f"`window` needs at least 2 samples to test, but got {window.shape[0]}."
            )
        x = window.float()
        bad = ~torch.isfinite(x)
        if bad.any():
            rows = int(bad.flatten(1).any(1).sum())
            raise MLCycleError(
                f"`window` holds {int(bad.sum())} NaN/infinite values in {rows} of {x.shape[0]} "
                "samples; impute or drop them before monitoring."
            )
        y = None
        if labels is not None:
            y = (
                torch.as_tensor(
                    np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels
                )
                .long()
                .flatten()
            )
            if y.shape[0] != x.shape[0]:
                raise MLCycleError(
                    f"`labels` must have one label per sample ({x.shape[0]}), but got {y.shape[0]}."
                )
        return x, y

    # -- the check ---------------------------------------------------------------------------
    def check(self, window: Any, labels: Any = None) -> WindowReport:
        """Test one window of raw inputs ``(N, *input_shape)``; labels are optional.

        Raises:
            MLCycleError: for a bad window (logged as an ``"error"`` line; the monitor's state is
                unchanged, so the next window is checked normally).
        """
        index = self.windows_seen
        self.windows_seen += 1
        start = time.perf_counter()
        try:
            x, y = self._validate(window, labels)
        except MLCycleError as err:
            size = int(getattr(window, "shape", [0])[0]) if getattr(window, "ndim", 0) else 0
            report = WindowReport(index=index, size=size, status="error", error=str(err))
            self._write(report)
            log.error("Window %d rejected: %s", index, err)
            raise
        report = self._evaluate(x, y, index)
        self.drift_streak = self.drift_streak + 1 if report.drifted else 0
        report.retrain_suggested = self.drift_streak >= self.patience
        report.message = self._message(report)
        report.seconds = time.perf_counter() - start
        self._write(report)
        self._tensorboard(report)
        if report.drifted:
            self._alert(report)
        return report

    def evaluate(self, window: Any, labels: Any = None) -> WindowReport:
        """Test one window like :meth:`check`, without logging, alerting or counting it.

        Used by the stress test; raises :class:`MLCycleError` for a bad window.
        """
        x, y = self._validate(window, labels)
        return self._evaluate(x, y, -1)

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor | None, index: int) -> WindowReport:
        start = time.perf_counter()
        probs = self.adapter.predict_proba(x)
        feats = (
            self.profile.features(x, self.adapter) if {"ks", "mmd"} & set(self.detectors) else None
        )
        results = [
            det.test(probs if name == "prediction" else feats)
            for name, det in self.detectors.items()
        ]
        report = WindowReport(
            index=index,
            size=int(x.shape[0]),
            drifted=any(r.drifted for r in results),
            results=results,
            estimated_accuracy=estimate_accuracy(probs, self.profile.temperature),
            reference_accuracy=self.reference_accuracy,
            accuracy=accuracy(probs, y) if y is not None else None,
            macro_f1=macro_f1(probs, y) if y is not None else None,
        )
        report.message = self._message(report)
        report.seconds = time.perf_counter() - start
        return report

    def run(self, windows: Iterable[Any]) -> list[WindowReport]:
        """Check every window (arrays, or ``(inputs, labels)`` pairs); log and skip bad ones.

        One bad batch does not stop the monitor: its report has ``status="error"``.
        """
        reports = []
        for item in windows:
            window, labels = item if isinstance(item, tuple) else (item, None)
            try:
                reports.append(self.check(window, labels))
            except MLCycleError:
                reports.append(
                    WindowReport(
                        index=self.windows_seen - 1, size=0, status="error", error="see log"
                    )
                )
        return reports

    def _message(self, report: WindowReport) -> str:
        fired = [r for r in report.results if r.drifted]
        est = f"estimated accuracy {report.estimated_accuracy:.3f} (reference {self.reference_accuracy:.3f})"
        if not fired:
            return f"no drift; {est}"
        evidence = ", ".join(f"{r.detector} p={r.p_value:.3g}" for r in fired)
        msg = f"drift ({evidence}); {est}"
        if report.retrain_suggested:
            msg += (
                f"; drift in {self.drift_streak} windows in a row: retrain on recent data "
                "(or check the input pipeline) and capture a new profile"
            )
        return msg

    def _alert(self, report: WindowReport) -> None:
        self.alerts += 1
        log.warning(
            "Window %d: %s", report.index, report.message, extra={"drift_report": report.to_dict()}
        )
        if self.on_alert is not None:
            try:
                self.on_alert(report)
            except Exception:  # a failing hook must not stop the monitoring
                log.exception("The `on_alert` hook failed on window %d.", report.index)

    def _write(self, report: WindowReport) -> None:
        if self.log_path is None:
            return
        with self.log_path.open("a") as fh:
            fh.write(json.dumps(report.to_dict(), default=str) + "\n")

    def _tensorboard(self, report: WindowReport) -> None:
        if self.writer is None:
            return
        step = report.index
        for r in report.results:
            self.writer.add_scalar(f"monitor/{r.detector}_p_value", r.p_value, step)
            self.writer.add_scalar(f"monitor/{r.detector}_statistic", r.statistic, step)
        self.writer.add_scalar("monitor/drift", float(report.drifted), step)
        self.writer.add_scalar("monitor/estimated_accuracy", report.estimated_accuracy or 0.0, step)
        if report.accuracy is not None:
            self.writer.add_scalar("monitor/accuracy", report.accuracy, step)
            self.writer.add_scalar("monitor/macro_f1", report.macro_f1 or 0.0, step)
        self.writer.flush()

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, so a restarted service continues the window numbering and the drift streak."""
        return {
            "windows_seen": self.windows_seen,
            "drift_streak": self.drift_streak,
            "alerts": self.alerts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.windows_seen = int(state.get("windows_seen", 0))
        self.drift_streak = int(state.get("drift_streak", 0))
        self.alerts = int(state.get("alerts", 0))
