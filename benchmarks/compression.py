"""Compression benchmark: Lightning's ModelPruning vs ours, channel pruning, low rank, side by side.

Run: ``python benchmarks/compression.py`` (add ``--train-resnet`` on a machine with time to spare).

Protocol (one run, same data split, same seed, same optimizer for every row):
1. Train the dense model (``--epochs``).
2. From those weights, fine-tune each variant for ``--fine-tune-epochs`` epochs:
   - ``lightning ModelPruning``: ``l1_unstructured``, global, 90% at the first epoch, Lightning's
     defaults otherwise (lottery-ticket reset on, made permanent at the end), on the same
     Linear/Conv weights as ours;
   - ``ours one-shot`` / ``ours gradual``: ``MagnitudePruning(0.9)`` one-shot, and along the
     Zhu & Gupta ramp with the last epoch fine-tuning only;
   - ``structured 50%``: ``StructuredPruning(ratio=0.5, importance="taylor")`` (half the channels
     of every layer);
   - ``low rank 50%``: ``LowRankFactorization(compression=0.5, allocation="global")`` (half the
     Linear/Conv weights; classifier kept whole).
3. Resume check (digits CNN): save a checkpoint after each 90% run and train one more epoch from
   it; report the sparsity after resuming.
4. Latency: eager CPU, median of interleaved rounds (every model timed in each round), batch 1
   and batch 32, at the training input size; resnet18 also at 3x32x32.

Without ``--train-resnet`` resnet18 rows report size, MACs and latency only (training resnet18
for several epochs on a 2-core shared CPU does not fit a benchmark run); accuracies are "n/a".
Writes ``benchmarks/results/compression.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from lightning_mlcycle import DigitsDataModule
from lightning_mlcycle.compression import (
    LowRankFactorization,
    MagnitudePruning,
    StructuredPruning,
    structured_prune,
)
from lightning_mlcycle.compression._report import accuracy, count_macs, count_params, interleaved_latency
from lightning_mlcycle.compression.structured_pruning import output_layer
from lightning_mlcycle.models import ClassificationModule
from lightning_mlcycle.models.zoo import SmallCNN, resnet18

RESULTS = Path(__file__).resolve().parent / "results"


def _module(backbone: nn.Module, lr: float) -> ClassificationModule:
    return ClassificationModule(backbone, num_classes=10, optimizer=lambda p: torch.optim.AdamW(p, lr=lr))


def _fit(module: ClassificationModule, dm: DigitsDataModule, epochs: int, callbacks: list, root: str,
         ckpt_path: str | None = None) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _sparsity(model: nn.Module) -> float:
    ws = [getattr(m, "weight_orig", m.weight) * getattr(m, "weight_mask", 1) for m, _ in _weights(model)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / total


def _latency(models: dict[str, nn.Module], example: torch.Tensor, rounds: int, repeats: int) -> dict[str, float]:
    """Median ms per model, timed in interleaved rounds so load changes hit every model alike."""
    return interleaved_latency(models, example, rounds=rounds, repeats=repeats)


def bench_model(name: str, build: Any, dm: DigitsDataModule, args: argparse.Namespace, train: bool) -> dict:
    torch.manual_seed(args.seed)
    root = tempfile.mkdtemp(prefix=f"bench_{name}_")
    dense = _module(build(), args.lr)
    t0 = time.perf_counter()
    if train:
        _fit(dense, dm, args.epochs, [], root)
    train_s = time.perf_counter() - t0
    test = dm.test_dataloader()
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {"dense": dense.backbone}
    shape = tuple(dm.input_shape)

    def variant(label: str, callbacks_fn: Any) -> pl.Trainer:
        torch.manual_seed(args.seed)
        module = _module(copy.deepcopy(dense.backbone), args.ft_lr)
        trainer = _fit(module, dm, args.fine_tune_epochs, callbacks_fn(module), root)
        models[label] = module.backbone
        return trainer

    ft = args.fine_tune_epochs
    if train:
        lit = variant("lightning ModelPruning 90%", lambda m: [_lightning_pruning(m)])
        one = variant("ours one-shot 90%", lambda m: [MagnitudePruning(0.9, schedule="one_shot")])
        variant("ours gradual 90%", lambda m: [MagnitudePruning(0.9, schedule="gradual", every_n_steps=5,
                                                                fine_tune_epochs=max(ft // 3, 1))])
    example = torch.zeros(1, *shape)
    # structured and low rank change the architecture: with no training they are applied directly
    head = output_layer(dense.backbone.eval(), example)
    head_name = next(n for n, m in dense.backbone.named_modules() if m is head)
    if train:
        variant("structured 50% channels", lambda m: [StructuredPruning(0.5, module="backbone",
                                                                        importance="taylor")])
        variant("low rank 50% weights", lambda m: [LowRankFactorization(
            compression=0.5, module="backbone", exclude=[head_name], allocation="global")])
    else:
        s = copy.deepcopy(dense.backbone).eval()
        structured_prune(s, example, ratio=0.5)
        models["structured 50% channels"] = s
        lr_mod = _module(copy.deepcopy(dense.backbone), args.lr)
        cb = LowRankFactorization(compression=0.5, module="backbone", exclude=[head_name], allocation="global")
        cb.transform(lr_mod.backbone)
        models["low rank 50% weights"] = lr_mod.backbone

    factor_types = (nn.Linear, nn.Conv2d)
    dense_lc = sum(m.weight.numel() for m in dense.backbone.modules() if isinstance(m, factor_types))
    lat1 = _latency(models, example, args.rounds, args.repeats)
    lat32 = _latency(models, torch.zeros(32, *shape), args.rounds, max(args.repeats // 4, 1))
    lat_big: dict[str, float] = {}
    if name == "resnet18":  # the usual CIFAR-size input, same models rebuilt for 3 channels
        big = {"dense": resnet18(10, (3, 32, 32))}
        s = copy.deepcopy(big["dense"]).eval()
        structured_prune(s, torch.zeros(1, 3, 32, 32), ratio=0.5)
        big["structured 50% channels"] = s
        lat_big = _latency(big, torch.zeros(1, 3, 32, 32), args.rounds, max(args.repeats // 4, 1))
    for label, m in models.items():
        params, nonzero = count_params(m)
        lc = sum(p.numel() for mod in m.modules() if isinstance(mod, factor_types) for p in [mod.weight])
        rows[label] = {
            "accuracy": round(accuracy(m, test), 4) if train else None,
            "sparsity": round(_sparsity(m), 4),
            "params": params,
            "nonzero_params": nonzero,
            "linear_conv_weights_vs_dense": round(lc / dense_lc, 3),
            "macs": count_macs(m, example),
            "latency_b1_ms": round(lat1[label], 3),
            "latency_b32_ms": round(lat32[label], 3),
            "speedup_b1": round(lat1["dense"] / lat1[label], 2),
            "speedup_b32": round(lat32["dense"] / lat32[label], 2),
        }
        if label in lat_big:
            rows[label]["latency_3x32x32_b1_ms"] = round(lat_big[label], 3)
            rows[label]["speedup_3x32x32_b1"] = round(lat_big["dense"] / lat_big[label], 2)
    if train:
        for label in rows:
            rows[label]["accuracy_delta"] = round(rows[label]["accuracy"] - rows["dense"]["accuracy"], 4)
        rows["lightning ModelPruning 90%"]["sparsity_after_resume"] = _resume(
            lit, dense.backbone, dm, root, ours=False, args=args)
        rows["ours one-shot 90%"]["sparsity_after_resume"] = _resume(
            one, dense.backbone, dm, root, ours=True, args=args)
    return {"rows": rows, "dense_train_s": round(train_s, 1), "input_shape": list(shape), "trained": train}


def _lightning_pruning(module: nn.Module) -> ModelPruning:
    # 90% of the same Linear/Conv weights as ours, at the first epoch; Lightning's defaults otherwise
    return ModelPruning("l1_unstructured", parameters_to_prune=_weights(module),
                        amount=lambda epoch: 0.9 if epoch == 0 else 0.0, use_global_unstructured=True,
                        verbose=0)


def _resume(trainer: pl.Trainer, dense: nn.Module, dm: DigitsDataModule, root: str, *, ours: bool,
            args: argparse.Namespace) -> float:
    """Checkpoint the finished 90% run, resume it for one more epoch with a fresh callback, and
    return the sparsity after (Lightning's masks are not in its checkpoints: zeros regrow)."""
    path = str(Path(root) / f"resume_{'ours' if ours else 'lightning'}.ckpt")
    trainer.save_checkpoint(path)
    fresh = _module(copy.deepcopy(dense), args.ft_lr)
    cb = MagnitudePruning(0.9, schedule="one_shot") if ours else _lightning_pruning(fresh)
    _fit(fresh, dm, args.fine_tune_epochs + 1, [cb], root, ckpt_path=path)
    return round(_sparsity(fresh.backbone), 4)


def _table(results: dict) -> str:
    cols = ["accuracy", "accuracy_delta", "sparsity", "sparsity_after_resume", "params",
            "linear_conv_weights_vs_dense", "macs", "latency_b1_ms", "speedup_b1", "latency_b32_ms",
            "speedup_b32", "latency_3x32x32_b1_ms", "speedup_3x32x32_b1"]
    out = []
    for model, res in results["models"].items():
        rows = res["rows"]
        used = [c for c in cols if any(c in r for r in rows.values())]
        out.append(f"\n### {model} (input {res['input_shape']}, trained: {res['trained']})\n")
        out.append("| variant | " + " | ".join(used) + " |")
        out.append("|---" * (len(used) + 1) + "|")
        for label, r in rows.items():
            cells = ["n/a" if r.get(c, "") is None else str(r.get(c, "")) for c in used]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"], choices=["cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=8, help="epochs of every compressed variant")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the dense training")
    parser.add_argument("--ft-lr", type=float, default=1e-3, help="AdamW learning rate of every fine-tune")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--repeats", type=int, default=40, help="forward passes per latency round")
    parser.add_argument("--train-resnet", action="store_true", help="also train resnet18 (slow on a CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup()
    builders = {
        "cnn": lambda: SmallCNN(10, dm.input_shape, width=32, dropout=0.1),
        "resnet18": lambda: resnet18(10, dm.input_shape),
    }
    results: dict[str, Any] = {"argv": sys.argv[1:], "torch": torch.__version__, "threads": args.threads,
                               "models": {}}
    for name in args.models:
        train = name == "cnn" or args.train_resnet
        results["models"][name] = bench_model(name, builders[name], dm, args, train)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compression.json").write_text(json.dumps(results, indent=2))
    print(_table(results))
    return results


if __name__ == "__main__":
    main()
