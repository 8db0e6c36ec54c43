"""Monitoring after deployment, and approximating it before deployment.

Run: ``python examples/monitoring.py`` (about 15 s on 2 CPU cores).

1. Train a small classifier on the bundled digits with an ordinary Lightning ``Trainer``.
2. Capture its reference profile on the validation split and save it next to the model.
3. Before deployment: stress-test the test split under shifts of rising severity.
4. After deployment: a ``DriftMonitor`` checks windows of live inputs, logs every window as JSON
   lines and to TensorBoard, and calls an alert hook with the evidence when the data drift.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_mlcycle import ClassificationModule, DigitsDataModule
from lightning_mlcycle.models import MLP
from lightning_mlcycle.monitoring import DriftMonitor, ReferenceProfile, apply_shift, stress_test


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    out = Path(tempfile.mkdtemp(prefix="monitoring_example_"))

    # 1. an ordinary training run
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    model = ClassificationModule(
        MLP(10, dm.input_shape, hidden=(64,)), num_classes=10, normalization=dm.normalization
    )
    trainer = pl.Trainer(
        max_epochs=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=dm)

    # 2. the reference profile: raw validation inputs (the module normalizes them itself), the
    #    training inputs only to fit the PCA the detectors see
    x_val, y_val = dm.raw_split("val")
    x_train, _ = dm.raw_split("train")
    profile = ReferenceProfile.capture(
        model, x_val, y_val, fit_inputs=x_train, class_names=dm.class_names
    )
    profile.save(out / "profile")
    print(
        f"profile {profile.fingerprint}: {profile.projection} features, "
        f"T={profile.temperature:.2f}, val accuracy {profile.prediction_stats['accuracy']:.3f}"
    )

    # 3. before deployment: how does accuracy fall under shifts, and would the monitor notice?
    monitor = DriftMonitor(model, out / "profile")
    x_test, y_test = dm.raw_split("test")
    report = stress_test(monitor, x_test, y_test, severities=(1, 3, 5))
    print(report.to_markdown())

    # 4. after deployment: windows of live inputs (here: test data, then blurred test data).
    #    Shuffled: the digits are stored writer by writer, so consecutive samples share writers,
    #    a real sub-population shift the monitor does notice.
    x_test = x_test[torch.randperm(x_test.shape[0], generator=torch.Generator().manual_seed(0))]
    alerts = []
    live = DriftMonitor(
        model,
        ReferenceProfile.load(out / "profile"),
        log_path=out / "drift.jsonl",
        tensorboard=out / "tensorboard",
        on_alert=alerts.append,
        patience=2,
    )
    windows = [
        x_test[:130],
        x_test[130:],
        apply_shift(x_test[:130], "gaussian_blur", 2),
        apply_shift(x_test[130:], "gaussian_blur", 2),
    ]
    for window in windows:
        r = live.check(window)
        print(f"window {r.index}: {r.message}")
    try:
        live.check(torch.full((10, 1, 8, 8), float("nan")))  # a broken batch is refused ...
    except ValueError as err:
        print(f"rejected: {err}")
    print(f"... and the next window is checked: {live.check(x_test[:100]).message}")
    print(f"{len(alerts)} alerts; log: {out / 'drift.jsonl'}")
    last = json.loads((out / "drift.jsonl").read_text().splitlines()[3])
    print("evidence of the last drifted window:", json.dumps(last["tests"]["ks"]["details"]))
    assert [a.index for a in alerts][-2:] == [2, 3] and alerts[-1].retrain_suggested


if __name__ == "__main__":
    main()
