"""Latency of the default mlcycle model (conf/model/cnn.yaml on digits): eager vs ONNX Runtime vs TVM.

Run: ``python benchmarks/export.py [--rounds 5] [--repeats 100] [--threads 1]``. Trains the default
backbone briefly (so the accuracy column means something), exports it with ``export_model``
(ONNX, torch.export, TVM when installed; every artifact parity-checked), then times every runtime
at batch 1/8/64 in interleaved rounds (so load from other processes hits all runtimes alike) and
reports the median over rounds of each round's median. Prints a markdown table and writes
``benchmarks/results/export.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--repeats", type=int, default=100, help="timed calls per cell per round")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per cell per round")
    ap.add_argument("--threads", type=int, default=1, help="threads for every runtime")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the default model")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.nn import functional as F  # noqa: N812

    from lightning_mlcycle import DigitsDataModule
    from lightning_mlcycle.cli.main import config_dir
    from lightning_mlcycle.export import (
        EagerRunner,
        OnnxRuntimeRunner,
        ProgramRunner,
        TvmRunner,
        export_model,
        hardware_info,
        latency_markdown,
        measure_latency,
        tvm_available,
    )
    from lightning_mlcycle.export.latency import LatencyRow, tile_batch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup()
    node = OmegaConf.load(Path(config_dir()) / "model" / "cnn.yaml").backbone
    node.num_classes, node.input_shape = dm.num_classes, list(dm.input_shape)
    model = instantiate(node)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    train_s = time.perf_counter() - t0
    x_raw, y = dm.raw_split("test")
    x = ((x_raw - dm.mean) / dm.std).numpy().astype(np.float32)
    out = Path(tempfile.mkdtemp(prefix="mlcycle_export_bench_"))
    formats = ["onnx", "pt2"] + (["tvm"] if tvm_available() else [])
    t0 = time.perf_counter()
    res = export_model(
        model,
        out,
        test_data=(x, y.numpy()),
        formats=formats,
        batch_sizes=[1],
        warmup=0,
        repeats=1,
        name="SmallCNN",
    )
    export_s = time.perf_counter() - t0

    runners = {
        ("model (eager)", "eager"): EagerRunner(model),
        ("model.pt2", "torch.export"): ProgramRunner(out / "model.pt2"),
        ("model.onnx", "onnxruntime"): OnnxRuntimeRunner(out / "model.onnx", threads=args.threads),
    }
    if "tvm" in formats:
        runners[("model_tvm.so", "tvm")] = TvmRunner(out / "model_tvm.so")
    sizes = {
        ("model (eager)", "eager"): sum(p.numel() * 4 for p in model.parameters())
        + sum(b.numel() * b.element_size() for b in model.buffers())
    }
    for key in runners:
        if key not in sizes:
            sizes[key] = (out / key[0]).stat().st_size
    acc = {k: float(np.mean(r(x).argmax(-1) == y.numpy())) for k, r in runners.items()}
    batches = [1, 8, 64]
    medians: dict[tuple[str, str, int], list[float]] = {}
    p95s: dict[tuple[str, str, int], list[float]] = {}
    mins: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for b in batches:
            batch = tile_batch(x, b)
            for (art, rt), runner in runners.items():
                t = measure_latency(
                    runner, batch, warmup=args.warmup, repeats=args.repeats, max_seconds=5.0
                )
                medians.setdefault((art, rt, b), []).append(t["median_ms"])
                p95s.setdefault((art, rt, b), []).append(t["p95_ms"])
                mins.setdefault((art, rt, b), []).append(t["min_ms"])
    rows = []
    for (art, rt, b), ms in medians.items():
        med = float(np.median(ms))
        rows.append(
            LatencyRow(
                art,
                rt,
                b,
                med,
                float(np.median(p95s[(art, rt, b)])),
                b / (med / 1000),
                args.rounds,
                int(sizes[(art, rt)]),
                acc[(art, rt)],
            )
        )
    rows.sort(key=lambda r: (r.batch_size, list(runners).index((r.artifact, r.runtime))))
    hw = hardware_info()
    table = latency_markdown(rows, hw)
    base = {r.batch_size: r.median_ms for r in rows if r.runtime == "eager"}
    best = {
        (r.artifact, r.runtime, r.batch_size): min(mins[(r.artifact, r.runtime, r.batch_size)])
        for r in rows
    }
    table += "\n\nBest case (minimum over all timed calls; the machine was shared, so medians include preemption):\n\n"
    table += "| artifact | runtime | " + " | ".join(f"batch {b} min ms" for b in batches) + " |\n"
    table += "|---|---|" + "---:|" * len(batches) + "\n"
    for art, rt in runners:
        table += (
            f"| {art} | {rt} | " + " | ".join(f"{best[(art, rt, b)]:.3f}" for b in batches) + " |\n"
        )
    speed = "\n".join(
        f"- batch {r.batch_size}: {r.runtime} {base[r.batch_size] / r.median_ms:.2f}x eager"
        for r in rows
        if r.runtime != "eager"
    )
    parity = "\n".join(
        f"- {p.artifact} ({p.runtime}, {p.precision}): max abs error {p.max_abs_error:.2e}, "
        f"agreement {p.agreement:.4f}"
        for p in res.parity
    )
    text = (
        f"# Export latency: default model (SmallCNN width 32, digits 1x8x8, 10 classes)\n\n"
        f"{table}\n\nSpeed-up against eager (median latency):\n{speed}\n\n"
        f"Parity on the {len(x)} test samples:\n{parity}\n\n"
        f"Median over {args.rounds} interleaved rounds of the per-round median of {args.repeats} "
        f"timed calls after {args.warmup} warm-up calls; {args.threads} thread(s) per runtime. "
        f"Export (ONNX + torch.export{' + TVM' if 'tvm' in formats else ''}, with parity checks) "
        f"took {export_s:.1f} s; training {train_s:.1f} s. torch {torch.__version__}.\n"
    )
    print(text)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "export.json").write_text(
        json.dumps(
            {
                "hardware": hw,
                "args": vars(args),
                "rows": [r.to_dict() for r in rows],
                "parity": [p.to_dict() for p in res.parity],
                "export_s": export_s,
                "train_s": train_s,
            },
            indent=2,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
