"""Training time per epoch with and without FitDiagnosis on the default mlcycle model.

SmallCNN (width 32, dropout 0.1, BatchNorm, ReLU) on digits through DigitsDataModule, AdamW
lr 3e-3, batch 64, TensorBoard logger: what ``mlcycle`` trains by default. Runs alternate
(baseline, diagnosis, baseline, ...) so both see the same machine load; each run trains a few
epochs and the first epoch of every run (warm-up) is left out. Reported: median time per epoch
(training + validation, from ``on_train_epoch_start`` to ``on_train_epoch_end``) and median time
of the whole ``fit`` (which also includes writing the report and the figure at the end), both as
wall-clock time and as this process's CPU time (``time.process_time``; torch uses one thread),
which other processes on a shared machine disturb much less. Also reported: the CPU time spent
inside FitDiagnosis' own hooks, as a share of the epoch time of the same runs (a direct measure
that needs no baseline; it leaves out the forward hooks, which run only at sampled steps).

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
        self.cpu: list[float] = []
        self._t0 = self._c0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)


_HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end",
          "on_validation_batch_start", "on_validation_end", "on_train_epoch_end")


def timed(diag: FitDiagnosis) -> list[float]:
    """Wrap the per-epoch hooks of ``diag`` to add their CPU time to the returned one-item list."""
    spent = [0.0]
    for name in _HOOKS:
        orig = getattr(diag, name)

        def wrapper(*args, _orig=orig, **kwargs):
            c0 = time.process_time()
            try:
                return _orig(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - c0

        setattr(diag, name, wrapper)
    return spent


def one_run(with_diagnosis: bool, epochs: int, root: str) -> dict[str, object]:
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    backbone = SmallCNN(dm.num_classes, dm.input_shape, width=32, dropout=0.1)
    model = ClassificationModule(backbone, num_classes=dm.num_classes,
                                 optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=1e-4))
    timer = EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    spent = [0.0]
    if with_diagnosis:
        diag = FitDiagnosis(monitor="val/acc", mode="max")
        spent = timed(diag)
        callbacks.append(diag)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=callbacks,
                         logger=pl.loggers.TensorBoardLogger(root, name="tb"),
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=10)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    return {"epoch_s": timer.epochs[1:], "epoch_cpu_s": timer.cpu[1:],
            "fit_s": time.perf_counter() - t0, "fit_cpu_s": time.process_time() - c0,
            "hooks_cpu_s": spent[0], "all_epochs_cpu_s": sum(timer.cpu)}


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
    keys = ("epoch_s", "epoch_cpu_s", "fit_s", "fit_cpu_s")
    data: dict[str, dict[str, list[float]]] = {r: {k: [] for k in keys} for r in ("baseline", "fit_diagnosis")}
    hook_share: list[float] = []
    one_run(False, 2, root)  # warm-up: imports, first allocations
    for r in range(args.repeats):
        order = [False, True] if r % 2 == 0 else [True, False]
        for diag in order:
            key = "fit_diagnosis" if diag else "baseline"
            res = one_run(diag, args.epochs, root)
            for k in ("epoch_s", "epoch_cpu_s"):
                data[key][k] += res[k]
            for k in ("fit_s", "fit_cpu_s"):
                data[key][k].append(res[k])
            if diag:
                hook_share.append(100 * res["hooks_cpu_s"] / res["all_epochs_cpu_s"])
    med = {r: {k: statistics.median(v) for k, v in d.items()} for r, d in data.items()}
    over = {k: 100 * (med["fit_diagnosis"][k] / med["baseline"][k] - 1) for k in keys}
    lines = [
        "| run | s / epoch (wall) | s / epoch (CPU) | s / fit (wall) | s / fit (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in ("baseline", "fit_diagnosis"):
        m = med[r]
        lines.append(f"| {r} | {m['epoch_s']:.4f} | {m['epoch_cpu_s']:.4f} | {m['fit_s']:.3f} | {m['fit_cpu_s']:.3f} |")
    lines.append("| overhead | " + " | ".join(f"{over[k]:+.2f}%" for k in keys) + " |")
    lines.append("")
    lines.append(f"CPU time inside FitDiagnosis hooks: median {statistics.median(hook_share):.2f}% of the "
                 f"epoch CPU time (per fit: {', '.join(f'{h:.2f}%' for h in hook_share)}).")
    lines.append(f"Medians over {len(data['baseline']['epoch_s'])} epochs / {args.repeats} fits per arm, "
                 f"interleaved; first epoch of each fit excluded.")
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnosis_overhead.json").write_text(json.dumps({
        "setup": {"model": "SmallCNN(width=32, dropout=0.1)", "data": "DigitsDataModule(batch_size=64)",
                  "epochs_per_fit": args.epochs, "repeats": args.repeats, "threads": 1,
                  "first_epoch_of_each_fit_excluded": True},
        "median": med, "overhead_pct": over, "hooks_cpu_share_pct": hook_share, "raw": data,
    }, indent=2))


if __name__ == "__main__":
    main()
