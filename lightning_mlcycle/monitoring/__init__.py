"""After deployment: reference profile, drift detectors, DriftMonitor and stress test.

The detectors work on torch tensors; every decision is a calibrated p-value compared with the
false-alarm rate you set (default 5%). See :class:`DriftMonitor` for watching a deployed model and
:func:`stress_test` for approximating monitoring before deployment.
"""

from lightning_mlcycle.monitoring._functional import (
    js_divergence,
    ks_pvalues,
    ks_statistic,
    median_bandwidth,
    mmd_permutation_test,
    psi,
)
from lightning_mlcycle.monitoring.detectors import DriftResult, KSDrift, MMDDrift, PredictionDrift
from lightning_mlcycle.monitoring.monitor import DriftMonitor, WindowReport
from lightning_mlcycle.monitoring.performance import (
    calibrated_confidence,
    estimate_accuracy,
    fit_temperature,
)
from lightning_mlcycle.monitoring.profile import ReferenceProfile
from lightning_mlcycle.monitoring.shifts import SHIFTS, apply_shift, default_shifts
from lightning_mlcycle.monitoring.stress import StressReport, stress_test

__all__ = [
    "SHIFTS",
    "DriftMonitor",
    "DriftResult",
    "KSDrift",
    "MMDDrift",
    "PredictionDrift",
    "ReferenceProfile",
    "StressReport",
    "WindowReport",
    "apply_shift",
    "calibrated_confidence",
    "default_shifts",
    "estimate_accuracy",
    "fit_temperature",
    "js_divergence",
    "ks_pvalues",
    "ks_statistic",
    "median_bandwidth",
    "mmd_permutation_test",
    "psi",
    "stress_test",
]
