"""Drift detectors: thin stateful classes over :mod:`._functional` with calibrated false alarms.

Each detector is fitted on a reference sample once and then tests windows. The decision is a
p-value compared with ``alpha``, and every p-value is *calibrated*, so that on windows drawn from
the reference distribution the detector fires in a fraction ``alpha`` of windows, not less (too
conservative: a blind monitor) and not more (alarm fatigue):

* :class:`KSDrift`: per-feature KS p-values, combined by their minimum. Bonferroni
  (``min p < alpha / D``) is valid but conservative when features are correlated or discrete
  (ties), so the null distribution of the minimum p-value is estimated once per window size by
  splitting the reference sample at random (KS p-values are nearly distribution-free, so the
  minimum transfers from the split sizes to the live sizes).
* :class:`MMDDrift`: kernel MMD with a permutation test, exact for any window size.
* :class:`PredictionDrift`: Jensen-Shannon (or PSI) between the predicted-class and confidence
  histograms, calibrated by a parametric (multinomial) bootstrap of both samples per window size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice
from lightning_mlcycle.monitoring._functional import (
    histogram,
    js_divergence,
    ks_pvalues,
    ks_statistic,
    ks_statistic_batched,
    median_bandwidth,
    mmd_permutation_test,
    psi,
)


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must be in (0, 1), but got alpha={alpha!r}.")
    return float(alpha)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, but got {name}={value!r}.")
    return value


@dataclass(frozen=True)
class DriftResult:
    """The outcome of one detector on one window.

    Attributes:
        detector: the detector's name (``"ks"``, ``"mmd"``, ``"prediction"``).
        statistic: the test statistic (KS: the largest per-feature D; MMD: MMD^2; prediction:
            the divergence).
        p_value: the calibrated p-value.
        alpha: the level the decision used.
        drifted: ``p_value <= alpha``.
        details: evidence (e.g. the features that moved most).
    """

    detector: str
    statistic: float
    p_value: float
    alpha: float
    drifted: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "detector": self.detector,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "drifted": self.drifted,
            **({"details": self.details} if self.details else {}),
        }


class _Detector:
    name = "detector"

    def __init__(self, alpha: float, seed: int) -> None:
        self.alpha = _check_alpha(alpha)
        self.seed = int(seed)
        self.reference: torch.Tensor | None = None

    def _require_fit(self) -> torch.Tensor:
        if self.reference is None:
            raise MLCycleError(f"{type(self).__name__} is not fitted: call `fit(reference)` first.")
        return self.reference

    def _check_window(self, window: torch.Tensor, dims: int) -> torch.Tensor:
        ref = self._require_fit()
        if not isinstance(window, torch.Tensor):
            raise TypeError(
                f"Expected argument `window` to be a torch.Tensor, but got {type(window).__name__}."
            )
        if window.ndim == 1 and dims == 2 and ref.shape[1] == 1:
            window = window[:, None]
        if window.ndim != dims or window.shape[1:] != ref.shape[1:]:
            raise MLCycleError(
                f"`window` must have shape (M, {', '.join(map(str, ref.shape[1:]))}) like the "
                f"reference, but got {tuple(window.shape)}."
            )
        if window.shape[0] < 2:
            raise MLCycleError(f"`window` needs at least 2 samples, but got {window.shape[0]}.")
        if not torch.isfinite(window).all():
            raise MLCycleError("`window` holds NaN or infinite values.")
        return window.to(ref.dtype)

    def _generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)


class KSDrift(_Detector):
    """Per-feature two-sample Kolmogorov-Smirnov test with a calibrated minimum-p combination.

    Args:
        alpha: false-alarm rate to hold on in-distribution windows.
        calibration_splits: random splits of the reference used to estimate the null distribution
            of the minimum p-value (per window size, cached). 0 uses plain Bonferroni.
        seed: seed of the splits.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> det = KSDrift(calibration_splits=200).fit(torch.randn(500, 3, generator=g))
        >>> det.test(torch.randn(100, 3, generator=g) + 1.0).drifted
        True
    """

    name = "ks"

    def __init__(
        self, alpha: float = 0.05, *, calibration_splits: int = 500, seed: int = 0
    ) -> None:
        super().__init__(alpha, seed)
        self.calibration_splits = _check_count("calibration_splits", calibration_splits, 0)
        self._null: dict[int, torch.Tensor] = {}

    def fit(self, reference: torch.Tensor) -> KSDrift:
        """Keep the ``(N, D)`` reference sample (at least 4 rows, finite)."""
        ref = _reference_2d(reference)
        self.reference, self._null = ref, {}
        return self

    def null_min_pvalues(self, window_size: int) -> torch.Tensor:
        """Minimum p-values of reference-vs-reference splits (the null distribution), cached."""
        ref = self._require_fit()
        if window_size not in self._null:
            n = ref.shape[0]
            k = max(2, min(window_size, n // 2))
            g = self._generator(window_size)
            mins = []
            # batches of splits: one sort per batch instead of one per split
            for start in range(0, self.calibration_splits, 64):
                b = min(64, self.calibration_splits - start)
                perms = torch.rand(b, n, generator=g).argsort(dim=1).to(ref.device)
                shuffled = ref[perms]
                d = ks_statistic_batched(shuffled[:, k:], shuffled[:, :k])
                mins.append(ks_pvalues(d, n - k, k).amin(dim=1).cpu())
            mins = torch.cat(mins)
            self._null[window_size] = mins
        return self._null[window_size]

    def test(self, window: torch.Tensor) -> DriftResult:
        """Test one ``(M, D)`` window against the reference."""
        win = self._check_window(window, 2)
        ref = self._require_fit()
        d = ks_statistic(ref, win)
        p = ks_pvalues(d, ref.shape[0], win.shape[0])
        min_p = float(p.min())
        num_features = d.numel()
        bonferroni = min(1.0, min_p * num_features)
        if self.calibration_splits:
            null = self.null_min_pvalues(win.shape[0])
            calibrated = (1.0 + float((null <= min_p).sum())) / (1.0 + null.numel())
            # the calibrated p-value cannot go below 1 / (splits + 1); Bonferroni resolves far drift
            p_value = min(calibrated, bonferroni)
        else:
            p_value = bonferroni
        top = torch.argsort(d, descending=True)[: min(5, num_features)]
        details = {
            "top_features": [int(i) for i in top],
            "top_statistics": [round(float(d[i]), 4) for i in top],
            "features_drifted_bonferroni": int((p < self.alpha / num_features).sum()),
        }
        return DriftResult(
            self.name, float(d.max()), float(p_value), self.alpha, p_value <= self.alpha, details
        )


class MMDDrift(_Detector):
    """Kernel maximum mean discrepancy with a Gaussian kernel and a permutation test.

    The bandwidth is the median pairwise distance of the reference (median heuristic, Gretton et
    al. 2012), fixed at :meth:`fit`. The p-value comes from ``permutations`` relabelings of the
    pooled sample, so the false-alarm rate is at most ``alpha`` for any window size.

    Args:
        alpha: false-alarm rate.
        permutations: random relabelings per window (the p-value's resolution is
            ``1 / (permutations + 1)``).
        max_reference: the reference is subsampled to this many rows (the cost grows with
            ``(max_reference + window)^2``).
        bandwidth: kernel length scale; ``None`` uses the median heuristic.
        seed: seed of the subsample and the permutations.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> det = MMDDrift(permutations=100).fit(torch.randn(300, 4, generator=g))
        >>> det.test(torch.randn(100, 4, generator=g)).drifted
        False
    """

    name = "mmd"

    def __init__(
        self,
        alpha: float = 0.05,
        *,
        permutations: int = 200,
        max_reference: int = 1000,
        bandwidth: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(alpha, seed)
        self.permutations = _check_count("permutations", permutations, 1)
        if math.ceil(1.0 / alpha) - 1 > permutations:
            raise ValueError(
                f"`permutations` must be at least 1/alpha - 1 = {math.ceil(1 / alpha) - 1} for a "
                f"p-value that can reach alpha={alpha}, but got permutations={permutations}."
            )
        self.max_reference = _check_count("max_reference", max_reference, 4)
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(
                f"`bandwidth` must be positive or None, but got bandwidth={bandwidth!r}."
            )
        self.bandwidth = bandwidth
        self._calls = 0

    def fit(self, reference: torch.Tensor) -> MMDDrift:
        """Keep (a subsample of) the ``(N, D)`` reference and set the bandwidth."""
        ref = _reference_2d(reference)
        if ref.shape[0] > self.max_reference:
            idx = torch.randperm(ref.shape[0], generator=self._generator())[: self.max_reference]
            ref = ref[idx.to(ref.device)]
        self.reference = ref
        self.bandwidth_ = self.bandwidth or median_bandwidth(ref)
        return self

    def test(self, window: torch.Tensor) -> DriftResult:
        """Test one ``(M, D)`` window against the reference."""
        win = self._check_window(window, 2)
        ref = self._require_fit()
        self._calls += 1
        mmd2, p_value = mmd_permutation_test(
            ref,
            win,
            bandwidth=self.bandwidth_,
            permutations=self.permutations,
            generator=self._generator(self._calls),
        )
        return DriftResult(
            self.name,
            mmd2,
            p_value,
            self.alpha,
            p_value <= self.alpha,
            {"bandwidth": round(self.bandwidth_, 5)},
        )


class PredictionDrift(_Detector):
    """Drift of the model's outputs: predicted-class and confidence histograms.

    The statistic is ``D(classes) + D(confidence)``, with ``D`` the Jensen-Shannon divergence
    (``metric="js"``) or the population stability index (``"psi"``); confidence bins are the
    reference's deciles. Small windows have a large divergence by chance alone, so the p-value
    comes from a multinomial bootstrap of both the reference and a window of the same size from the
    reference's joint (class, confidence-bin) frequencies, cached per window size.

    Args:
        alpha: false-alarm rate.
        metric: ``"js"`` or ``"psi"``.
        confidence_bins: number of confidence bins (quantiles of the reference).
        calibration_draws: bootstrap draws per window size.
        seed: seed of the bootstrap.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ref = torch.softmax(torch.randn(500, 3, generator=g) * 2, dim=1)
        >>> det = PredictionDrift().fit(ref)
        >>> shifted = torch.softmax(torch.randn(200, 3, generator=g) * 2 + torch.tensor([3.0, 0, 0]), 1)
        >>> det.test(shifted).drifted
        True
    """

    name = "prediction"
    _METRICS = ("js", "psi")

    def __init__(
        self,
        alpha: float = 0.05,
        *,
        metric: str = "js",
        confidence_bins: int = 10,
        calibration_draws: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(alpha, seed)
        check_choice("metric", metric, self._METRICS)
        self.metric = metric
        self.confidence_bins = _check_count("confidence_bins", confidence_bins, 2)
        self.calibration_draws = _check_count("calibration_draws", calibration_draws, 1)
        self._null: dict[int, torch.Tensor] = {}

    def _divergence(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return js_divergence(p, q) if self.metric == "js" else psi(p, q)

    def _hists(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conf, cls = probs.max(dim=1)
        k = probs.shape[1]
        return (
            torch.bincount(cls.cpu(), minlength=k).to(torch.float64),
            histogram(conf.cpu().to(torch.float64), self.edges_),
        )

    def fit(self, reference: torch.Tensor) -> PredictionDrift:
        """Keep the ``(N, K)`` reference class probabilities."""
        ref = _reference_2d(reference).to(torch.float64)
        if ref.shape[1] < 2:
            raise MLCycleError(
                f"`reference` must be (N, K) class probabilities with K >= 2, but got {tuple(ref.shape)}."
            )
        conf = ref.max(dim=1).values.cpu()
        qs = torch.linspace(0, 1, self.confidence_bins + 1, dtype=torch.float64)[1:-1]
        self.edges_ = torch.unique(torch.quantile(conf, qs))
        self.reference, self._null = ref, {}
        cls_hist, _ = self._hists(ref)
        conf_bin = torch.bucketize(conf, self.edges_)
        n_bins = self.edges_.numel() + 1
        joint = torch.bincount(
            ref.argmax(1).cpu() * n_bins + conf_bin, minlength=ref.shape[1] * n_bins
        )
        self._joint = joint.to(torch.float64) / joint.sum()
        self._n_bins = n_bins
        self.reference_class_hist_ = cls_hist
        return self

    def _stat_from_joint(self, ref_joint: torch.Tensor, win_joint: torch.Tensor) -> torch.Tensor:
        k = self.reference.shape[1]  # type: ignore[union-attr]
        r = ref_joint.view(-1, k, self._n_bins)
        w = win_joint.view(-1, k, self._n_bins)
        return self._divergence(r.sum(2), w.sum(2)) + self._divergence(r.sum(1), w.sum(1))

    def null_statistics(self, window_size: int) -> torch.Tensor:
        """Bootstrap statistics of reference-like windows of ``window_size`` samples, cached."""
        ref = self._require_fit()
        if window_size not in self._null:
            g = self._generator(window_size)
            cells = self._joint.numel()
            draws = self.calibration_draws

            def counts(size: int) -> torch.Tensor:
                idx = torch.multinomial(
                    self._joint.float(), draws * size, replacement=True, generator=g
                )
                rows = torch.arange(draws).repeat_interleave(size) * cells
                return (
                    torch.bincount(rows + idx, minlength=draws * cells).view(draws, cells).double()
                )

            self._null[window_size] = self._stat_from_joint(
                counts(ref.shape[0]), counts(window_size)
            )
        return self._null[window_size]

    def test(self, window: torch.Tensor) -> DriftResult:
        """Test one ``(M, K)`` window of class probabilities."""
        win = self._check_window(window, 2).to(torch.float64)
        ref = self._require_fit()
        cls_w, conf_w = self._hists(win)
        cls_r, conf_r = self._hists(ref)
        d_cls = self._divergence(cls_r, cls_w)
        d_conf = self._divergence(conf_r, conf_w)
        stat = float(d_cls + d_conf)
        null = self.null_statistics(win.shape[0])
        p_value = (1.0 + float((null >= stat - 1e-12).sum())) / (1.0 + null.numel())
        rates_r = cls_r / cls_r.sum()
        rates_w = cls_w / cls_w.sum()
        moved = torch.argsort((rates_w - rates_r).abs(), descending=True)[:3]
        details = {
            f"{self.metric}_classes": round(float(d_cls), 5),
            f"{self.metric}_confidence": round(float(d_conf), 5),
            "psi_classes": round(float(psi(cls_r, cls_w)), 5),
            "mean_confidence": round(float(win.max(1).values.mean()), 4),
            "reference_mean_confidence": round(float(ref.max(1).values.mean()), 4),
            "classes_moved": {
                int(c): [round(float(rates_r[c]), 4), round(float(rates_w[c]), 4)] for c in moved
            },
        }
        return DriftResult(self.name, stat, p_value, self.alpha, p_value <= self.alpha, details)


def _reference_2d(reference: torch.Tensor) -> torch.Tensor:
    if not isinstance(reference, torch.Tensor):
        raise TypeError(
            f"Expected argument `reference` to be a torch.Tensor, but got {type(reference).__name__}."
        )
    ref = reference[:, None] if reference.ndim == 1 else reference
    if ref.ndim != 2 or ref.shape[0] < 4:
        raise MLCycleError(
            f"`reference` must be (N, D) with N >= 4, but got shape {tuple(reference.shape)}."
        )
    if not torch.isfinite(ref).all():
        raise MLCycleError("`reference` holds NaN or infinite values.")
    return ref if ref.is_floating_point() else ref.float()
