"""ReferenceProfile and DriftMonitor on a small trained model: round trip, alarms, logs, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.monitoring import (
    DriftMonitor,
    ReferenceProfile,
    estimate_accuracy,
    fit_temperature,
)

CENTERS = torch.tensor([[2.0, 0, 0, 1, 0, 0], [0, 2.0, 0, 0, 1, 0], [0, 0, 2.0, 0, 0, 1]])


def blobs(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = CENTERS[y] + torch.randn(n, 6, generator=g) * 1.2
    x[:, 0] += shift
    return x, y


def train(seed: int = 0, steps: int = 150) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = blobs(600, seed + 100)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return train()


@pytest.fixture(scope="module")
def profile(model) -> ReferenceProfile:
    x, y = blobs(400, 1)
    return ReferenceProfile.capture(model, x, y, metrics={"test/acc": 0.9})


def test_profile_content(profile):
    assert profile.projection == "inputs"
    assert profile.arrays["features"].shape == (400, 6)
    assert profile.arrays["probs"].shape == (400, 3)
    assert profile.input_stats["axis"] == "feature" and len(profile.input_stats["mean"]) == 6
    stats = profile.prediction_stats
    assert sum(stats["predicted_class_rates"]) == pytest.approx(1.0)
    assert 0.6 < stats["accuracy"] <= 1.0
    assert profile.metrics == {"test/acc": 0.9}


def test_profile_round_trip(tmp_path, profile, model):
    path = profile.save(tmp_path / "p")
    assert path.name == "profile.json" and (tmp_path / "p" / "profile.npz").is_file()
    loaded = ReferenceProfile.load(tmp_path / "p")
    assert loaded.to_dict() == profile.to_dict()
    for key, arr in profile.arrays.items():
        assert torch.equal(loaded.arrays[key], arr), key
    x, _ = blobs(20, 9)
    assert torch.allclose(loaded.features(x), profile.features(x))
    loaded.check_model(model)
    # the npz holds plain arrays only: loads without pickle
    with np.load(tmp_path / "p" / "profile.npz", allow_pickle=False) as data:
        assert data["features"].dtype == np.float32


def test_profile_load_errors(tmp_path, profile):
    with pytest.raises(MLCycleError, match="No reference profile"):
        ReferenceProfile.load(tmp_path / "missing")
    profile.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "profile.json").read_text())
    meta["version"] = 99
    (tmp_path / "p" / "profile.json").write_text(json.dumps(meta))
    with pytest.raises(MLCycleError, match="profile version 99 is not supported"):
        ReferenceProfile.load(tmp_path / "p")
    meta["version"], meta["fingerprint"] = 1, "0" * 16
    (tmp_path / "p" / "profile.json").write_text(json.dumps(meta))
    with pytest.raises(MLCycleError, match="do not belong together"):
        ReferenceProfile.load(tmp_path / "p" / "profile.json")


def test_profile_of_a_different_model_is_rejected(profile):
    other = train(seed=5)
    with pytest.raises(MLCycleError, match="captured from a different model"):
        profile.check_model(other)
    with pytest.raises(MLCycleError, match="captured from a different model"):
        DriftMonitor(other, profile)
    with pytest.raises(MLCycleError, match="with 3 classes, but the model returns 4"):
        profile.check_model(nn.Linear(6, 4))
    with pytest.raises(MLCycleError, match=r"inputs of shape \(6,\)"):
        profile.check_model(nn.Linear(5, 3))


def test_capture_projections_and_errors(model):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(100, 1, 8, 8, generator=g)
    cnn = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    pca = ReferenceProfile.capture(cnn, images, n_components=5)
    # PCA fitted on one half, the other half is the reference; +1: distance to the subspace
    assert pca.projection == "pca" and pca.arrays["features"].shape == (50, 6)
    assert pca.input_stats["axis"] == "channel"
    fitted = ReferenceProfile.capture(
        cnn, images, n_components=5, fit_inputs=torch.rand(80, 1, 8, 8)
    )
    assert fitted.arrays["features"].shape == (100, 6)
    emb = ReferenceProfile.capture(cnn, images, projection="embedding", n_components=4)
    assert emb.embedding_layer == "3" and emb.arrays["features"].shape == (50, 5)
    x, _ = blobs(50, 0)
    with pytest.raises(MLCycleError, match="`projection='embedding'` needs a torch module"):
        ReferenceProfile.capture(lambda t: model(t), x, projection="embedding")
    with pytest.raises(ValueError, match="`projection` to be one of"):
        ReferenceProfile.capture(model, x, projection="tsne")
    with pytest.raises(MLCycleError, match="NaN"):
        ReferenceProfile.capture(model, torch.full((20, 6), float("nan")))
    with pytest.raises(MLCycleError, match="at least 8 samples"):
        ReferenceProfile.capture(model, x[:3])
    with pytest.raises(MLCycleError, match="`embedding_layer`='nope' is not a module"):
        ReferenceProfile.capture(model, x, embedding_layer="nope")


def test_temperature_makes_confidence_estimate_accuracy():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (2000,), generator=g)
    logits = torch.randn(2000, 4, generator=g)
    logits[torch.arange(2000), y] += 1.0
    overconfident = torch.softmax(logits * 4.0, dim=1)
    t = fit_temperature(overconfident, y)
    assert 3.0 < t < 5.5  # undoes the factor 4
    true_acc = float((overconfident.argmax(1) == y).float().mean())
    assert abs(estimate_accuracy(overconfident, t) - true_acc) < 0.03
    assert estimate_accuracy(overconfident) - true_acc > 0.15  # raw confidence is far off


def test_monitor_false_alarm_rate_is_at_most_the_level(model, profile):
    monitor = DriftMonitor(model, profile, alpha=0.1, calibration_splits=200, permutations=100)
    fired = [monitor.check(blobs(100, 1000 + i)[0]).drifted for i in range(60)]
    # three tests at alpha/3 each: at most alpha for the window (binomial sd ~0.04 at 60 windows)
    assert sum(fired) / len(fired) <= 0.17


def test_monitor_detects_alerts_logs_and_suggests_retraining(tmp_path, model, profile):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    alerts = []
    monitor = DriftMonitor(
        model,
        profile,
        log_path=tmp_path / "log.jsonl",
        tensorboard=tmp_path / "tb",
        on_alert=alerts.append,
        patience=2,
        calibration_splits=100,
    )
    x, y = blobs(150, 50)
    ok = monitor.check(x, y)
    assert not ok.drifted and ok.status == "ok"
    assert ok.accuracy == pytest.approx(float((model(x).argmax(1) == y).float().mean()))
    assert 0.5 < ok.macro_f1 <= 1.0
    shifted = [monitor.check(blobs(150, 60 + i, shift=1.5)[0]) for i in range(2)]
    assert all(r.drifted for r in shifted)
    assert [r.index for r in alerts] == [1, 2]
    assert not shifted[0].retrain_suggested and shifted[1].retrain_suggested
    assert "retrain" in shifted[1].message
    ks = next(r for r in shifted[0].results if r.detector == "ks")
    assert ks.drifted and ks.details["top_features"][0] == 0
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["drifted"] for line in lines] == [False, True, True]
    assert set(lines[1]["tests"]) == {"ks", "mmd", "prediction"}
    monitor.writer.flush()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"monitor/ks_p_value", "monitor/drift", "monitor/estimated_accuracy"} <= set(tags)
    assert [e.value for e in acc.Scalars("monitor/drift")] == [0.0, 1.0, 1.0]
    state = monitor.state_dict()
    fresh = DriftMonitor(model, profile, calibration_splits=10)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == {"windows_seen": 3, "drift_streak": 2, "alerts": 2}


def test_bad_windows_are_rejected_and_the_monitor_keeps_running(tmp_path, model, profile):
    monitor = DriftMonitor(model, profile, log_path=tmp_path / "log.jsonl", calibration_splits=50)
    x, _ = blobs(80, 7)
    with pytest.raises(MLCycleError, match=r"must have shape \(N, 6\)"):
        monitor.check(torch.zeros(10, 5))
    with pytest.raises(MLCycleError, match="must hold real numbers"):
        monitor.check(torch.zeros(10, 6, dtype=torch.bool))
    with pytest.raises(MLCycleError, match="must hold numbers"):
        monitor.check(np.array([["a"] * 6] * 3))
    nan = x.clone()
    nan[3, 2] = float("nan")
    with pytest.raises(MLCycleError, match="1 NaN/infinite values in 1 of 80 samples"):
        monitor.check(nan)
    with pytest.raises(MLCycleError, match="one label per sample"):
        monitor.check(x, labels=[0, 1])
    report = monitor.check(x.numpy())  # numpy works too
    assert report.status == "ok" and report.index == 5
    reports = monitor.run([x[:1], x, (x, torch.zeros(80))])
    assert [r.status for r in reports] == ["error", "ok", "ok"]
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["status"] for line in lines] == ["error"] * 5 + ["ok", "error", "ok", "ok"]
    assert "at least 2 samples" in lines[6]["error"]


def test_monitor_arguments(model, profile):
    with pytest.raises(ValueError, match=r"`alpha` must be in \(0, 1\), but got alpha=0"):
        DriftMonitor(model, profile, alpha=0)
    with pytest.raises(ValueError, match="`detectors` to be one of"):
        DriftMonitor(model, profile, detectors=["ks", "chi2"])
    with pytest.raises(ValueError, match="at least one of"):
        DriftMonitor(model, profile, detectors=[])
    with pytest.raises(ValueError, match="`patience` must be an integer >= 1"):
        DriftMonitor(model, profile, patience=0)
    with pytest.raises(TypeError, match="`on_alert` to be callable"):
        DriftMonitor(model, profile, on_alert="email")


def test_monitor_survives_a_failing_alert_hook(model, profile, caplog):
    def hook(_report):
        raise RuntimeError("pager down")

    monitor = DriftMonitor(model, profile, on_alert=hook, detectors=["ks"], calibration_splits=50)
    assert monitor.check(blobs(150, 3, shift=2.0)[0]).drifted
    assert "on_alert" in caplog.text
    assert monitor.check(blobs(150, 4)[0]).status == "ok"


def test_monitor_wraps_callables_and_saved_profiles(tmp_path, model, profile):
    profile.save(tmp_path / "p")

    def predict(x: torch.Tensor) -> np.ndarray:  # a plain function returning probabilities
        return torch.softmax(model(x), dim=1).numpy()

    monitor = DriftMonitor(predict, str(tmp_path / "p"), detectors=["prediction"])
    direct = DriftMonitor(model, profile, detectors=["prediction"])
    x = blobs(200, 12)[0]
    assert monitor.check(x).results[0].p_value == pytest.approx(direct.check(x).results[0].p_value)
    assert monitor.check(blobs(200, 13, shift=3.0)[0]).drifted
