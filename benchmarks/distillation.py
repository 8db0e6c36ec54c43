"""Same student, trained from scratch vs distilled from the default teacher, side by side.

Teacher: the default ``mlcycle`` model (SmallCNN, width 32, dropout 0.1, AdamW 3e-3, cosine, 15
epochs) trained on the full digits training split. Students: one architecture, trained for the same
number of epochs with the same optimizer and the same batches, either with cross-entropy
(``scratch``) or with :class:`DistillationModule` (``distilled``), over several seeds. The students
see only a reduced share of the training split (``--train-fraction``), the regime where a teacher's
soft targets carry information the few labels do not; with the full split and many epochs both
students approach the same accuracy on this small data set.

Run: ``python benchmarks/distillation.py`` (about 2 minutes on 2 CPU cores). Prints a Markdown
table and writes ``benchmarks/results/distillation.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightning_mlcycle import ClassificationModule, DigitsDataModule
from lightning_mlcycle.compression import DistillationModule
from lightning_mlcycle.compression._distill_eval import (
    count_parameters,
    evaluate,
    latency_ms,
    size_bytes,
)
from lightning_mlcycle.models import MLP, SmallCNN

RESULTS = Path(__file__).resolve().parent / "results"


def _trainer(epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )


def _optimizer(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)


def _student(kind: str, dm: DigitsDataModule) -> torch.nn.Module:
    if kind == "mlp":
        return MLP(dm.num_classes, dm.input_shape, hidden=(32,))
    return SmallCNN(dm.num_classes, dm.input_shape, width=4, dropout=0.0, batch_norm=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm (>= 3)")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=100, help="student epochs (both arms)")
    parser.add_argument("--train-fraction", type=float, default=0.1,
                        help="share of the training split the students see")
    parser.add_argument("--student", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--lr", type=float, default=0.003)
    args = parser.parse_args()
    if args.seeds < 3:
        parser.error("--seeds must be at least 3")
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    test_loader = dm.test_dataloader()
    example = next(iter(test_loader))[0][:1]

    t0 = time.perf_counter()
    pl.seed_everything(0, workers=True)
    teacher_backbone = SmallCNN(dm.num_classes, dm.input_shape, width=32, dropout=0.1)
    teacher = ClassificationModule(
        teacher_backbone, dm.num_classes, optimizer=_optimizer(0.003),
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.teacher_epochs),
    )
    _trainer(args.teacher_epochs).fit(teacher, datamodule=dm)
    teacher_s = time.perf_counter() - t0
    teacher_acc = evaluate(teacher_backbone, test_loader, dm.num_classes)["acc"]

    train_set = dm.train_dataloader().dataset
    n_train = len(train_set)
    rows: dict[str, dict[str, list[float]]] = {"scratch": {}, "distilled": {}}
    for seed in range(args.seeds):
        # the same reduced subset and the same initial weights for both arms of a seed
        gen = torch.Generator().manual_seed(1000 + seed)
        subset = torch.randperm(n_train, generator=gen)[: max(1, int(args.train_fraction * n_train))]
        for arm in ("scratch", "distilled"):
            pl.seed_everything(seed, workers=True)
            student = _student(args.student, dm)
            if arm == "scratch":
                module: pl.LightningModule = ClassificationModule(
                    student, dm.num_classes, optimizer=_optimizer(args.lr))
            else:
                module = DistillationModule(
                    teacher_backbone, student, input_shape=dm.input_shape, alpha=args.alpha,
                    temperature=args.temperature, optimizer=_optimizer(args.lr), cache_teacher=True)
            loader = DataLoader(Subset(train_set, subset.tolist()), batch_size=64, shuffle=True,
                                generator=torch.Generator().manual_seed(seed))
            t1 = time.perf_counter()
            _trainer(args.epochs).fit(module, train_dataloaders=loader)
            fit_s = time.perf_counter() - t1
            acc = evaluate(student, test_loader, dm.num_classes)["acc"]
            r = rows[arm]
            r.setdefault("acc", []).append(acc)
            r.setdefault("fit_s", []).append(fit_s)
            print(f"seed {seed} {arm:9s} test acc {acc:.4f}  fit {fit_s:.1f} s", flush=True)

    def stat(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    lat_teacher = latency_ms(teacher_backbone, example)
    student = _student(args.student, dm)
    lat_student = latency_ms(student, example)
    summary = {
        "config": vars(args) | {"train_samples_students": int(args.train_fraction * n_train),
                                "train_samples_teacher": n_train, "test_samples": len(test_loader.dataset)},
        "teacher": {"acc": teacher_acc, "params": count_parameters(teacher_backbone),
                    "size_bytes": size_bytes(teacher_backbone), "latency_ms": lat_teacher,
                    "fit_s": teacher_s},
    }
    for arm, r in rows.items():
        mean, sd = stat(r["acc"])
        summary[arm] = {"acc_mean": mean, "acc_std": sd, "acc": r["acc"], "params": count_parameters(student),
                        "size_bytes": size_bytes(student), "latency_ms": lat_student,
                        "fit_s_median": statistics.median(r["fit_s"])}
    gain = [d - s for d, s in zip(rows["distilled"]["acc"], rows["scratch"]["acc"], strict=True)]
    summary["gain"] = {"mean": statistics.mean(gain), "std": stat(gain)[1],
                       "wins": sum(g > 0 for g in gain), "seeds": len(gain)}

    lines = [
        f"Digits test split ({summary['config']['test_samples']} images); students: "
        f"{args.student} trained {args.epochs} epochs on {args.train_fraction:.0%} of the training split "
        f"({summary['config']['train_samples_students']} images), {args.seeds} seeds; teacher: SmallCNN(width=32) "
        f"trained {args.teacher_epochs} epochs on all {n_train}. KD: alpha={args.alpha}, T={args.temperature}. "
        "Latency: median of 50 forward passes, batch 1, CPU, 1 thread, shared 2-core machine.",
        "",
        "| model | test acc (mean ± std) | params | size (KiB) | latency (ms) | fit time (s, median) |",
        "|---|---|---|---|---|---|",
        f"| teacher | {teacher_acc:.4f} | {summary['teacher']['params']:,} | "
        f"{summary['teacher']['size_bytes'] / 1024:.1f} | {lat_teacher:.3f} | {teacher_s:.1f} |",
    ]
    for arm in ("scratch", "distilled"):
        s = summary[arm]
        lines.append(
            f"| student, {arm} | {s['acc_mean']:.4f} ± {s['acc_std']:.4f} | {s['params']:,} | "
            f"{s['size_bytes'] / 1024:.1f} | {s['latency_ms']:.3f} | {s['fit_s_median']:.1f} |"
        )
    g = summary["gain"]
    lines += ["", f"Distilled minus scratch, paired by seed: {g['mean']:+.4f} ± {g['std']:.4f} "
              f"(distilled better in {g['wins']} of {g['seeds']} seeds)."]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distillation.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
