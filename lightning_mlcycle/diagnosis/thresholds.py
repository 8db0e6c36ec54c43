"""The thresholds of the diagnosis rules, documented with their sources, all overridable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class DiagnosisThresholds:
    """Every cut-off the rules use, with its source. Override any of them by keyword.

    Losses are compared on a scale-free footing: against the *reference loss*, which is the
    chance-level cross-entropy ``ln(num_classes)`` when the number of classes is known (the loss of
    a model that predicts the uniform distribution), else the loss at the first training step.

    Attributes:
        min_checks: validation checks before ``fit_state`` leaves ``unknown`` and before the trend
            rules (plateau, no learning, oscillation) speak.
        window: how many recent checks the trend rules look at.
        high_bias_ratio: avoidable bias ``(train_loss - expected_loss) / reference`` above which the
            bias is high (Ng, *Machine Learning Yearning* ch. 20-23: train error far from the
            optimal error). 0.25 of chance on 10 classes is a loss of 0.58 (about 80% accuracy).
        expected_loss: the loss you expect to be reachable (Bayes or human-level proxy; Ng ch. 33);
            0 when unknown. Set it for hard or noisy tasks, where a high loss is not bias.
        high_variance_ratio: generalization gap ``(val_loss - train_loss) / reference`` above which
            the variance is high (Ng's dev-minus-train error), provided the gap is also larger
            than the avoidable bias (Ng ch. 23: work on the larger of the two). 0.05 of chance on
            10 classes is a gap of 0.115 nats.
        val_rise: Prechelt's generalization loss ``GL = val_loss / best_val_loss - 1`` above which
            validation is getting worse while training improves (Prechelt, "Early stopping - but
            when?", 1998, uses GL > 5%; UMLAUT flags val loss up while train loss down). Counts as
            high variance when the gap is also at least half of ``high_variance_ratio``.
        plateau_rel: relative decrease of the train loss per check (least-squares slope over
            ``window``, divided by the level) below which training has plateaued, however
            steady (so a high loss is under-fitting, not slowness).
        trend_t: t-statistic of that slope below which the decrease is not told apart from
            noise, i.e. a plateau (2.35 is the one-sided 95% point of Student's t with the 3
            degrees of freedom of a 5-check window).
        deceleration: a slow decrease (below ``slow_rel``) counts as a plateau once the rate
            has fallen below this share of its peak over the run: the curve has flattened, so
            the model is near its level (under-fitting if high); a rate that was never faster is
            slow convergence instead.
        slow_rel: below this relative decrease per check (and above ``plateau_rel``) a still-high
            loss is *slow convergence* (AUTOTRAINER: best per-epoch gain below 0.01); at or above
            it the run is still improving fast and the state stays ``unknown``.
        chance_tol: losses within this fraction of the chance level (or of the first loss when
            the classes are unknown) count as *no learning*.
        diverge_ratio: a check's train loss this many times above its best so far is diverging.
        diverge_chance_ratio: a train loss this many times the chance level is worse than guessing.
        oscillation_rel: swing of the train loss between checks, as a fraction of the reference
            loss, that counts as one swing (AUTOTRAINER: accuracy swings of 0.03).
        oscillation_frac: share of checks in ``window`` with a swing that makes the loss
            oscillating (AUTOTRAINER: 20% of epochs).
        vanishing_ratio: first-layer over last-layer gradient norm below which gradients vanish
            (AUTOTRAINER: 1e-3).
        vanishing_first_norm: and the first layer's gradient norm below this (AUTOTRAINER: 1e-4).
        exploding_ratio: first-layer over last-layer gradient norm above which gradients explode
            (AUTOTRAINER: 70); counts only while the gradient norm also grew.
        explode_growth: total gradient norm this many times its median over the first sampled
            steps is exploding (Pascanu et al., "On the difficulty of training RNNs", 2013, watch
            the norm's growth).
        dead_fraction: share of a ReLU layer's units that output zero for a whole batch above
            which the layer is dying (DeepDiagnosis and AUTOTRAINER: 70%).
        saturation_fraction: share of a sigmoid/tanh layer's pre-activations in the flat tails
            above which the layer is saturated (DeepDiagnosis: 50%).
        saturation_preact: ``|pre-activation|`` beyond which a sigmoid is saturated (DeepDiagnosis:
            5, where the sigmoid's slope is below 0.007); tanh uses half of it (``tanh(x) =
            2 sigmoid(2x) - 1``).
        input_rms_max: root-mean-square of an input channel/feature above which inputs are not
            normalized (UMLAUT flags inputs outside [-1, 1]; standardized data has RMS 1, [0, 1]
            images at most 1, raw 0-255 pixels about 100).
        input_scale_ratio: ratio of the largest to the smallest feature standard deviation of
            tabular (N, F) inputs above which features need scaling.
        leakage_fraction: share of validation samples that are exact copies of training samples
            above which validation is leaking (UMLAUT flags val accuracy above train; a direct
            duplicate count is stronger evidence).
        update_ratio_low: per-layer update/weight norm ratio below which the learning rate is
            probably too low (Karpathy, CS231n "babysitting the learning process": about 1e-3 is
            healthy; DeepDiagnosis flags vanishing updates).
        update_ratio_high: above which the learning rate is probably too high.

    Example:
        >>> th = DiagnosisThresholds(high_variance_ratio=0.2)
        >>> th.high_variance_ratio, th.dead_fraction
        (0.2, 0.7)
        >>> DiagnosisThresholds.from_any({"window": 4}).window
        4
    """

    min_checks: int = 3
    window: int = 5
    high_bias_ratio: float = 0.25
    expected_loss: float = 0.0
    high_variance_ratio: float = 0.05
    val_rise: float = 0.10
    plateau_rel: float = 0.002
    trend_t: float = 2.35
    deceleration: float = 0.25
    slow_rel: float = 0.04
    chance_tol: float = 0.05
    diverge_ratio: float = 2.0
    diverge_chance_ratio: float = 3.0
    oscillation_rel: float = 0.03
    oscillation_frac: float = 0.2
    vanishing_ratio: float = 1e-3
    vanishing_first_norm: float = 1e-4
    exploding_ratio: float = 70.0
    explode_growth: float = 100.0
    dead_fraction: float = 0.7
    saturation_fraction: float = 0.5
    saturation_preact: float = 5.0
    input_rms_max: float = 5.0
    input_scale_ratio: float = 100.0
    leakage_fraction: float = 0.02
    update_ratio_low: float = 1e-5
    update_ratio_high: float = 0.1

    def __post_init__(self) -> None:
        for name in ("min_checks", "window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 2:
                raise ValueError(f"`{name}` must be an integer >= 2, but got {name}={value!r}.")
        for f in fields(self):
            if f.name in ("min_checks", "window"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"`{f.name}` must be a number, but got {f.name}={value!r}.")
            if f.name == "expected_loss":
                if value < 0:
                    raise ValueError(f"`expected_loss` cannot be negative, but got {value!r}.")
            elif not value > 0:
                raise ValueError(f"`{f.name}` must be positive, but got {f.name}={value!r}.")
        if self.plateau_rel >= self.slow_rel:
            raise ValueError(
                f"`plateau_rel` must be below `slow_rel`, but got plateau_rel={self.plateau_rel!r} "
                f"and slow_rel={self.slow_rel!r}."
            )
        for name in ("chance_tol", "dead_fraction", "saturation_fraction", "leakage_fraction",
                     "oscillation_frac", "deceleration"):
            if not getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in (0, 1), but got {name}={getattr(self, name)!r}.")

    @classmethod
    def from_any(cls, value: DiagnosisThresholds | Mapping[str, Any] | None) -> DiagnosisThresholds:
        """Accept an instance, a mapping of overrides (e.g. from a Hydra config) or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(map(str, value)) - known)
            if unknown:
                raise ValueError(
                    f"Unknown threshold(s) {unknown}; expected names among {sorted(known)}."
                )
            return cls(**{str(k): v for k, v in value.items() if v is not None})
        raise TypeError(
            f"Expected argument `thresholds` to be a DiagnosisThresholds, a mapping or None, "
            f"but got {type(value).__name__}."
        )

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as a plain dict."""
        return asdict(self)
