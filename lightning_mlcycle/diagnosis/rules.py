"""The diagnosis rules: pure functions of plain numbers, one per symptom.

Each rule returns a :class:`RuleHit` (the evidence and a confidence) or ``None``. They know
nothing about Lightning: :class:`~lightning_mlcycle.diagnosis.FitDiagnosis` collects the numbers
during training into a :class:`TrainingSnapshot` and calls :func:`diagnose`, which runs them all,
decides the fit state and ranks the findings. Sources of every threshold are in
:class:`~lightning_mlcycle.diagnosis.DiagnosisThresholds`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lightning_mlcycle.diagnosis.finding import FitState, Severity, Symptom
from lightning_mlcycle.diagnosis.thresholds import DiagnosisThresholds

#: Root causes first: when several symptoms are found, the ones that explain others rank higher.
PRIORITY: tuple[Symptom, ...] = (
    Symptom.DIVERGING_LOSS,
    Symptom.EXPLODING_GRADIENTS,
    Symptom.DATA_LEAKAGE,
    Symptom.UNNORMALIZED_INPUTS,
    Symptom.VANISHING_GRADIENTS,
    Symptom.DYING_RELU,
    Symptom.SATURATED_ACTIVATIONS,
    Symptom.OSCILLATING_LOSS,
    Symptom.NO_LEARNING,
    Symptom.UNDERFITTING,
    Symptom.OVERFITTING,
    Symptom.SLOW_CONVERGENCE,
)

#: Faults that, when present, explain a high training loss better than "the model is too small".
_EXPLAINS_BIAS = frozenset(
    {
        Symptom.DIVERGING_LOSS,
        Symptom.EXPLODING_GRADIENTS,
        Symptom.VANISHING_GRADIENTS,
        Symptom.DYING_RELU,
        Symptom.SATURATED_ACTIVATIONS,
        Symptom.OSCILLATING_LOSS,
        Symptom.NO_LEARNING,
        Symptom.UNNORMALIZED_INPUTS,
    }
)


@dataclass
class RuleHit:
    """What one rule found: the symptom, how bad, the evidence and a confidence in [0, 1].

    Example:
        >>> RuleHit(Symptom.NO_LEARNING, Severity.WARNING, "stuck", {"loss": 2.3}).confidence
        0.5
    """

    symptom: Symptom
    severity: Severity
    message: str
    evidence: dict[str, Any]
    confidence: float = 0.5


@dataclass
class TrainingSnapshot:
    """Everything the rules look at, as plain numbers, at one validation check.

    Attributes:
        epoch: current epoch.
        step: current global step.
        train_loss: mean training loss of each check so far (oldest first).
        val_loss: validation loss of each check (None where there was none).
        monitor: the monitored metric of each check (None where absent).
        monitor_mode: ``"min"`` or ``"max"`` for ``monitor``.
        nonfinite_loss: a training loss since the last check was NaN or infinite.
        chance_loss: cross-entropy of uniform predictions, ``ln(num_classes)``, if known.
        initial_loss: loss at the first training step(s).
        grad_norms: per-layer gradient norm (first layer first), median over the sampled steps
            since the last check.
        grad_norm_history: total gradient norm at every sampled step so far.
        nonfinite_grads: a gradient since the last check was NaN or infinite.
        update_ratios: per-layer ``|weight update| / |weight|`` at the sampled steps.
        dead_fraction: per ReLU-like layer, the share of units that output zero for a whole batch.
        zero_grad_rows: per layer, the share of output units whose weights got an all-zero
            gradient (a dead-unit signal that needs no activation module).
        saturation: per sigmoid/tanh layer, the share of pre-activations in the flat tails.
        input_rms: largest root-mean-square of an input channel (or feature).
        input_scale_ratio: largest over smallest feature standard deviation (tabular inputs).
        leakage_checked: validation samples compared with the training samples.
        leakage_repeated: validation samples found identical to a training sample.
        lr: current learning rate of the first parameter group.
    """

    epoch: int = 0
    step: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    monitor: list[float | None] = field(default_factory=list)
    monitor_mode: str = "max"
    nonfinite_loss: bool = False
    chance_loss: float | None = None
    initial_loss: float | None = None
    grad_norms: dict[str, float] = field(default_factory=dict)
    grad_norm_history: list[float] = field(default_factory=list)
    nonfinite_grads: bool = False
    update_ratios: dict[str, float] = field(default_factory=dict)
    dead_fraction: dict[str, float] = field(default_factory=dict)
    zero_grad_rows: dict[str, float] = field(default_factory=dict)
    saturation: dict[str, float] = field(default_factory=dict)
    input_rms: float | None = None
    input_scale_ratio: float | None = None
    leakage_checked: int = 0
    leakage_repeated: int = 0
    lr: float | None = None

    @property
    def n_checks(self) -> int:
        """How many checks the history holds."""
        return len(self.train_loss)

    @property
    def reference_loss(self) -> float | None:
        """The scale losses are compared on: chance level, else the first loss seen."""
        if self.chance_loss is not None and self.chance_loss > 0:
            return self.chance_loss
        if self.initial_loss is not None and _finite(self.initial_loss) and self.initial_loss > 0:
            return self.initial_loss
        first = next((v for v in self.train_loss if _finite(v) and v > 0), None)
        return first


# -- helpers -----------------------------------------------------------------------------------
def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _past(value: float, threshold: float, *, above: bool = True) -> float:
    """Confidence from how far ``value`` is past ``threshold``: 0.5 at it, 1.0 a decade past."""
    if value <= 0 or threshold <= 0:
        return 1.0 if (value > threshold) == above else 0.5
    decades = math.log10(value / threshold) if above else math.log10(threshold / value)
    return round(min(1.0, 0.5 + 0.5 * max(0.0, decades)), 3)


def trend_stats(values: Sequence[float | None], window: int) -> tuple[float, float] | None:
    """Relative decrease per check and its t-statistic, over the last ``window`` finite values.

    A least-squares line through the window: the slope divided by the window's mean level
    (positive = improving), and ``slope / standard error`` negated (large positive = a decrease
    that noise does not explain). One noisy check does not decide it.

    Example:
        >>> rel, t = trend_stats([1.0, 0.9, 0.8, 0.71], window=4)
        >>> round(rel, 3), t > 10
        (0.114, True)
        >>> trend_stats([1.0], window=4) is None
        True
    """
    ys = [float(v) for v in values if _finite(v)][-window:]
    if len(ys) < 3:
        return None
    n = len(ys)
    xm, ym = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sxx
    resid = sum((y - (ym + slope * (i - xm))) ** 2 for i, y in enumerate(ys))
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 else 0.0
    t = -slope / se if se > 0 else (math.inf if slope < 0 else (-math.inf if slope > 0 else 0.0))
    rel = -slope / ym if ym > 0 else 0.0
    return rel, t


def relative_trend(values: Sequence[float | None], window: int) -> float | None:
    """Relative decrease per check over the last ``window`` finite values (see :func:`trend_stats`).

    Example:
        >>> round(relative_trend([1.0, 0.9, 0.8, 0.7], window=4), 3)
        0.118
    """
    stats = trend_stats(values, window)
    return None if stats is None else stats[0]


def peak_trend(values: Sequence[float | None], window: int) -> float | None:
    """The fastest relative decrease per check over any ``window`` of the history.

    Example:
        >>> round(peak_trend([2.0, 1.5, 1.2, 1.1, 1.05, 1.04, 1.03], window=3), 3)
        0.255
    """
    ys = [float(v) for v in values if _finite(v)]
    rates = [relative_trend(ys[i:i + window], window) for i in range(max(1, len(ys) - window + 1))]
    rates = [r for r in rates if r is not None]
    return max(rates) if rates else None


def improving(values: Sequence[float | None], th: DiagnosisThresholds) -> bool:
    """True when the loss falls by at least ``plateau_rel`` per check, and significantly.

    Significantly: the t-statistic of the slope is above ``trend_t``.
    """
    stats = trend_stats(values, th.window)
    return stats is not None and stats[0] >= th.plateau_rel and stats[1] >= th.trend_t


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


# -- the rules ---------------------------------------------------------------------------------
def check_diverging_loss(
    train_loss: Sequence[float],
    *,
    nonfinite: bool,
    reference: float | None,
    th: DiagnosisThresholds,
    initial: float | None = None,
) -> RuleHit | None:
    """Diverging: loss NaN/inf (UMLAUT), far above its best, or far worse than guessing.

    "Far worse than guessing" also needs the loss to be above its first value (``initial``).

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_diverging_loss([2.3, 0.5, 1.8], nonfinite=False, reference=2.3, th=th).symptom
        <Symptom.DIVERGING_LOSS: 'diverging_loss'>
        >>> check_diverging_loss([2.3, 0.5, 0.4], nonfinite=False, reference=2.3, th=th) is None
        True
    """
    last = train_loss[-1] if train_loss else None
    if nonfinite or (last is not None and not _finite(last)):
        return RuleHit(Symptom.DIVERGING_LOSS, Severity.CRITICAL,
                       "the training loss became NaN or infinite",
                       {"train_loss": last, "nonfinite": True}, 1.0)
    finite = [v for v in train_loss if _finite(v)]
    if len(finite) >= 2:
        best = min(finite[:-1])
        # the rise must also matter on the reference scale, so noise near zero loss is ignored
        big = reference is None or last - best >= 0.1 * reference
        if best > 0 and last > th.diverge_ratio * best and big:
            return RuleHit(Symptom.DIVERGING_LOSS, Severity.CRITICAL,
                           f"the training loss rose to {last:.3g}, {last / best:.1f}x its best",
                           {"train_loss": last, "best_train_loss": best,
                            "ratio": last / best, "threshold": th.diverge_ratio},
                           _past(last / best, th.diverge_ratio))
    # far worse than guessing AND worse than at the start: a loss that starts high (e.g. from
    # unscaled inputs) and falls is not diverging
    start = initial if initial is not None and _finite(initial) else (finite[0] if finite else None)
    if (reference and last is not None and last > th.diverge_chance_ratio * reference
            and (start is None or last >= start)):
        return RuleHit(Symptom.DIVERGING_LOSS, Severity.CRITICAL,
                       f"the training loss {last:.3g} is {last / reference:.1f}x the chance level",
                       {"train_loss": last, "reference_loss": reference,
                        "ratio": last / reference, "threshold": th.diverge_chance_ratio},
                       _past(last / reference, th.diverge_chance_ratio))
    return None


def check_exploding_gradients(
    grad_norms: Mapping[str, float],
    history: Sequence[float],
    *,
    nonfinite: bool,
    th: DiagnosisThresholds,
) -> RuleHit | None:
    """Exploding: NaN/inf gradients, or a norm far above its early level (Pascanu et al. 2013).

    Also a first/last-layer norm ratio above 70 while the norm grows (AUTOTRAINER).

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_exploding_gradients({}, [1.0, 1.0, 1.0, 500.0], nonfinite=False, th=th).evidence["growth"]
        500.0
        >>> check_exploding_gradients({}, [1.0, 1.2, 0.8], nonfinite=False, th=th) is None
        True
    """
    if nonfinite:
        return RuleHit(Symptom.EXPLODING_GRADIENTS, Severity.CRITICAL,
                       "gradients became NaN or infinite", {"nonfinite": True}, 1.0)
    finite = [h for h in history if _finite(h)]
    if len(finite) < 2:
        return None
    early = _median(finite[:3]) if len(finite) > 3 else finite[0]
    latest = finite[-1]
    growth = latest / early if early > 0 else (math.inf if latest > 0 else 0.0)
    if growth >= th.explode_growth:
        return RuleHit(Symptom.EXPLODING_GRADIENTS, Severity.CRITICAL,
                       f"the gradient norm grew {growth:.3g}x from its early level",
                       {"grad_norm": latest, "early_grad_norm": early, "growth": growth,
                        "threshold": th.explode_growth}, _past(growth, th.explode_growth))
    norms = [v for v in grad_norms.values() if _finite(v)]
    if len(norms) >= 2 and norms[-1] > 0 and growth > 1.0:
        ratio = norms[0] / norms[-1]
        if ratio > th.exploding_ratio:
            names = list(grad_norms)
            return RuleHit(Symptom.EXPLODING_GRADIENTS, Severity.CRITICAL,
                           f"first-layer gradients are {ratio:.3g}x the last layer's and growing",
                           {"first_layer": names[0], "last_layer": names[-1], "ratio": ratio,
                            "growth": growth, "threshold": th.exploding_ratio},
                           _past(ratio, th.exploding_ratio))
    return None


def check_vanishing_gradients(
    grad_norms: Mapping[str, float], *, th: DiagnosisThresholds
) -> RuleHit | None:
    """First-layer gradient norm below 1e-3 of the last layer's and below 1e-4 (AUTOTRAINER).

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_vanishing_gradients({"l0": 1e-7, "l1": 1e-3, "l2": 0.5}, th=th).symptom.value
        'vanishing_gradients'
        >>> check_vanishing_gradients({"l0": 0.1, "l2": 0.5}, th=th) is None
        True
    """
    names = [k for k, v in grad_norms.items() if _finite(v)]
    if len(names) < 2:
        return None
    first, last = grad_norms[names[0]], grad_norms[names[-1]]
    if last <= 0:
        return None
    ratio = first / last
    if ratio < th.vanishing_ratio and first < th.vanishing_first_norm:
        return RuleHit(Symptom.VANISHING_GRADIENTS, Severity.WARNING,
                       f"the first layer gets {ratio:.2g}x the last layer's gradient",
                       {"first_layer": names[0], "first_grad_norm": first,
                        "last_layer": names[-1], "last_grad_norm": last, "ratio": ratio,
                        "threshold": th.vanishing_ratio},
                       _past(max(ratio, 1e-30), th.vanishing_ratio, above=False))
    return None


def check_dying_relu(
    dead_fraction: Mapping[str, float],
    zero_grad_rows: Mapping[str, float],
    *,
    th: DiagnosisThresholds,
) -> RuleHit | None:
    """Dying ReLU: a layer with >= 70% units silent on a whole batch (DeepDiagnosis).

    Without hookable ReLU modules: layers with >= 70% units getting all-zero gradients
    (AUTOTRAINER).

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_dying_relu({"net.1": 0.95, "net.3": 0.1}, {}, th=th).evidence["layer"]
        'net.1'
        >>> check_dying_relu({"net.1": 0.05}, {"net.0": 0.9}, th=th) is None
        True
    """
    source, stats = ("activations", dead_fraction) if dead_fraction else ("gradients", zero_grad_rows)
    if not stats:
        return None
    layer, worst = max(stats.items(), key=lambda kv: kv[1])
    if worst >= th.dead_fraction:
        what = "output zero" if source == "activations" else "get zero gradients"
        return RuleHit(Symptom.DYING_RELU, Severity.WARNING,
                       f"{worst:.0%} of the units of `{layer}` {what} on a whole batch",
                       {"layer": layer, "dead_fraction": worst, "source": source,
                        "layers_over_threshold": sum(v >= th.dead_fraction for v in stats.values()),
                        "threshold": th.dead_fraction},
                       round(0.5 + 0.5 * (worst - th.dead_fraction) / (1 - th.dead_fraction), 3))
    return None


def check_saturated_activations(
    saturation: Mapping[str, float], *, th: DiagnosisThresholds
) -> RuleHit | None:
    """A sigmoid/tanh layer with > 50% of its pre-activations in the flat tails (DeepDiagnosis).

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_saturated_activations({"net.2": 0.8}, th=th).evidence["saturated_fraction"]
        0.8
    """
    if not saturation:
        return None
    layer, worst = max(saturation.items(), key=lambda kv: kv[1])
    if worst > th.saturation_fraction:
        return RuleHit(Symptom.SATURATED_ACTIVATIONS, Severity.WARNING,
                       f"{worst:.0%} of the pre-activations of `{layer}` are in the flat tails",
                       {"layer": layer, "saturated_fraction": worst,
                        "threshold": th.saturation_fraction,
                        "preactivation_cutoff": th.saturation_preact},
                       round(0.5 + 0.5 * (worst - th.saturation_fraction)
                             / (1 - th.saturation_fraction), 3))
    return None


def check_oscillating_loss(
    train_loss: Sequence[float], *, reference: float | None, th: DiagnosisThresholds
) -> RuleHit | None:
    """Oscillating: the train loss swings up and down between checks.

    AUTOTRAINER flags swings of 0.03 in 20% of the epochs; here a swing is a reversal of
    direction with both moves >= 3% of the reference loss, and at least two swings are needed.

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_oscillating_loss([2.0, 1.2, 1.9, 1.1, 1.8], reference=2.3, th=th).symptom.value
        'oscillating_loss'
        >>> check_oscillating_loss([2.0, 1.2, 0.9, 0.7, 0.6], reference=2.3, th=th) is None
        True
    """
    ys = [v for v in train_loss if _finite(v)][-th.window:]
    if len(ys) < 4 or not reference:
        return None
    step = th.oscillation_rel * reference
    d = [b - a for a, b in zip(ys, ys[1:], strict=False)]
    swings = sum(1 for a, b in zip(d, d[1:], strict=False) if a * b < 0 and abs(a) >= step and abs(b) >= step)
    frac = swings / (len(d) - 1)
    # one reversal can be noise: AUTOTRAINER's share of epochs, and at least two swings
    if frac >= th.oscillation_frac and swings >= 2:
        return RuleHit(Symptom.OSCILLATING_LOSS, Severity.WARNING,
                       f"the training loss reversed direction {swings} times in {len(ys)} checks",
                       {"swings": swings, "checks": len(ys), "swing_fraction": frac,
                        "min_swing": step, "threshold": th.oscillation_frac},
                       round(0.5 + 0.5 * min(1.0, frac), 3))
    return None


def check_no_learning(
    train_loss: Sequence[float],
    val_loss: Sequence[float | None],
    *,
    chance_loss: float | None,
    initial_loss: float | None,
    th: DiagnosisThresholds,
) -> RuleHit | None:
    """No learning: the loss stays at chance level ``ln(num_classes)``.

    With the classes unknown, at its first value (UMLAUT, DeepDiagnosis "loss not decreasing").

    The best validation loss is used when there is one (training loss when not), so a model that
    memorizes shuffled labels is still caught.

    Example:
        >>> th = DiagnosisThresholds()
        >>> hit = check_no_learning([2.31, 2.30, 2.30], [2.31, 2.30, 2.31], chance_loss=2.303,
        ...                         initial_loss=2.3, th=th)
        >>> hit.symptom.value
        'no_learning'
        >>> check_no_learning([2.3, 1.0, 0.5], [2.0, 1.1, 0.6], chance_loss=2.303,
        ...                   initial_loss=2.3, th=th) is None
        True
    """
    if len(train_loss) < th.min_checks:
        return None
    vals = [v for v in val_loss if _finite(v)]
    series, which = (vals, "val") if vals else ([v for v in train_loss if _finite(v)], "train")
    if not series:
        return None
    ref, kind = (chance_loss, "chance") if chance_loss else (initial_loss, "initial")
    if not ref or ref <= 0:
        return None
    best = min(series)
    # a loss still falling steadily is learning, however slowly (that is slow convergence)
    if best >= (1 - th.chance_tol) * ref and not improving(series, th):
        return RuleHit(Symptom.NO_LEARNING, Severity.WARNING,
                       f"the best {which} loss {best:.3g} never left the {kind} level {ref:.3g}",
                       {f"best_{which}_loss": best, f"{kind}_loss": ref, "ratio": best / ref,
                        "tolerance": th.chance_tol},
                       round(min(1.0, 0.5 + 5 * (best / ref - (1 - th.chance_tol))), 3))
    return None


def check_unnormalized_inputs(
    input_rms: float | None, input_scale_ratio: float | None, *, th: DiagnosisThresholds
) -> RuleHit | None:
    """Inputs far from unit scale (UMLAUT), or tabular features on very different scales.

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_unnormalized_inputs(120.0, None, th=th).evidence["input_rms"]
        120.0
        >>> check_unnormalized_inputs(1.0, 3.0, th=th) is None
        True
    """
    if input_rms is not None and _finite(input_rms) and input_rms > th.input_rms_max:
        return RuleHit(Symptom.UNNORMALIZED_INPUTS, Severity.WARNING,
                       f"an input channel has RMS {input_rms:.3g} (standardized data has 1)",
                       {"input_rms": input_rms, "threshold": th.input_rms_max},
                       _past(input_rms, th.input_rms_max))
    if input_scale_ratio is not None and _finite(input_scale_ratio) and (
        input_scale_ratio > th.input_scale_ratio
    ):
        return RuleHit(Symptom.UNNORMALIZED_INPUTS, Severity.WARNING,
                       f"feature scales differ {input_scale_ratio:.3g}x",
                       {"feature_scale_ratio": input_scale_ratio,
                        "threshold": th.input_scale_ratio},
                       _past(input_scale_ratio, th.input_scale_ratio))
    return None


def check_data_leakage(checked: int, repeated: int, *, th: DiagnosisThresholds) -> RuleHit | None:
    """Validation samples that are exact copies of training samples.

    Example:
        >>> th = DiagnosisThresholds()
        >>> check_data_leakage(200, 60, th=th).evidence["repeated_fraction"]
        0.3
        >>> check_data_leakage(200, 1, th=th) is None
        True
    """
    if checked <= 0:
        return None
    frac = repeated / checked
    if frac >= th.leakage_fraction:
        return RuleHit(Symptom.DATA_LEAKAGE, Severity.WARNING,
                       f"{repeated} of {checked} validation samples ({frac:.0%}) also occur in training",
                       {"val_checked": checked, "val_repeated": repeated,
                        "repeated_fraction": frac, "threshold": th.leakage_fraction},
                       _past(frac, th.leakage_fraction))
    return None


@dataclass
class BiasVariance:
    """The numbers behind the fit state (Ng's bias/variance table), on the reference scale.

    Example:
        >>> bv = bias_variance([2.0, 1.0, 0.2], [2.0, 1.1, 0.9], reference=2.3,
        ...                    th=DiagnosisThresholds())
        >>> bv.high_variance, bv.high_bias
        (True, False)
    """

    train_loss: float | None = None
    val_loss: float | None = None
    reference: float | None = None
    bias: float | None = None
    variance: float | None = None
    generalization_loss: float | None = None
    best_val_check: int | None = None
    trend: float | None = None
    trend_t: float | None = None
    peak_trend: float | None = None
    improving: bool = False
    plateau: bool = False
    high_bias: bool = False
    high_variance: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def bias_variance(
    train_loss: Sequence[float],
    val_loss: Sequence[float | None],
    *,
    reference: float | None,
    th: DiagnosisThresholds,
) -> BiasVariance:
    """Avoidable bias, variance (generalization gap) and Prechelt's generalization loss."""
    bv = BiasVariance(reference=reference)
    if not train_loss or not _finite(train_loss[-1]) or not reference:
        return bv
    bv.train_loss = float(train_loss[-1])
    bv.bias = (bv.train_loss - th.expected_loss) / reference
    bv.high_bias = bv.bias > th.high_bias_ratio
    stats = trend_stats(train_loss, th.window)
    if stats is not None:
        bv.trend, bv.trend_t = stats
        bv.improving = improving(train_loss, th)
        bv.peak_trend = peak_trend(train_loss, th.window)
        # a plateau: no significant decrease, or a slow one after the curve has flattened
        # (its rate fell below `deceleration` of its peak): the loss is near its level
        decelerated = (bv.peak_trend is not None and bv.peak_trend > 0
                       and bv.trend < th.deceleration * bv.peak_trend)
        bv.plateau = not bv.improving or (bv.trend < th.slow_rel and decelerated)
    vals = [(i, v) for i, v in enumerate(val_loss) if _finite(v)]
    if vals and vals[-1][0] == len(val_loss) - 1:
        bv.val_loss = float(vals[-1][1])  # type: ignore[arg-type]
        bv.variance = (bv.val_loss - bv.train_loss) / reference
        best_i, best = min(vals, key=lambda iv: iv[1])  # type: ignore[arg-type, return-value]
        bv.best_val_check = int(best_i)
        if best and best > 0:
            bv.generalization_loss = bv.val_loss / best - 1.0
        train_fell = best_i < len(train_loss) - 1 and bv.train_loss < train_loss[best_i]
        # Ng: variance is the problem when the gap is large and larger than the avoidable bias
        dominates = bv.variance >= bv.bias
        bv.high_variance = dominates and (bv.variance > th.high_variance_ratio or (
            bv.generalization_loss is not None
            and bv.generalization_loss > th.val_rise
            and train_fell
            and bv.variance > 0.5 * th.high_variance_ratio
        ))
    return bv


def check_overfitting(bv: BiasVariance, *, th: DiagnosisThresholds) -> RuleHit | None:
    """High variance: validation loss far above training loss, or rising while training falls.

    Example:
        >>> th = DiagnosisThresholds()
        >>> bv = bias_variance([1.0, 0.3, 0.05], [1.0, 0.6, 0.9], reference=2.3, th=th)
        >>> check_overfitting(bv, th=th).symptom.value
        'overfitting'
    """
    if not bv.high_variance or bv.variance is None:
        return None
    return RuleHit(Symptom.OVERFITTING, Severity.WARNING,
                   f"the validation loss {bv.val_loss:.3g} exceeds the training loss "
                   f"{bv.train_loss:.3g} by {bv.variance:.0%} of the reference loss",
                   {"train_loss": bv.train_loss, "val_loss": bv.val_loss,
                    "generalization_gap": (bv.val_loss or 0.0) - (bv.train_loss or 0.0),
                    "relative_gap": bv.variance, "generalization_loss": bv.generalization_loss,
                    "best_val_check": bv.best_val_check, "threshold": th.high_variance_ratio},
                   _past(max(bv.variance, 1e-9), th.high_variance_ratio))


def check_underfitting(bv: BiasVariance, *, th: DiagnosisThresholds) -> RuleHit | None:
    """Under-fitting: high bias on a plateau (Ng's table).

    The training loss is high and no longer falls significantly, or falls slowly after its
    curve flattened.

    A high loss that still falls is slowness (:func:`check_slow_convergence`) or too early to
    tell, not under-fitting.

    Example:
        >>> th = DiagnosisThresholds()
        >>> bv = bias_variance([1.21, 1.2, 1.21, 1.2, 1.2], [1.3, 1.3, 1.3, 1.3, 1.3],
        ...                    reference=2.3, th=th)
        >>> check_underfitting(bv, th=th).symptom.value
        'underfitting'
    """
    if not bv.high_bias or bv.trend is None or not bv.plateau or bv.bias is None:
        return None
    return RuleHit(Symptom.UNDERFITTING, Severity.WARNING,
                   f"the training loss {bv.train_loss:.3g} is {bv.bias:.0%} of the reference "
                   f"loss and no longer falling",
                   {"train_loss": bv.train_loss, "relative_bias": bv.bias,
                    "trend_per_check": bv.trend, "threshold": th.high_bias_ratio,
                    "plateau_rel": th.plateau_rel},
                   _past(bv.bias, th.high_bias_ratio))


def check_slow_convergence(
    bv: BiasVariance, update_ratios: Mapping[str, float], *, th: DiagnosisThresholds
) -> RuleHit | None:
    """Slow convergence: a high loss still falling steadily, but slowly, as fast as it ever did.

    AUTOTRAINER: best per-epoch gain below 0.01; here below ``slow_rel`` of the loss per check.
    The optimizer is slow (learning rate too low?); the model is not at its limit.

    Example:
        >>> th = DiagnosisThresholds()
        >>> bv = bias_variance([2.2, 2.15, 2.1, 2.05, 2.0], [2.2, 2.15, 2.1, 2.05, 2.0],
        ...                    reference=2.3, th=th)
        >>> check_slow_convergence(bv, {}, th=th).symptom.value
        'slow_convergence'
    """
    if not bv.high_bias or bv.plateau or bv.trend is None or bv.trend >= th.slow_rel:
        return None
    ratios = [v for v in update_ratios.values() if _finite(v)]
    median_update = _median(ratios) if ratios else None
    return RuleHit(Symptom.SLOW_CONVERGENCE, Severity.INFO,
                   f"the training loss falls only {bv.trend:.1%} per check",
                   {"train_loss": bv.train_loss, "trend_per_check": bv.trend,
                    "threshold": th.slow_rel, "median_update_ratio": median_update,
                    "lr_too_low": median_update is not None and median_update < th.update_ratio_low},
                   round(0.5 + 0.5 * (th.slow_rel - bv.trend) / th.slow_rel, 3))


# -- all of them -------------------------------------------------------------------------------
def fit_state_of(bv: BiasVariance, n_checks: int, *, th: DiagnosisThresholds) -> FitState:
    """The fit state from Ng's table.

    High bias -> under-fitting (unless still falling fast: unknown), else high variance ->
    over-fitting, else good fit; unknown before ``min_checks`` checks.

    Example:
        >>> th = DiagnosisThresholds()
        >>> bv = bias_variance([2.0, 0.5, 0.1], [2.0, 0.6, 0.15], reference=2.3, th=th)
        >>> fit_state_of(bv, 3, th=th).value
        'good_fit'
        >>> fit_state_of(bv, 2, th=th).value
        'unknown'
    """
    if n_checks < th.min_checks or bv.train_loss is None or bv.bias is None:
        return FitState.UNKNOWN
    if bv.high_bias:
        if bv.improving and bv.trend is not None and bv.trend >= th.slow_rel:
            return FitState.UNKNOWN  # still improving fast: too early to call it
        return FitState.UNDERFITTING
    if bv.high_variance:
        return FitState.OVERFITTING
    return FitState.GOOD_FIT


def rank_key(hit: RuleHit) -> tuple[int, int, float]:
    """Sort key: severity, then root causes before their effects, then confidence."""
    return (hit.severity.rank, PRIORITY.index(hit.symptom), -hit.confidence)


def diagnose(
    snap: TrainingSnapshot, th: DiagnosisThresholds | None = None
) -> tuple[FitState, BiasVariance, list[RuleHit]]:
    """Run every rule on one snapshot; return the fit state, its numbers and the ranked hits.

    Under-fitting is reported only when no fault (diverging, exploding, vanishing, dying,
    saturated, oscillating, no learning, unnormalized inputs) explains the high training loss:
    the fault's remedies are the ones to try first.

    Example:
        >>> snap = TrainingSnapshot(epoch=9, step=100, train_loss=[1.2, 0.4, 0.1, 0.02, 0.005],
        ...                         val_loss=[1.2, 0.6, 0.6, 0.8, 1.0], chance_loss=2.303)
        >>> state, bv, hits = diagnose(snap)
        >>> state.value, [h.symptom.value for h in hits]
        ('overfitting', ['overfitting'])
    """
    th = th or DiagnosisThresholds()
    ref = snap.reference_loss
    hits: list[RuleHit | None] = [
        check_diverging_loss(snap.train_loss, nonfinite=snap.nonfinite_loss, reference=ref,
                             th=th, initial=snap.initial_loss),
        check_exploding_gradients(snap.grad_norms, snap.grad_norm_history,
                                  nonfinite=snap.nonfinite_grads, th=th),
        check_vanishing_gradients(snap.grad_norms, th=th),
        check_dying_relu(snap.dead_fraction, snap.zero_grad_rows, th=th),
        check_saturated_activations(snap.saturation, th=th),
        check_unnormalized_inputs(snap.input_rms, snap.input_scale_ratio, th=th),
        check_data_leakage(snap.leakage_checked, snap.leakage_repeated, th=th),
    ]
    if snap.n_checks >= th.min_checks:
        hits += [
            check_oscillating_loss(snap.train_loss, reference=ref, th=th),
            check_no_learning(snap.train_loss, snap.val_loss, chance_loss=snap.chance_loss,
                              initial_loss=snap.initial_loss, th=th),
        ]
    bv = bias_variance(snap.train_loss, snap.val_loss, reference=ref, th=th)
    state = fit_state_of(bv, snap.n_checks, th=th)
    found = [h for h in hits if h is not None]
    if snap.n_checks >= th.min_checks:
        faults = {h.symptom for h in found}
        extra = [check_overfitting(bv, th=th)]
        if not faults & _EXPLAINS_BIAS:
            extra.append(check_underfitting(bv, th=th))
        if Symptom.NO_LEARNING not in faults:
            extra.append(check_slow_convergence(bv, snap.update_ratios, th=th))
        found += [h for h in extra if h is not None]
    found.sort(key=rank_key)
    return state, bv, found
