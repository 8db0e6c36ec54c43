"""Training throughput: default loader/thread settings vs the ThroughputTuner's choice, side by side.

Scenarios (all on the bundled digits data, batch 64, validation off so only training is timed):

* ``cnn``: the default ``mlcycle`` model (SmallCNN, width 32) on the 8x8 digits;
* ``mlp``: the MLP config (128-64) on the same data: a tiny model;
* ``decode``: SmallCNN on 512 training digits upscaled to 32x32 and stored as PNG bytes, decoded
  with PIL and augmented (``RandomAffine``, ``GaussianBlur``) in ``__getitem__``: a costly,
  CPU-bound loader, as with real image files.

Each repeat trains the same model twice from the same seed: once with the settings a user gets
by default (``num_workers=0``, torch's default thread count) and once with ``ThroughputTuner``
added; samples/s is measured over the training epochs (worker start-up included), the tuner's own
search time is reported apart. Arms alternate within each repeat and the table shows medians,
because the machine may be shared.

Run: ``python benchmarks/throughput.py`` (a few minutes on 2 CPU cores). Prints a Markdown table
and writes ``benchmarks/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_mlcycle import ClassificationModule, DigitsDataModule
from lightning_mlcycle.models import MLP, SmallCNN
from lightning_mlcycle.tuning import ThroughputTuner

RESULTS = Path(__file__).resolve().parent / "results"


class PngDigits(Dataset):
    """Digits upscaled to 32x32 and stored as PNG bytes; decoded and augmented per sample."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        from PIL import Image

        self.y = y
        self.mean, self.std = float(mean.mean()), float(std.mean())
        self.png: list[bytes] = []
        for img in x:
            arr = (img[0].numpy() / 16.0 * 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).resize((32, 32), Image.BILINEAR).save(buf, format="PNG")
            self.png.append(buf.getvalue())
        from torchvision.transforms import v2

        self.augment = v2.Compose([v2.RandomAffine(degrees=10, translate=(0.1, 0.1)),
                                   v2.GaussianBlur(3)])

    def __len__(self) -> int:
        return len(self.png)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image
        from torchvision.transforms.v2 import functional as tvf

        img = Image.open(io.BytesIO(self.png[i]))
        x = tvf.to_dtype(tvf.pil_to_tensor(img), torch.float32, scale=True) * 16.0
        x = self.augment(x)
        return (x - self.mean) / self.std, self.y[i]


class DecodingDigits(DigitsDataModule):
    """Digits whose training split is decoded from PNG and augmented in ``__getitem__``."""

    def setup(self, stage: str | None = None) -> None:
        fresh = not self._datasets
        super().setup(stage)
        if fresh:
            # 512 training images keep the slow default arm within minutes
            x, y = self.raw_split("train")
            self._datasets["train"] = PngDigits(x[:512], y[:512], self.mean, self.std)


class EpochTimer(pl.Callback):
    """Wall time and samples of every training epoch."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.samples = 0
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.samples += int(batch[1].shape[0])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._t0


class FitStartTimer(pl.Callback):
    """Time from the start of ``fit`` to the first training epoch (the tuner's search)."""

    def __init__(self) -> None:
        self.t_setup = 0.0
        self.seconds = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.t_setup = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.t_setup


def _build(scenario: str) -> tuple[DigitsDataModule, ClassificationModule]:
    dm_cls = DecodingDigits if scenario == "decode" else DigitsDataModule
    dm = dm_cls(batch_size=64, leakage="ignore")
    dm.setup()
    shape = (1, 32, 32) if scenario == "decode" else dm.input_shape
    if scenario == "mlp":
        backbone: torch.nn.Module = MLP(10, shape, hidden=(128, 64), dropout=0.1)
    else:
        backbone = SmallCNN(10, shape, width=32, dropout=0.1)
    model = ClassificationModule(backbone, num_classes=10,
                                 optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    return dm, model


def run_arm(scenario: str, tuned: bool, epochs: int, default_threads: int, max_time: float) -> dict[str, Any]:
    torch.set_num_threads(default_threads)
    pl.seed_everything(0, workers=True)
    dm, model = _build(scenario)
    timer, start = EpochTimer(), FitStartTimer()
    callbacks: list[pl.Callback] = [start, timer]
    tuner = ThroughputTuner(max_time=max_time) if tuned else None
    if tuner is not None:
        callbacks.insert(0, tuner)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=dm)
    out = {
        "samples_per_s": timer.samples / timer.seconds,
        "fit_start_s": start.seconds,
        "settings": f"workers={dm.num_workers} threads={torch.get_num_threads()}"
        + (" persistent" if dm.persistent_workers else ""),
    }
    if tuner is not None and tuner.result is not None:
        out["settings"] = tuner.result.best.describe()
        out["table"] = tuner.result.table()
        out["estimated_speedup"] = tuner.result.speedup
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per scenario")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per arm")
    parser.add_argument("--max-time", type=float, default=30.0, help="the tuner's time budget (s)")
    parser.add_argument("--scenarios", nargs="+", default=["cnn", "mlp", "decode"])
    parser.add_argument("--out", type=Path, default=RESULTS / "throughput.json", help="JSON results file")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    default_threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    for scenario in args.scenarios:
        runs: dict[str, list[dict[str, Any]]] = {"default": [], "tuned": []}
        for r in range(args.repeats):
            order = ("default", "tuned") if r % 2 == 0 else ("tuned", "default")
            for arm in order:
                res = run_arm(scenario, arm == "tuned", args.epochs, default_threads, args.max_time)
                runs[arm].append(res)
                print(f"{scenario} repeat {r} {arm}: {res['samples_per_s']:.0f} samples/s ({res['settings']})",
                      flush=True)
        d = statistics.median(x["samples_per_s"] for x in runs["default"])
        t = statistics.median(x["samples_per_s"] for x in runs["tuned"])
        choices = sorted({x["settings"] for x in runs["tuned"]})
        rows.append({
            "scenario": scenario,
            "default_settings": runs["default"][0]["settings"],
            "default_samples_per_s": d,
            "tuned_settings": choices,
            "tuned_samples_per_s": t,
            "speedup": t / d,
            "tuning_time_s": statistics.median(x["fit_start_s"] for x in runs["tuned"]),
            "runs": runs,
        })
    lines = [
        f"Training throughput, samples/s (median of {args.repeats} alternating repeats, {args.epochs} epochs "
        f"each, tuner max_time={args.max_time:g} s, {os.cpu_count()} CPU cores, machine shared with other jobs)",
        "",
        "| scenario | default settings | default samples/s | tuner's choice | tuned samples/s | speed-up | tuning time s |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['scenario']} | {row['default_settings']} | {row['default_samples_per_s']:.0f} | "
            f"{'; '.join(row['tuned_settings'])} | {row['tuned_samples_per_s']:.0f} | {row['speedup']:.2f}x | "
            f"{row['tuning_time_s']:.1f} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    for row in rows:
        print(f"\nTuner table ({row['scenario']}, first tuned run):\n{row['runs']['tuned'][0].get('table', '')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": {**vars(args), "out": str(args.out)}, "rows": rows, "table": table}
    args.out.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
