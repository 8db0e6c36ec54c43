"""Quantization side by side: fp32 eager, fp32 ONNX Runtime, static PTQ int8, QAT int8, binarized.

Two models, each trained briefly on the bundled digits data (no download):
  * the digits CNN (``SmallCNN``, width 32) on 8x8 digits;
  * torchvision's ResNet-18 (3x3 stem for small inputs) on digits upsampled to 3x32x32.

For each: file size, median latency at batch 1 and 64 (ONNX Runtime, CPU, one intra-op thread;
the eager row uses one torch thread), and test accuracy. Int8 rows are compared with fp32 ONNX
Runtime. Targets (issue #7): int8 >= 3.5x smaller and >= 2x faster at batch 64; QAT within 0.5
point of fp32 and not worse than PTQ.

Run: ``python benchmarks/quantization.py [--quick]``. Prints a table per model, writes
``benchmarks/results/quantization.json``; the committed ``benchmarks/quantization.md`` is a copy.
The ONNX files stay in ``--workdir``; ``--retime`` times them again (interleaved, on a quieter
machine) without retraining and rewrites the JSON and the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle import ArrayDataModule, ClassificationModule, DigitsDataModule
from lightning_mlcycle._onnx import to_onnx
from lightning_mlcycle.compression import (
    QuantizationAwareTraining,
    binarize,
    quantize_static_onnx,
    save_binarized,
)
from lightning_mlcycle.compression.ptq import add_ratios, measure_onnx, quantization_table, session
from lightning_mlcycle.models import SmallCNN, resnet18

warnings.filterwarnings("ignore")
OUT = Path(__file__).parent / "results"


LIMIT: dict = {}  # limit_train_batches / limit_val_batches for a quick run on a busy machine
SHAPES: dict = {}  # model name -> input shape (for --retime)
REPEATS: dict = {}  # model name -> timed calls per variant
PROFILE = False  # --profile: per-op-type time of the ONNX variants (with --retime)


def _trainer(epochs: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, callbacks=list(callbacks), logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      num_sanity_val_steps=0, default_root_dir=tempfile.mkdtemp(), **LIMIT)


def _module(backbone, dm, lr: float) -> ClassificationModule:
    return ClassificationModule(backbone, num_classes=dm.num_classes,
                                optimizer=lambda p: torch.optim.AdamW(p, lr=lr))


@torch.no_grad()
def _eager(model, test, shape, repeats) -> dict:
    model.eval()
    correct = total = 0
    for x, y in test:
        correct += int((model(x).argmax(-1) == y).sum())
        total += int(y.numel())
    row = {"accuracy": round(correct / total, 4)} if total else {}
    for b in (1, 64):
        x = torch.randn(b, *shape)
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
        row[f"latency_b{b}_ms"] = round(statistics.median(times), 3)
    return row


def bench(name: str, dm, make_backbone, *, epochs: int, qat_epochs: int, bin_epochs: int, lr: float,
          repeats: int, workdir: Path, rounds: int = 5) -> dict:
    dm.prepare_data()
    dm.setup("fit")
    shape = tuple(dm.input_shape)
    SHAPES[name], REPEATS[name] = list(shape), repeats
    test, val = list(dm.test_dataloader()), dm.val_dataloader()
    if LIMIT.get("limit_val_batches"):
        test = test[: int(LIMIT["limit_val_batches"])]
    t0 = time.perf_counter()
    module = _module(make_backbone(dm), dm, lr)
    _trainer(epochs).fit(module, datamodule=dm)
    print(f"[{name}] fp32 trained in {time.perf_counter() - t0:.0f} s")
    fp32 = copy.deepcopy(module.backbone).eval()
    rows = {"fp32_eager": _eager(fp32, test, shape, repeats)}
    example = next(iter(val))[0][:2]
    fp32_path = to_onnx(fp32, example, workdir / f"{name}_fp32.onnx")
    rows["fp32_eager"]["size_bytes"] = sum(p.numel() * 4 for p in fp32.state_dict().values()
                                           if p.is_floating_point())
    torch.save(fp32, workdir / f"{name}_fp32.pt")  # for --retime
    rows["fp32_eager"]["path"] = str(workdir / f"{name}_fp32.pt")
    # accuracy and size here; latency later, interleaved across the variants (the machine is shared)
    measure = lambda p: {**measure_onnx(p, test, shape, batch_sizes=(), threads=1), "path": str(p)}  # noqa: E731
    rows["fp32_ort"] = measure(fp32_path)
    # static PTQ, calibrated on 8 validation batches
    t0 = time.perf_counter()
    ptq = quantize_static_onnx(fp32_path, workdir / f"{name}_int8_ptq.onnx", val, num_batches=8)
    rows["int8_ptq_ort"] = {**measure(ptq), "time_s": round(time.perf_counter() - t0, 1)}
    # QAT: fine-tune the trained model with fake quantization, convert, export
    t0 = time.perf_counter()
    qat_module = _module(copy.deepcopy(fp32).train(), dm, lr * 0.1)
    cb = QuantizationAwareTraining(freeze_observers_at=0.5)
    _trainer(qat_epochs, [cb]).fit(qat_module, datamodule=dm)
    qat = cb.export_onnx(qat_module, workdir / f"{name}_int8_qat.onnx", example)
    rows["int8_qat_ort"] = {**measure(qat), "time_s": round(time.perf_counter() - t0, 1)}
    # binarized: inner layers +-1, first/last fp32, fine-tuned; size is the bit-packed file
    t0 = time.perf_counter()
    bin_module = _module(binarize(fp32).train(), dm, lr)  # Lightning keeps sub-module modes: train it
    _trainer(bin_epochs).fit(bin_module, datamodule=dm)
    bnet = bin_module.backbone.eval()
    info = save_binarized(bnet, workdir / f"{name}_binarized.pt")
    brow = measure(to_onnx(bnet, example, workdir / f"{name}_binarized.onnx"))
    brow["size_bytes"] = info["file_bytes"]  # what ships: packed bits (ORT runs it in fp32)
    brow["time_s"] = round(time.perf_counter() - t0, 1)
    rows["binarized_ort"] = brow
    _interleaved_latency(rows, shape, repeats, rounds=rounds)
    add_ratios(rows, baseline="fp32_ort")
    print(f"\n## {name}\n\n{quantization_table(rows)}\n")
    return rows


def _interleaved_latency(rows: dict, shape: tuple, repeats: int, rounds: int = 5) -> None:
    """Median latency per ONNX variant, timed in alternating rounds so load spikes hit all alike."""
    import numpy as np

    sessions = {n: session(r["path"], threads=1) for n, r in rows.items() if str(r.get("path", "")).endswith(".onnx")}
    for b in (1, 64):
        x = np.random.default_rng(0).standard_normal((b, *shape)).astype(np.float32)
        times: dict[str, list[float]] = {n: [] for n in sessions}
        for s in sessions.values():
            s.run(None, {s.get_inputs()[0].name: x})
        for _ in range(rounds):
            for n, s in sessions.items():
                feed = {s.get_inputs()[0].name: x}
                for _ in range(max(1, repeats // rounds)):
                    t0 = time.perf_counter()
                    s.run(None, feed)
                    times[n].append((time.perf_counter() - t0) * 1e3)
        for n, t in times.items():
            rows[n][f"latency_b{b}_ms"] = round(statistics.median(t), 3)


def _digits_32() -> ArrayDataModule:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return ArrayDataModule(x.numpy(), d.target, batch_size=64, leakage="ignore")


def op_profile(path: str, shape: tuple, batch: int = 64, runs: int = 50) -> dict[str, float]:
    """Median microseconds per op type of one ONNX Runtime run (its own profiler, one thread)."""
    import collections

    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.enable_profiling = 1, True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort_profile_")) / "run")  # not in the cwd
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {sess.get_inputs()[0].name: x})
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    per_node: dict = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"]["op_name"], e["name"])].append(e["dur"])
    per_op: dict[str, float] = collections.defaultdict(float)
    for (op, _), durs in per_node.items():
        per_op[op] += statistics.median(durs)
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def retime(out: str, rounds: int) -> dict:
    """Re-measure the latency of the ONNX files a previous run left, keeping its other columns."""
    data = json.loads((OUT / f"{out}.json").read_text())
    for name, rows in data["results"].items():
        shape = tuple(data["meta"]["shapes"][name])
        repeats = data["meta"]["repeats"][name]
        eager = rows.get("fp32_eager", {}).get("path")
        if eager:  # the fp32 model saved as a whole module: time eager torch in the same rounds
            model = torch.load(eager, weights_only=False).eval()
            rows["fp32_eager"].update({k: v for k, v in _eager(model, [], shape, repeats).items()
                                       if k.startswith("latency")})
        _interleaved_latency(rows, shape, repeats, rounds=rounds)  # times the rows with an .onnx path
        add_ratios(rows, baseline="fp32_ort")
        print(f"\n## {name}\n\n{quantization_table(rows)}\n")
        if PROFILE:
            data.setdefault("op_profile_b64_us", {})[name] = prof = {
                k: op_profile(rows[k]["path"], shape) for k in ("fp32_ort", "int8_ptq_ort", "int8_qat_ort") if k in rows}
            for k, ops in prof.items():
                print(f"{k}: " + ", ".join(f"{op} {us:.0f} us" for op, us in ops.items()))
    data["meta"]["retimed"] = True
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats")
    parser.add_argument("--models", default="cnn,resnet18")
    parser.add_argument("--limit-batches", type=int, default=0,
                        help="train/val/test on this many batches per epoch (a busy machine)")
    parser.add_argument("--out", default="quantization", help="name of the JSON in benchmarks/results/")
    parser.add_argument("--workdir", default=None, help="where the model files are written (default: a temp dir)")
    parser.add_argument("--retime", action="store_true",
                        help="only re-measure latency of the files of the last run named --out")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--profile", action="store_true", help="with --retime: time per op type at batch 64")
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.retime:
        torch.set_num_threads(1)
        data = retime(args.out, args.rounds)
        (OUT / f"{args.out}.json").write_text(json.dumps(data, indent=2))
        return
    if args.limit_batches:
        LIMIT.update(limit_train_batches=args.limit_batches, limit_val_batches=args.limit_batches)
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_quant_"))
    workdir.mkdir(parents=True, exist_ok=True)
    q = args.quick
    results = {}
    if "cnn" in args.models:
        results["digits_cnn"] = bench(
            "digits_cnn", DigitsDataModule(batch_size=64), lambda dm: SmallCNN(dm.num_classes, dm.input_shape, width=32),
            epochs=4 if q else 15, qat_epochs=1 if q else 3, bin_epochs=2 if q else 10, lr=3e-3,
            repeats=10 if q else 30, workdir=workdir)
    if "resnet18" in args.models:
        results["resnet18_32x32"] = bench(
            "resnet18_32x32", _digits_32(), lambda dm: resnet18(dm.num_classes, dm.input_shape),
            epochs=1 if q else 3, qat_epochs=1, bin_epochs=1 if q else 2, lr=1e-3,
            repeats=3 if q else 10, workdir=workdir)
    meta = {"machine": "2 shared CPU cores (other jobs running), ONNX Runtime CPU, 1 thread",
            "torch": torch.__version__}
    meta["limit_batches"] = args.limit_batches
    meta["quick"] = q
    meta["shapes"] = SHAPES
    meta["repeats"] = REPEATS
    (OUT / f"{args.out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = ["# Quantization benchmark", "", f"{meta['machine']}; torch {meta['torch']}. Latency: median ms. "
          "Ratios vs fp32 ONNX Runtime. Binarized size = bit-packed file.", ""]
    for name, rows in results.items():
        md += [f"## {name}", "", quantization_table(rows), ""]
    print("\n".join(md))
    print(f"JSON: {OUT / f'{args.out}.json'}")


if __name__ == "__main__":
    main()
