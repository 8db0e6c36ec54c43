"""Pure rule functions, thresholds, remedies, findings and the report: no Trainer involved."""

from __future__ import annotations

import json
import math

import pytest

from lightning_mlcycle.diagnosis import (
    REMEDIES,
    DiagnosisReport,
    DiagnosisThresholds,
    Finding,
    FitState,
    Remedy,
    Severity,
    Symptom,
    TrainingSnapshot,
    diagnose,
    remedies_for,
)
from lightning_mlcycle.diagnosis import rules as R

TH = DiagnosisThresholds()
LN10 = math.log(10)


def test_vocabulary_is_exactly_the_issue_list():
    assert [s.value for s in Symptom] == [
        "underfitting", "overfitting", "vanishing_gradients", "exploding_gradients", "dying_relu",
        "saturated_activations", "oscillating_loss", "slow_convergence", "diverging_loss",
        "no_learning", "unnormalized_inputs", "data_leakage",
    ]
    assert {s.value for s in FitState} == {"underfitting", "overfitting", "good_fit", "unknown"}
    assert isinstance(Symptom.OVERFITTING, str) and Symptom.OVERFITTING == "overfitting"


def test_every_symptom_has_remedies_and_a_priority():
    for s in Symptom:
        assert REMEDIES[s], s
        assert s in R.PRIORITY


# (name, snapshot kwargs, expected symptom or None)
CASES = [
    ("nan loss", dict(train_loss=[2.3, float("nan")], nonfinite_loss=True), Symptom.DIVERGING_LOSS),
    ("loss up 3x", dict(train_loss=[2.3, 0.5, 0.4, 1.5]), Symptom.DIVERGING_LOSS),
    ("far above chance from start", dict(train_loss=[40.0, 50.0], initial_loss=2.3), Symptom.DIVERGING_LOSS),
    ("high start falling is not diverging", dict(train_loss=[40.0, 9.0], initial_loss=60.0), None),
    ("grad nan", dict(train_loss=[2.3], nonfinite_grads=True), Symptom.EXPLODING_GRADIENTS),
    ("grad growth", dict(train_loss=[2.3], grad_norm_history=[1.0, 1.1, 0.9, 400.0]), Symptom.EXPLODING_GRADIENTS),
    ("grad ratio growing", dict(train_loss=[2.3], grad_norms={"a": 100.0, "b": 1.0},
                                grad_norm_history=[1.0, 1.0, 1.0, 5.0]), Symptom.EXPLODING_GRADIENTS),
    ("grad ratio steady", dict(train_loss=[2.3], grad_norms={"a": 100.0, "b": 1.0},
                               grad_norm_history=[1.0, 1.0, 1.0, 0.9]), None),
    ("vanishing", dict(train_loss=[2.3], grad_norms={"a": 1e-7, "b": 1e-3, "c": 0.3}), Symptom.VANISHING_GRADIENTS),
    ("small but proportionate", dict(train_loss=[2.3], grad_norms={"a": 1e-5, "c": 1e-3}), None),
    ("dead relu", dict(train_loss=[2.3], dead_fraction={"r1": 0.9}), Symptom.DYING_RELU),
    ("dead rows fallback", dict(train_loss=[2.3], zero_grad_rows={"l1": 0.8}), Symptom.DYING_RELU),
    ("healthy relu", dict(train_loss=[2.3], dead_fraction={"r1": 0.2}, zero_grad_rows={"l1": 0.9}), None),
    ("saturated", dict(train_loss=[2.3], saturation={"s": 0.8}), Symptom.SATURATED_ACTIVATIONS),
    ("raw pixels", dict(train_loss=[2.3], input_rms=110.0), Symptom.UNNORMALIZED_INPUTS),
    ("mixed scales", dict(train_loss=[2.3], input_rms=1.0, input_scale_ratio=1e4), Symptom.UNNORMALIZED_INPUTS),
    ("[0,1] images", dict(train_loss=[2.3], input_rms=0.6), None),
    ("leak", dict(train_loss=[2.3], leakage_checked=100, leakage_repeated=50), Symptom.DATA_LEAKAGE),
    ("one duplicate", dict(train_loss=[2.3], leakage_checked=1000, leakage_repeated=3), None),
    ("oscillating", dict(train_loss=[2.2, 1.4, 2.0, 1.3, 1.9, 1.2]), Symptom.OSCILLATING_LOSS),
    ("chance forever", dict(train_loss=[2.31, 2.30, 2.31, 2.30], val_loss=[2.30, 2.31, 2.30, 2.31]), Symptom.NO_LEARNING),
    ("memorizing shuffled labels", dict(train_loss=[2.3, 2.0, 1.5, 1.0], val_loss=[2.31, 2.35, 2.4, 2.5]), Symptom.NO_LEARNING),
    ("slow but steady from chance", dict(train_loss=[2.25, 2.24, 2.23, 2.22, 2.21],
                                         val_loss=[2.2, 2.19, 2.18, 2.17, 2.16]), Symptom.SLOW_CONVERGENCE),
    ("plateau high", dict(train_loss=[1.9, 1.5, 1.41, 1.40, 1.41, 1.40, 1.40],
                          val_loss=[1.9, 1.5, 1.45, 1.45, 1.45, 1.45, 1.45]), Symptom.UNDERFITTING),
    ("flattened curve still inching", dict(train_loss=[2.2, 1.8, 1.5, 1.45, 1.44, 1.43, 1.42, 1.41],
                                           val_loss=[2.2, 1.8, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5]), Symptom.UNDERFITTING),
    ("overfit", dict(train_loss=[1.0, 0.3, 0.05, 0.01], val_loss=[1.0, 0.5, 0.5, 0.6]), Symptom.OVERFITTING),
    ("healthy", dict(train_loss=[1.5, 0.6, 0.2, 0.1, 0.08], val_loss=[1.2, 0.5, 0.2, 0.14, 0.13]), None),
]


