"""Latency of the digits CNN at channel counts that are and are not multiples of 8.

Why ``StructuredPruning(round_to=8)`` exists: vectorized kernels (ONNX Runtime's NCHWc
convolutions, MKL-DNN) work on blocks of 8 floats on AVX2, so a pruned layer with 27 channels can
be slower than the dense one with 32. Every width is built untrained (latency does not depend on
the values), exported with ``export_onnx`` as ``mlcycle``'s export stage does, and timed in eager
PyTorch and ONNX Runtime, the median of interleaved rounds (every model in every round).

    OMP_NUM_THREADS=1 python benchmarks/channel_alignment.py          # ~1 minute

Writes ``benchmarks/results/channel_alignment.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lightning_mlcycle.compression._report import interleaved_latency
from lightning_mlcycle.export.exporters import export_onnx
from lightning_mlcycle.export.runtimes import OnnxRuntimeRunner
from lightning_mlcycle.models.zoo import SmallCNN

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 27, 24, 21, 16, 13, 8],
                        help="first-block widths of the CNN (the other blocks have twice as many)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--repeats", type=int, default=100, help="passes per round at batch 1")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="channel_alignment_"))
    eager = {w: SmallCNN(10, (1, 8, 8), width=w).eval() for w in args.widths}
    ort = {w: OnnxRuntimeRunner(export_onnx(m, torch.zeros(2, 1, 8, 8), tmp / f"w{w}.onnx"),
                                threads=args.threads) for w, m in eager.items()}
    rows: dict[str, dict[int, float]] = {}
    for b in args.batches:
        x = torch.zeros(b, 1, 8, 8)
        repeats = max(args.repeats // (1 if b == 1 else 4), 1)
        rows[f"ONNX Runtime, batch {b}"] = interleaved_latency(ort, x.numpy(), rounds=args.rounds,
                                                               repeats=repeats)
        rows[f"eager PyTorch, batch {b}"] = interleaved_latency(eager, x, rounds=args.rounds,
                                                                repeats=repeats)
    results = {"threads": args.threads, "torch": torch.__version__, "widths": args.widths,
               "median_ms": {k: {str(w): v for w, v in r.items()} for k, r in rows.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "channel_alignment.json").write_text(json.dumps(results, indent=2))
    print("| median ms \\ first-block width (others 2x) | " + " | ".join(map(str, args.widths)) + " |")
    print("|---" * (len(args.widths) + 1) + "|")
    for label, r in rows.items():
        print(f"| {label} | " + " | ".join(f"{r[w]:.3f}" for w in args.widths) + " |")
    return results


if __name__ == "__main__":
    main()
