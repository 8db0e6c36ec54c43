"""Shifts and the pre-deployment stress test."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.monitoring import (
    SHIFTS,
    DriftMonitor,
    ReferenceProfile,
    apply_shift,
    default_shifts,
    stress_test,
)
from lightning_mlcycle.monitoring.shifts import IMAGE_SHIFTS, TABULAR_SHIFTS


def images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 8x8 images in [0, 16]: a bright bar, vertical or horizontal."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 4
    pos = torch.randint(2, 6, (n,), generator=g)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, :, pos[i]] = 14.0
        else:
            x[i, 0, pos[i], :] = 14.0
    return x, y


@pytest.fixture(scope="module")
def image_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = images(400, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model((x - 5) / 5), y).backward()
        opt.step()
    model.eval()

    def predict(raw: torch.Tensor) -> torch.Tensor:
        return model((raw - 5) / 5)

    xv, yv = images(300, 1)
    profile = ReferenceProfile.capture(predict, xv, yv, n_components=8, fit_inputs=x)
    return predict, profile


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_every_shift_keeps_shape_and_grows_with_severity(name):
    x = images(64, 3)[0] if name in IMAGE_SHIFTS else torch.randn(64, 6) * 3 + 1
    if name not in default_shifts(tuple(x.shape[1:])):
        with pytest.raises(MLCycleError, match="needs"):
            apply_shift(x, name, 1)
        return
    changes = []
    for severity in (1, 3, 5):
        out = apply_shift(x, name, severity, seed=1)
        assert out.shape == x.shape and torch.isfinite(out).all()
        changes.append(float((out - x).abs().mean()))
    assert changes[0] > 0
    assert changes[0] < changes[2], changes
    assert torch.equal(apply_shift(x, name, 3, seed=1), apply_shift(x, name, 3, seed=1))


def test_shift_errors():
    with pytest.raises(MLCycleError, match="Unknown shift 'snow'"):
        apply_shift(torch.zeros(2, 3), "snow", 1)
    with pytest.raises(MLCycleError, match=r"`severity` must be an integer in \[1, 5\], but got 6"):
        apply_shift(torch.zeros(2, 3), "gaussian_noise", 6)


def test_stress_table_has_every_shift_and_severity(tmp_path, image_setup):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    predict, profile = image_setup
    monitor = DriftMonitor(predict, profile, calibration_splits=100, permutations=100)
    x, y = images(200, 2)
    report = stress_test(monitor, x, y, severities=(1, 3, 5))
    cells = {(r["shift"], r["severity"]) for r in report.rows}
    assert cells == {("none", 0)} | {(s, v) for s in IMAGE_SHIFTS for v in (1, 3, 5)}
    assert len(report.rows) == 1 + len(IMAGE_SHIFTS) * 3
    base = report.cell("none", 0)
    assert base["accuracy"] > 0.9 and base["detected"] == 0.0
    for shift in IMAGE_SHIFTS:  # severe shifts are all caught on 200 samples
        assert report.cell(shift, 5)["detected"] == 1.0, shift
    assert report.cell("occlusion", 5)["accuracy"] < base["accuracy"]
    assert report.detectors == ["ks", "mmd", "prediction"]
    md = report.to_markdown()
    assert md.count("\n| ") == len(report.rows) and "| rotation | 3 |" in md
    report.save(tmp_path)
    saved = json.loads((tmp_path / "stress_test.json").read_text())
    assert len(saved["rows"]) == len(report.rows)
    writer = SummaryWriter(str(tmp_path / "tb"))
    report.log_to_tensorboard(writer)
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert "monitor/stress_test" in acc.Tags()["images"]
    assert "stress_accuracy/rotation_s5" in acc.Tags()["scalars"]


def test_stress_on_tabular_data_with_windows():
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 3)
    x = torch.randn(600, 5, generator=g)
    y = model(x).argmax(1)
    profile = ReferenceProfile.capture(model, x[:300], y[:300])
    monitor = DriftMonitor(model, profile, calibration_splits=100, permutations=100)
    report = stress_test(monitor, x[300:], y[300:], severities=(2, 5), window_size=100, windows=3)
    assert [r["shift"] for r in report.rows] == ["none", *[s for s in TABULAR_SHIFTS for _ in (2, 5)]]
    assert report.window_size == 100 and report.windows == 3
    assert report.cell("none", 0)["accuracy"] == 1.0
    assert report.cell("feature_scaling", 5)["detected"] == 1.0
    assert report.cell("missing_values", 5)["detected"] == 1.0


def test_stress_errors(image_setup):
    predict, profile = image_setup
    monitor = DriftMonitor(predict, profile, calibration_splits=20)
    x, y = images(20, 5)
    with pytest.raises(MLCycleError, match=r"Unknown shifts \['fog'\]"):
        stress_test(monitor, x, y, shifts=["fog"])
    with pytest.raises(MLCycleError, match=r"`severities` must be integers in \[1, 5\]"):
        stress_test(monitor, x, y, severities=(0,))
    with pytest.raises(MLCycleError, match=r"`window_size` must be in \[2, 20\]"):
        stress_test(monitor, x, y, window_size=50)
    with pytest.raises(MLCycleError, match="same N"):
        stress_test(monitor, x, y[:5])
    with pytest.raises(TypeError, match="to be a DriftMonitor"):
        stress_test(predict, x, y)