@pytest.mark.parametrize("kwargs,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_table(kwargs, expected):
    kwargs = {"chance_loss": LN10, **kwargs}
    kwargs.setdefault("val_loss", [None] * len(kwargs["train_loss"]))
    _, _, hits = diagnose(TrainingSnapshot(**kwargs), TH)
    found = [h.symptom for h in hits]
    if expected is None:
        assert not found, found
    else:
        assert expected in found, found
        hit = next(h for h in hits if h.symptom == expected)
        assert 0.0 <= hit.confidence <= 1.0 and hit.evidence and hit.message


@pytest.mark.parametrize(
    "train,val,state",
    [
        ([1.5, 0.6], [1.2, 0.5], FitState.UNKNOWN),  # fewer than min_checks
        ([2.2, 1.6, 1.2, 0.9, 0.7], [2.2, 1.6, 1.2, 0.9, 0.7], FitState.UNKNOWN),  # high but falling fast
        ([1.9, 1.5, 1.41, 1.40, 1.41, 1.40], [1.9, 1.5, 1.45, 1.45, 1.45, 1.45], FitState.UNDERFITTING),
        ([1.0, 0.3, 0.05, 0.01], [1.0, 0.5, 0.5, 0.6], FitState.OVERFITTING),
        ([1.5, 0.6, 0.2, 0.1, 0.08], [1.2, 0.5, 0.2, 0.14, 0.13], FitState.GOOD_FIT),
        ([2.0, 1.3, 1.3, 1.3, 1.3, 1.3], [2.0, 1.5, 1.6, 1.6, 1.6, 1.6], FitState.UNDERFITTING),  # bias first
        ([1.0, float("nan")], [1.0, None], FitState.UNKNOWN),
    ],
)
def test_fit_state_follows_the_bias_variance_table(train, val, state):
    got, bv, _ = diagnose(TrainingSnapshot(train_loss=train, val_loss=val, chance_loss=LN10), TH)
    assert got == state, bv


def test_underfitting_is_not_reported_when_a_fault_explains_it():
    snap = TrainingSnapshot(train_loss=[1.9, 1.5, 1.41, 1.40, 1.41, 1.40], val_loss=[1.9, 1.5, 1.45, 1.45, 1.45, 1.45],
                            chance_loss=LN10, dead_fraction={"relu": 0.95})
    state, _, hits = diagnose(snap, TH)
    assert state == FitState.UNDERFITTING
    assert [h.symptom for h in hits] == [Symptom.DYING_RELU]


def test_ranking_puts_critical_and_root_causes_first():
    snap = TrainingSnapshot(train_loss=[2.3, 2.3, float("nan")], val_loss=[2.3, 2.3, None],
                            nonfinite_loss=True, chance_loss=LN10, input_rms=80.0,
                            dead_fraction={"r": 0.9})
    _, _, hits = diagnose(snap, TH)
    assert [h.symptom for h in hits][:3] == [Symptom.DIVERGING_LOSS, Symptom.UNNORMALIZED_INPUTS,
                                            Symptom.DYING_RELU]


def test_unknown_classes_fall_back_to_the_first_loss():
    snap = TrainingSnapshot(train_loss=[0.50, 0.50, 0.50, 0.49], val_loss=[0.5, 0.5, 0.5, 0.5], initial_loss=0.5)
    assert snap.reference_loss == 0.5
    _, _, hits = diagnose(snap, TH)
    assert Symptom.NO_LEARNING in [h.symptom for h in hits]


def test_trend_stats_separate_noise_from_a_steady_decrease():
    rel, t = R.trend_stats([2.0, 1.9, 1.8, 1.7, 1.6], 5)
    assert rel > 0 and t > 100
    rel, t = R.trend_stats([1.40, 1.43, 1.39, 1.42, 1.40], 5)
    assert t < TH.trend_t


def test_thresholds_override_changes_the_decision():
    snap = TrainingSnapshot(train_loss=[1.0, 0.3, 0.05, 0.01], val_loss=[1.0, 0.5, 0.5, 0.6], chance_loss=LN10)
    assert diagnose(snap, DiagnosisThresholds())[0] == FitState.OVERFITTING
    assert diagnose(snap, DiagnosisThresholds(high_variance_ratio=0.5, val_rise=5.0))[0] == FitState.GOOD_FIT
    # a hard task: a train loss of 1.4 is what one expects, so it is not bias
    flat = TrainingSnapshot(train_loss=[1.9, 1.5, 1.41, 1.40, 1.41, 1.40], val_loss=[1.9, 1.5, 1.45, 1.45, 1.45, 1.45],
                            chance_loss=LN10)
    assert diagnose(flat, DiagnosisThresholds(expected_loss=1.3))[0] == FitState.GOOD_FIT


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"window": 1}, ValueError, "`window` must be an integer >= 2"),
        ({"min_checks": 2.5}, ValueError, "`min_checks` must be an integer"),
        ({"dead_fraction": 1.5}, ValueError, "`dead_fraction` must be in"),
        ({"high_bias_ratio": -1}, ValueError, "`high_bias_ratio` must be positive"),
        ({"expected_loss": -0.1}, ValueError, "`expected_loss` cannot be negative"),
        ({"plateau_rel": 0.5}, ValueError, "`plateau_rel` must be below `slow_rel`"),
        ({"val_rise": "big"}, TypeError, "`val_rise` must be a number"),
    ],
)
def test_thresholds_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DiagnosisThresholds(**kwargs)


