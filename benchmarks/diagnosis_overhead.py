"""Training time per epoch with and without FitDiagnosis on the default mlcycle model.

SmallCNN (width 32, dropout 0.1, BatchNorm, ReLU) on digits through DigitsDataModule, AdamW
lr 3e-3, batch 64, TensorBoard logger: what ``mlcycle`` trains by default. Runs alternate
(baseline, diagnosis, baseline, ...) so both see the same machine load; each run trains a few
epochs and the first epoch of every run (warm-up) is left out. Reported: median time per epoch
(training + validation, from ``on_train_epoch_start`` to ``on_train_epoch_end``) and median time
of the whole ``fit`` (which also includes writing the report and the figure at the end).

Run: ``python benchmarks/diagnosis_overhead.py [--repeats 5 --epochs 5]``.
Writes ``benchmarks/results/diagnosis_overhead.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_mlcycle import ClassificationModule, DigitsDataModule, FitDiagnosis
from lightning_mlcycle.models import SmallCNN


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(time.perf_counter() - self._t0)


def one_run(with_diagnosis: bool, epochs: int, root: str) -> tuple[list[float], float]:
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    backbone = SmallCNN(dm.num_classes, dm.input_shape, width=32, dropout=0.1)
    model = ClassificationModule(backbone, num_classes=dm.num_classes,
                                 optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=1e-4))
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    if with_diagnosis:
        callbacks.append(FitDiagnosis(monitor="val/acc", mode="max"))
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks,
                         logger=pl.loggers.TensorBoardLogger(root, name="tb"),
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=10)
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return timer.epochs[1:], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning_mlcycle").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="diag_bench_")
    per_epoch: dict[str, list[float]] = {"baseline": [], "fit_diagnosis": []}
    per_fit: dict[str, list[float]] = {"baseline": [], "fit_diagnosis": []}
    one_run(False, 2, root)  # warm-up: imports, first allocations
    for r in range(args.repeats):
        order = [False, True] if r % 2 == 0 else [True, False]
        for diag in order:
            key = "fit_diagnosis" if diag else "baseline"
            epochs, total = one_run(diag, args.epochs, root)
            per_epoch[key] += epochs
            per_fit[key].append(total)
    med = {k: statistics.median(v) for k, v in per_epoch.items()}
    fit_med = {k: statistics.median(v) for k, v in per_fit.items()}
    overhead = 100 * (med["fit_diagnosis"] / med["baseline"] - 1)
    fit_overhead = 100 * (fit_med["fit_diagnosis"] / fit_med["baseline"] - 1)
    lines = [
        "| run | median s / epoch | median s / fit | epochs timed | fits |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in ("baseline", "fit_diagnosis"):
        lines.append(f"| {k} | {med[k]:.4f} | {fit_med[k]:.3f} | {len(per_epoch[k])} | {len(per_fit[k])} |")
    lines.append(f"| overhead | {overhead:+.2f}% | {fit_overhead:+.2f}% | | |")
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis_overhead.json").write_text(json.dumps({
        "setup": {"model": "SmallCNN(width=32, dropout=0.1)", "data": "DigitsDataModule(batch_size=64)",
                  "epochs_per_fit": args.epochs, "repeats": args.repeats, "threads": 1,
                  "first_epoch_of_each_fit_excluded": True},
        "median_epoch_s": med, "median_fit_s": fit_med,
        "overhead_epoch_pct": overhead, "overhead_fit_pct": fit_overhead,
        "epoch_s": per_epoch, "fit_s": per_fit,
    }, indent=2))


if __name__ == "__main__":
    main()
