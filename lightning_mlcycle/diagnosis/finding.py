"""The vocabulary of the diagnosis: symptoms, fit states, severities and one ``Finding``."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Symptom(str, Enum):
    """What a rule can find. The values are the fixed vocabulary used in reports and logs.

    Example:
        >>> Symptom("dying_relu") is Symptom.DYING_RELU
        True
        >>> Symptom.OVERFITTING.value
        'overfitting'
    """

    UNDERFITTING = "underfitting"
    OVERFITTING = "overfitting"
    VANISHING_GRADIENTS = "vanishing_gradients"
    EXPLODING_GRADIENTS = "exploding_gradients"
    DYING_RELU = "dying_relu"
    SATURATED_ACTIVATIONS = "saturated_activations"
    OSCILLATING_LOSS = "oscillating_loss"
    SLOW_CONVERGENCE = "slow_convergence"
    DIVERGING_LOSS = "diverging_loss"
    NO_LEARNING = "no_learning"
    UNNORMALIZED_INPUTS = "unnormalized_inputs"
    DATA_LEAKAGE = "data_leakage"

    def __str__(self) -> str:
        return self.value

    @property
    def is_fault(self) -> bool:
        """True for training faults (everything except the bias/variance states and slowness)."""
        return self not in (Symptom.UNDERFITTING, Symptom.OVERFITTING, Symptom.SLOW_CONVERGENCE)


class FitState(str, Enum):
    """Where the fit stands on the bias/variance table (Ng, *Machine Learning Yearning*, ch. 20-23).

    ``unknown`` means too early to tell (or nothing finite to compare). When bias and variance are
    both high the state is ``underfitting``: reduce bias first, then variance (Ng's recipe).

    Example:
        >>> FitState("good_fit") is FitState.GOOD_FIT
        True
    """

    UNDERFITTING = "underfitting"
    OVERFITTING = "overfitting"
    GOOD_FIT = "good_fit"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class Severity(str, Enum):
    """How urgent a finding is.

    ``critical`` findings make training useless (``on_finding="stop"`` stops on them),
    ``warning`` ones hurt the result, ``info`` ones are worth a look.

    Example:
        >>> Severity.CRITICAL.rank < Severity.WARNING.rank < Severity.INFO.rank
        True
    """

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        """Sort key: 0 for the most urgent."""
        return ("critical", "warning", "info").index(self.value)


@dataclass(frozen=True)
class Remedy:
    """One thing to try, optionally with the ``mlcycle`` override that does it.

    Attributes:
        action: what to do, in words.
        override: a Hydra override of the ``mlcycle`` config that applies it
            (e.g. ``"model.backbone.dropout=0.3"``), or None when no config key maps to it.

    Example:
        >>> Remedy("more dropout", "model.backbone.dropout=0.3").to_dict()
        {'action': 'more dropout', 'override': 'model.backbone.dropout=0.3'}
    """

    action: str
    override: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"action": self.action, "override": self.override}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Remedy:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["action"]), d.get("override"))


@dataclass
class Finding:
    """One hypothesis about what is wrong with a training run, with the numbers behind it.

    Findings are ranked hypotheses, not verdicts: independent studies of tools like this one find
    them often wrong (see ``ANCHORS.md``), so every finding carries its ``evidence``.

    Attributes:
        symptom: what was found (:class:`Symptom`).
        severity: how urgent (:class:`Severity`).
        step: global step at which it was (last) seen.
        epoch: epoch at which it was (last) seen.
        evidence: the numbers that triggered the rule, and the thresholds they crossed.
        remedies: ranked things to try, most promising first.
        message: one sentence saying what was seen.
        confidence: 0..1, how far past its threshold the evidence is (used for ranking).
        first_step: global step at which it was first seen.
        active: whether the latest check still saw it (False: seen earlier, since resolved).

    Example:
        >>> f = Finding(Symptom.OVERFITTING, Severity.WARNING, step=90, epoch=8,
        ...             evidence={"relative_gap": 0.4}, message="val loss far above train loss")
        >>> f.to_dict()["symptom"], Finding.from_dict(f.to_dict()) == f
        ('overfitting', True)
    """

    symptom: Symptom
    severity: Severity
    step: int
    epoch: int
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: list[Remedy] = field(default_factory=list)
    message: str = ""
    confidence: float = 0.5
    first_step: int | None = None
    active: bool = True

    def __post_init__(self) -> None:
        self.symptom = Symptom(self.symptom)
        self.severity = Severity(self.severity)
        if not 0.0 <= float(self.confidence) <= 1.0:
            raise ValueError(f"`confidence` must be in [0, 1], but got confidence={self.confidence!r}.")
        if self.first_step is None:
            self.first_step = self.step

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (enums as their string values)."""
        return {
            "symptom": self.symptom.value,
            "severity": self.severity.value,
            "step": int(self.step),
            "epoch": int(self.epoch),
            "first_step": int(self.first_step if self.first_step is not None else self.step),
            "confidence": round(float(self.confidence), 3),
            "active": bool(self.active),
            "message": self.message,
            "evidence": _jsonable(self.evidence),
            "remedies": [r.to_dict() for r in self.remedies],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(
            symptom=Symptom(d["symptom"]),
            severity=Severity(d["severity"]),
            step=int(d["step"]),
            epoch=int(d["epoch"]),
            evidence=dict(d.get("evidence", {})),
            remedies=[Remedy.from_dict(r) for r in d.get("remedies", [])],
            message=str(d.get("message", "")),
            confidence=float(d.get("confidence", 0.5)),
            first_step=d.get("first_step"),
            active=bool(d.get("active", True)),
        )


def _jsonable(obj: Any) -> Any:
    """Numbers rounded to 4 significant digits, enums to strings, tuples to lists, recursively."""
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return str(obj)  # JSON has no NaN / inf
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    try:
        return _jsonable(float(obj))
    except (TypeError, ValueError):
        return str(obj)