def test_thresholds_from_mapping_rejects_unknown_names():
    assert DiagnosisThresholds.from_any({"window": 7}).window == 7
    with pytest.raises(ValueError, match=r"Unknown threshold\(s\) \['windw'\]"):
        DiagnosisThresholds.from_any({"windw": 7})
    with pytest.raises(TypeError, match="`thresholds` to be a DiagnosisThresholds"):
        DiagnosisThresholds.from_any(3)


def test_remedies_follow_the_classic_table_and_fill_overrides():
    over = remedies_for(Symptom.OVERFITTING, {"dropout_up": 0.3})
    assert over[0].action.startswith("get more training data")
    assert "model.backbone.dropout=0.3" in [r.override for r in over]
    assert any(r.override and r.override.startswith("model.optimizer.weight_decay=") for r in over)
    under = remedies_for("underfitting", {"width_up": 64})
    assert under[0].override == "model.backbone.width=64"
    assert remedies_for("data_leakage")[0].override == "data.leakage=drop"
    assert remedies_for("exploding_gradients")[0].override == "trainer.gradient_clip_val=1.0"
    assert remedies_for("diverging_loss", {"lr_down": "0.0003"})[0].override == "model.optimizer.lr=0.0003"
    assert remedies_for("diverging_loss")[0].override is None  # no learning rate known: no guess
    with pytest.raises(ValueError, match="`symptom` to be one of"):
        remedies_for("sadness")


def test_finding_validation_and_round_trip():
    with pytest.raises(ValueError, match="`confidence` must be in"):
        Finding(Symptom.NO_LEARNING, Severity.WARNING, step=1, epoch=0, confidence=2.0)
    with pytest.raises(ValueError, match="is not a valid Symptom"):
        Finding("bogus", Severity.WARNING, step=1, epoch=0)
    f = Finding("dying_relu", "warning", step=5, epoch=1, evidence={"x": float("nan"), "t": (1, 2)},
                remedies=[Remedy("leaky", "model.backbone.activation=leaky_relu")])
    d = f.to_dict()
    json.dumps(d)
    assert d["evidence"] == {"x": "nan", "t": [1, 2]}
    assert Finding.from_dict(d).remedies == f.remedies


def test_report_merges_ranks_serializes_and_renders():
    r = DiagnosisReport(fit_state="overfitting", history=[{"epoch": 0, "step": 10, "train_loss": 1.0,
                                                            "val_loss": 1.2, "monitor": 0.6}])
    r.add(Finding(Symptom.OVERFITTING, Severity.WARNING, step=10, epoch=0, message="gap"))
    r.add(Finding(Symptom.DIVERGING_LOSS, Severity.CRITICAL, step=20, epoch=1, message="nan"))
    r.add(Finding(Symptom.OVERFITTING, Severity.WARNING, step=30, epoch=2, message="gap again"))
    assert r.symptoms == [Symptom.DIVERGING_LOSS, Symptom.OVERFITTING]
    assert r.finding("overfitting").first_step == 10 and r.finding("overfitting").step == 30
    assert [f.symptom for f in r.faults] == [Symptom.DIVERGING_LOSS]
    d = json.loads(json.dumps(r.to_dict()))
    back = DiagnosisReport.from_dict(d)
    assert back.fit_state == FitState.OVERFITTING and back.symptoms == r.symptoms
    md = r.to_markdown()
    assert "**Fit state: `overfitting`**" in md and "### 1. `diverging_loss`" in md and "| 0 | 10 |" in md
