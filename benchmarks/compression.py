"""Compression benchmark: Lightning's ModelPruning vs ours, channel pruning, low rank, side by side.

Run: ``python benchmarks/compression.py --train-resnet`` (~15 minutes on one 2-core CPU thread;
without ``--train-resnet`` resnet18 is only sized and timed).

Protocol (one run, same data split, same seed, same optimizer for every row):
1. Train the dense model (``--epochs``; resnet18: ``--resnet-epochs`` with a cosine schedule, so
   a few epochs reach a converged model on a CPU).
2. From those weights, fine-tune each variant for ``--fine-tune-epochs`` epochs (resnet18:
   ``--resnet-fine-tune-epochs``):
   - ``lightning ModelPruning``: ``l1_unstructured``, global, 90% at the first epoch, Lightning's
     defaults otherwise (lottery-ticket reset on, made permanent at the end), on the same
     Linear/Conv weights as ours;
   - ``ours one-shot`` / ``ours gradual``: ``MagnitudePruning(0.9)`` one-shot, and along the
     Zhu & Gupta ramp with the last epoch fine-tuning only;
   - ``structured 50%``: ``StructuredPruning(ratio=0.5)`` with the callback's defaults (3 rounds
     2 epochs apart, magnitude importance, a cosine learning-rate segment after every round; half
     the channels of every layer) for ``--structured-epochs`` epochs. On the digits CNN this row
     is repeated for every seed of ``--seeds`` (a fresh dense model each): mean and min of the
     accuracy change, since the test split has 268 images (one image = 0.37 points);
   - ``low rank 50%``: ``LowRankFactorization(compression=0.5, allocation="global")`` (half the
     Linear/Conv weights; classifier kept whole).
   resnet18 skips the gradual row (the one-shot row is the one compared with Lightning).
3. Resume check (digits CNN): save a checkpoint after each 90% run and train one more epoch from
   it; report the sparsity after resuming.
4. Latency: eager CPU, median of interleaved rounds (every model timed in each round), batch 1
   and batch 32, at the training input size; resnet18 also at 3x32x32. Then the same models
   exported to ONNX (``export_onnx``, as ``mlcycle``'s export stage ships them) and run in ONNX
   Runtime with the same thread count (``ort_*`` columns; ``--no-onnx`` skips them).

Without ``--train-resnet`` resnet18 rows report size, MACs and latency only; accuracies are "n/a".
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
from lightning_mlcycle.compression._report import (
    accuracy,
    count_macs,
    count_params,
    interleaved_latency,
)
from lightning_mlcycle.compression.structured_pruning import output_layer
from lightning_mlcycle.export.exporters import export_onnx
from lightning_mlcycle.export.runtimes import OnnxRuntimeRunner
from lightning_mlcycle.models import ClassificationModule
from lightning_mlcycle.models.zoo import SmallCNN, resnet18

RESULTS = Path(__file__).resolve().parent / "results"


def _module(backbone: nn.Module, lr: float, cosine_epochs: int | None = None) -> ClassificationModule:
    scheduler = (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cosine_epochs)) \
        if cosine_epochs else None
    return ClassificationModule(backbone, num_classes=10, optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
                                scheduler=scheduler)


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


def _ort_latency(models: dict[str, nn.Module], shape: tuple, args: argparse.Namespace, repeats: int,
                 root: str) -> dict[int, dict[str, float]]:
    """Median ms per model in ONNX Runtime (exported as the export stage does), batch 1 and 32."""
    runners = {}
    for i, (label, m) in enumerate(models.items()):
        path = export_onnx(copy.deepcopy(m).eval(), torch.zeros(2, *shape), Path(root) / f"v{i}.onnx")
        runners[label] = OnnxRuntimeRunner(path, threads=args.threads)
    return {b: interleaved_latency(runners, torch.zeros(b, *shape).numpy(), rounds=args.rounds,
                                   repeats=max(repeats // (4 if b > 1 else 1), 1)) for b in (1, 32)}


def _structured() -> StructuredPruning:
    # the callback's defaults: 3 rounds 2 epochs apart, magnitude, cosine segments
    return StructuredPruning(0.5, module="backbone")


def _train_dense(build: Any, dm: DigitsDataModule, epochs: int, lr: float, cosine: bool, seed: int,
                 root: str) -> ClassificationModule:
    pl.seed_everything(seed, verbose=False)
    dense = _module(build(), lr, epochs if cosine else None)
    _fit(dense, dm, epochs, [], root)
    return dense


def structured_over_seeds(build: Any, dm: DigitsDataModule, args: argparse.Namespace,
                          main_rows: dict | None = None) -> dict:
    """The structured 50% row for each seed: a fresh dense model, then the pruned fine-tune."""
    root = tempfile.mkdtemp(prefix="bench_seeds_")
    test = dm.test_dataloader()
    per_seed = {}
    for seed in args.seeds:
        if main_rows and seed == args.seed:  # the main table already ran this seed
            before, after = main_rows["dense"]["accuracy"], main_rows["structured 50% channels"]["accuracy"]
            per_seed[seed] = {"dense": before, "structured": after,
                              "delta_points": round(100 * (after - before), 2)}
            continue
        dense = _train_dense(build, dm, args.epochs, args.lr, False, seed, root)
        torch.manual_seed(seed)
        module = _module(copy.deepcopy(dense.backbone).train(), args.ft_lr)
        _fit(module, dm, args.structured_epochs, [_structured()], root)
        before, after = accuracy(dense.backbone, test), accuracy(module.backbone, test)
        per_seed[seed] = {"dense": round(before, 4), "structured": round(after, 4),
                          "delta_points": round(100 * (after - before), 2)}
    deltas = [r["delta_points"] for r in per_seed.values()]
    return {"per_seed": per_seed, "mean_delta_points": round(sum(deltas) / len(deltas), 2),
            "min_delta_points": min(deltas), "epochs": args.structured_epochs}


def bench_model(name: str, build: Any, dm: DigitsDataModule, args: argparse.Namespace, train: bool) -> dict:
    root = tempfile.mkdtemp(prefix=f"bench_{name}_")
    resnet = name == "resnet18"
    epochs = args.resnet_epochs if resnet else args.epochs
    t0 = time.perf_counter()
    if train:
        dense = _train_dense(build, dm, epochs, args.lr, resnet, args.seed, root)
    else:
        torch.manual_seed(args.seed)
        dense = _module(build(), args.lr)
    train_s = time.perf_counter() - t0
    test = dm.test_dataloader()
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {"dense": dense.backbone}
    shape = tuple(dm.input_shape)

    ft = args.resnet_fine_tune_epochs if resnet else args.fine_tune_epochs

    def variant(label: str, callbacks_fn: Any, epochs: int = ft) -> pl.Trainer:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {label}", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        # train mode: Lightning keeps the modes it is given, and the latency/report code puts the
        # dense model in eval mode (BatchNorm statistics would stay frozen during the fine-tune)
        module = _module(copy.deepcopy(dense.backbone).train(), args.ft_lr)
        trainer = _fit(module, dm, epochs, callbacks_fn(module), root)
        models[label] = module.backbone
        return trainer

    if train:
        lit = variant("lightning ModelPruning 90%", lambda m: [_lightning_pruning(m)])
        one = variant("ours one-shot 90%", lambda m: [MagnitudePruning(0.9, schedule="one_shot")])
        if not resnet:
            variant("ours gradual 90%", lambda m: [MagnitudePruning(
                0.9, schedule="gradual", every_n_steps=5, fine_tune_epochs=max(ft // 3, 1))])
    example = torch.zeros(1, *shape)
    # structured and low rank change the architecture: with no training they are applied directly
    head = output_layer(dense.backbone.eval(), example)
    head_name = next(n for n, m in dense.backbone.named_modules() if m is head)
    if train:
        variant("structured 50% channels", lambda m: [_structured()], args.structured_epochs)
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
    # resnet18 is ~20x the CNN's cost per pass: fewer passes per round keep the run short
    repeats = max(args.repeats // 4, 1) if resnet else args.repeats
    lat1 = interleaved_latency(models, example, rounds=args.rounds, repeats=repeats)
    lat32 = interleaved_latency(models, torch.zeros(32, *shape), rounds=args.rounds,
                                repeats=max(repeats // 4, 1))
    lat_big: dict[str, float] = {}
    if name == "resnet18":  # the usual CIFAR-size input, same models rebuilt for 3 channels
        big = {"dense": resnet18(10, (3, 32, 32))}
        s = copy.deepcopy(big["dense"]).eval()
        structured_prune(s, torch.zeros(1, 3, 32, 32), ratio=0.5)
        big["structured 50% channels"] = s
        lat_big = interleaved_latency(big, torch.zeros(1, 3, 32, 32), rounds=args.rounds, repeats=repeats)
    ort = {} if args.no_onnx else _ort_latency(models, shape, args, repeats, root)
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
        for b, lat in ort.items():
            rows[label][f"ort_b{b}_ms"] = round(lat[label], 3)
            rows[label][f"ort_speedup_b{b}"] = round(lat["dense"] / lat[label], 2)
        if label in lat_big:
            rows[label]["latency_3x32x32_b1_ms"] = round(lat_big[label], 3)
            rows[label]["speedup_3x32x32_b1"] = round(lat_big["dense"] / lat_big[label], 2)
    if train:
        for label in rows:
            rows[label]["accuracy_delta"] = round(rows[label]["accuracy"] - rows["dense"]["accuracy"], 4)
    if train and not resnet:  # the resume check needs the model once: the digits CNN
        rows["lightning ModelPruning 90%"]["sparsity_after_resume"] = _resume(
            lit, dense.backbone, dm, root, ours=False, args=args)
        rows["ours one-shot 90%"]["sparsity_after_resume"] = _resume(
            one, dense.backbone, dm, root, ours=True, args=args)
    return {"rows": rows, "dense_train_s": round(train_s, 1), "dense_epochs": epochs if train else 0,
            "fine_tune_epochs": ft, "input_shape": list(shape), "trained": train}


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
    fresh = _module(copy.deepcopy(dense).train(), args.ft_lr)
    cb = MagnitudePruning(0.9, schedule="one_shot") if ours else _lightning_pruning(fresh)
    _fit(fresh, dm, args.fine_tune_epochs + 1, [cb], root, ckpt_path=path)
    return round(_sparsity(fresh.backbone), 4)


def _table(results: dict) -> str:
    cols = ["accuracy", "accuracy_delta", "sparsity", "sparsity_after_resume", "params",
            "linear_conv_weights_vs_dense", "macs", "latency_b1_ms", "speedup_b1", "latency_b32_ms",
            "speedup_b32", "latency_3x32x32_b1_ms", "speedup_3x32x32_b1", "ort_b1_ms", "ort_speedup_b1",
            "ort_b32_ms", "ort_speedup_b32"]
    out = []
    for model, res in results["models"].items():
        rows = res["rows"]
        used = [c for c in cols if any(c in r for r in rows.values())]
        out.append(f"\n### {model} (input {res['input_shape']}, trained: {res['trained']}, dense epochs "
                   f"{res.get('dense_epochs')}, fine-tune epochs {res.get('fine_tune_epochs')}, structured "
                   f"epochs {results['structured_epochs']})\n")
        out.append("| variant | " + " | ".join(used) + " |")
        out.append("|---" * (len(used) + 1) + "|")
        for label, r in rows.items():
            cells = ["n/a" if r.get(c, "") is None else str(r.get(c, "")) for c in used]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = results.get("structured_over_seeds")
    if seeds:
        out.append(f"\n### cnn, structured 50% channels over seeds ({seeds['epochs']} epochs each)\n")
        out.append("| seed | dense accuracy | structured accuracy | change (points) |")
        out.append("|---|---|---|---|")
        for seed, r in seeds["per_seed"].items():
            out.append(f"| {seed} | {r['dense']} | {r['structured']} | {r['delta_points']} |")
        out.append(f"| mean / min | | | {seeds['mean_delta_points']} / {seeds['min_delta_points']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"], choices=["cnn", "resnet18"])
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=8, help="epochs of every compressed variant")
    parser.add_argument("--structured-epochs", type=int, default=8,
                        help="epochs of the structured variant (3 rounds 2 epochs apart, then fine-tuning)")
    parser.add_argument("--resnet-epochs", type=int, default=8, help="resnet18 dense epochs (cosine schedule)")
    parser.add_argument("--resnet-fine-tune-epochs", type=int, default=3,
                        help="epochs of resnet18's magnitude and low-rank variants")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the repeated structured row on the digits CNN (none: skip it)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the dense training")
    parser.add_argument("--ft-lr", type=float, default=1e-3, help="AdamW learning rate of every fine-tune")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--repeats", type=int, default=40, help="forward passes per latency round")
    parser.add_argument("--no-onnx", action="store_true",
                        help="skip the ONNX Runtime latency columns")
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
                               "structured_epochs": args.structured_epochs, "models": {}}
    for name in args.models:
        train = name == "cnn" or args.train_resnet
        results["models"][name] = bench_model(name, builders[name], dm, args, train)
    if "cnn" in args.models and args.seeds:
        results["structured_over_seeds"] = structured_over_seeds(builders["cnn"], dm, args,
                                                                 results["models"]["cnn"]["rows"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compression.json").write_text(json.dumps(results, indent=2))
    print(_table(results))
    return results


if __name__ == "__main__":
    main()
