"""Drift statistics and detectors: exactness of the statistics, calibrated false alarms, power."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.monitoring import (
    KSDrift,
    MMDDrift,
    PredictionDrift,
    js_divergence,
    ks_pvalues,
    ks_statistic,
    median_bandwidth,
    psi,
)

# correlated features rounded to a grid: ties and dependence make plain Bonferroni conservative
_MIX = torch.randn(6, 6, generator=torch.Generator().manual_seed(3))


def _draw(n: int, g: torch.Generator, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    z = torch.randn(n, 6, generator=g) @ _MIX
    z[:, 0] = z[:, 0] * scale + shift * z[:, 0].std()
    return torch.round(z * 2) / 2


def _probs(n: int, g: torch.Generator, prior_shift: float = 0.0) -> torch.Tensor:
    logits = torch.randn(n, 4, generator=g) * 2
    logits[:, 0] += prior_shift
    return torch.softmax(logits, dim=1)


def test_ks_statistic_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (80, 3), generator=g).float()
    b = torch.randint(0, 6, (50, 3), generator=g).float()
    ours = ks_statistic(a, b)
    for j in range(3):
        ref = stats.ks_2samp(a[:, j].numpy(), b[:, j].numpy()).statistic
        assert float(ours[j]) == pytest.approx(ref, abs=1e-6)


def test_ks_pvalues_close_to_scipy_asymptotic():
    d = torch.tensor([0.1, 0.2, 0.3])
    ours = ks_pvalues(d, 300, 200)
    for i, dv in enumerate(d.tolist()):
        ref = stats.ks_2samp(np.zeros(1), np.zeros(1))  # just to make sure scipy is importable
        assert ref is not None
        exact = stats.kstwobign.sf((np.sqrt(120) + 0.12 + 0.11 / np.sqrt(120)) * dv)
        assert float(ours[i]) == pytest.approx(exact, rel=1e-6, abs=1e-12)


def test_divergences():
    p, q = torch.tensor([10.0, 30.0, 60.0]), torch.tensor([60.0, 30.0, 10.0])
    assert float(js_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)))
    assert 0 < float(js_divergence(p, q)) < np.log(2)
    expected_psi = sum(
        (b - a) * np.log(b / a) for a, b in zip([0.1, 0.3, 0.6], [0.6, 0.3, 0.1], strict=True)
    )
    assert float(psi(p, q)) == pytest.approx(expected_psi, rel=1e-6)
    assert median_bandwidth(torch.tensor([[0.0], [0.0], [0.0]])) == 1.0  # degenerate: fallback


def _false_alarm_rate(det, draw, windows: int, size: int, g: torch.Generator) -> float:
    return sum(det.test(draw(size, g)).drifted for _ in range(windows)) / windows


def test_ks_calibration_holds_the_level_where_bonferroni_is_conservative():
    g = torch.Generator().manual_seed(1)
    ref = _draw(600, g)
    calibrated = KSDrift(0.05, calibration_splits=300).fit(ref)
    bonferroni = KSDrift(0.05, calibration_splits=0).fit(ref)
    g_cal, g_bon = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    rate = _false_alarm_rate(calibrated, _draw, 300, 100, g_cal)
    rate_bonf = _false_alarm_rate(bonferroni, _draw, 300, 100, g_bon)
    # 300 windows: binomial sd ~0.013 around 0.05
    assert 0.02 <= rate <= 0.09
    assert rate_bonf < rate


def test_mmd_false_alarm_rate_near_level():
    g = torch.Generator().manual_seed(4)
    det = MMDDrift(0.05, permutations=100).fit(_draw(300, g))
    rate = _false_alarm_rate(det, _draw, 150, 50, g)
    assert 0.01 <= rate <= 0.1


def test_prediction_false_alarm_rate_near_level_at_every_window_size():
    g = torch.Generator().manual_seed(5)
    det = PredictionDrift(0.05, calibration_draws=500).fit(_probs(1000, g))
    for size in (30, 300):
        rate = _false_alarm_rate(det, _probs, 300, size, g)
        assert 0.015 <= rate <= 0.095, size


@pytest.mark.parametrize(
    ("detector", "kind"),
    [
        (KSDrift(calibration_splits=200), "mean"),
        (MMDDrift(permutations=100), "mean"),
        (MMDDrift(permutations=100), "scale"),
    ],
)
def test_planted_feature_shifts_are_detected(detector, kind):
    g = torch.Generator().manual_seed(6)
    detector.fit(_draw(500, g))
    shifted = _draw(200, g, shift=0.5) if kind == "mean" else _draw(200, g, scale=2.0)
    result = detector.test(shifted)
    assert result.drifted and result.p_value <= 0.05
    if detector.name == "ks":
        assert result.details["top_features"][0] == 0  # the shifted feature is named first


def test_planted_prior_shift_is_detected_with_evidence():
    g = torch.Generator().manual_seed(7)
    det = PredictionDrift(metric="psi").fit(_probs(800, g))
    result = det.test(_probs(200, g, prior_shift=2.0))
    assert result.drifted
    assert 0 in result.details["classes_moved"]
    assert det.test(_probs(200, g)).p_value > result.p_value


def test_detector_errors():
    with pytest.raises(ValueError, match=r"`alpha` must be in \(0, 1\)"):
        KSDrift(alpha=1.5)
    with pytest.raises(ValueError, match="`permutations` must be at least 1/alpha - 1"):
        MMDDrift(alpha=0.01, permutations=20)
    with pytest.raises(ValueError, match="`metric` to be one of"):
        PredictionDrift(metric="kl")
    with pytest.raises(MLCycleError, match="not fitted"):
        KSDrift().test(torch.zeros(5, 2))
    det = KSDrift(calibration_splits=10).fit(torch.randn(50, 3))
    with pytest.raises(MLCycleError, match=r"must have shape \(M, 3\)"):
        det.test(torch.zeros(5, 4))
    with pytest.raises(MLCycleError, match="NaN"):
        det.test(torch.full((5, 3), float("nan")))
    with pytest.raises(MLCycleError, match="N >= 4"):
        MMDDrift().fit(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        det.test(np.zeros((5, 3)))
