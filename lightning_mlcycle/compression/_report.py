"""Size, cost, speed and accuracy of a model, before and after compression (private).

Shared by the pruning, low-rank and compact-convolution stages and the benchmark, so every
number in ``<run>/compressed/report.md`` is measured the same way.
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: the columns of a report row, in the order the Markdown table shows them
COLUMNS: tuple[str, ...] = (
    "params",
    "nonzero_params",
    "macs",
    "size_bytes",
    "zipped_bytes",
    "latency_ms",
    "accuracy",
)


def count_params(model: nn.Module) -> tuple[int, int]:
    """Return ``(parameters, non-zero parameters)`` of ``model``.

    Example:
        >>> lin = nn.Linear(4, 2, bias=False)
        >>> _ = lin.weight.data[0].zero_()
        >>> count_params(lin)
        (8, 4)
    """
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    return int(total), int(nonzero)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (Torch-Pruning's op counter).

    Zeros inside dense weights still count: an unstructured-sparse model costs the dense MACs
    unless a sparse kernel runs it; structural pruning, low rank and compact convs reduce them.
    """
    return count_macs_params(model, example)[0]


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """MACs and parameters of one forward pass (Torch-Pruning's counter, eval mode)."""
    import torch_pruning as tp

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    finally:
        model.train(was)
    return int(macs), int(params)


def serialized_size(model: nn.Module) -> tuple[int, int]:
    """Bytes of ``torch.save(model.state_dict())`` and of the same bytes zlib-compressed.

    The compressed size is what a sparse model gains on disk or over the wire (runs of zeros
    compress), as in Han et al. 2016, "Deep Compression".
    """
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    raw = buf.getvalue()
    return len(raw), len(zlib.compress(raw, 6))


def measure_latency(
    model: nn.Module, example: torch.Tensor, *, repeats: int = 20, warmup: int = 3
) -> float:
    """Median eager CPU latency of ``model(example)`` in milliseconds (no grad, eval mode)."""
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(example)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(example)
                times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def interleaved_latency(
    models: Mapping[str, Any], example: Any, *, rounds: int = 5, repeats: int = 10
) -> dict[str, float]:
    """Median latency (ms) per model, timed in interleaved rounds.

    Every model is timed in every round, so a load spike on a shared machine hits all of them
    instead of one; compare models only with numbers from the same call. A value may be an
    ``nn.Module`` (timed in eval mode under ``torch.inference_mode``, its mode restored after) or
    any callable taking ``example`` (e.g. an ONNX Runtime runner and a NumPy batch).

    Example:
        >>> ms = interleaved_latency({"a": nn.Linear(4, 2), "b": lambda x: x * 2},
        ...                          torch.zeros(3, 4), rounds=2, repeats=2)
        >>> sorted(ms), all(v >= 0 for v in ms.values())
        (['a', 'b'], True)
    """
    times: dict[str, list[float]] = {k: [] for k in models}
    modules = {k: m for k, m in models.items() if isinstance(m, nn.Module)}
    states = {k: m.training for k, m in modules.items()}
    try:
        with torch.inference_mode():
            for m in modules.values():
                m.eval()
            for m in models.values():
                for _ in range(3):
                    m(example)
            for _ in range(rounds):
                for name, m in models.items():
                    t0 = time.perf_counter()
                    for _ in range(repeats):
                        m(example)
                    times[name].append((time.perf_counter() - t0) / repeats)
    finally:
        for k, m in modules.items():
            m.train(states[k])
    return {k: round(1000.0 * statistics.median(v), 4) for k, v in times.items()}


def accuracy(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``(x, y)`` batches (e.g. a DataLoader)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                x, y = batch[0].to(device), batch[1].to(device)
                correct += int((model(x).argmax(-1) == y).sum())
                total += int(y.numel())
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def model_report(
    model: nn.Module,
    example: torch.Tensor,
    batches: Iterable[Sequence[torch.Tensor]] | None = None,
    *,
    repeats: int = 20,
) -> dict[str, float]:
    """One report row: parameters, MACs, file size, eager CPU latency and (optionally) accuracy.

    Example:
        >>> row = model_report(nn.Linear(4, 2), torch.zeros(1, 4), repeats=2)
        >>> row["params"], row["macs"]
        (10, 10)
    """
    params, nonzero = count_params(model)
    size, zipped = serialized_size(model)
    row: dict[str, float] = {
        "params": params,
        "nonzero_params": nonzero,
        "macs": count_macs(model, example),
        "size_bytes": size,
        "zipped_bytes": zipped,
        "latency_ms": round(measure_latency(model, example, repeats=repeats), 4),
    }
    if batches is not None:
        row["accuracy"] = round(accuracy(model, batches), 4)
    return row


def markdown_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A Markdown table with one row per model and the columns present in any row.

    Example:
        >>> print(markdown_table({"dense": {"params": 10}}))
        | model | params |
        |---|---|
        | dense | 10 |
    """
    cols = [c for c in columns if any(c in r for r in rows.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for c in cols:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    rows: Mapping[str, Mapping[str, Any]], out_dir: str | Path, *, writer: Any = None, step: int = 0
) -> Path:
    """Write ``report.json`` and ``report.md`` in ``out_dir``; mirror them to TensorBoard.

    Args:
        rows: model name -> report row (see :func:`model_report`).
        out_dir: folder to write into (created).
        writer: a TensorBoard ``SummaryWriter`` or None.
        step: global step for the TensorBoard entries.

    Returns:
        The path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing: dict[str, Any] = {}
    json_path = out / "report.json"
    if json_path.exists():  # several compress stages add their rows to one report
        try:
            existing = json.loads(json_path.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing.update({k: dict(v) for k, v in rows.items()})
    json_path.write_text(json.dumps(existing, indent=2))
    md = markdown_table(existing)
    md_path = out / "report.md"
    md_path.write_text("# Compression report\n\n" + md + "\n")
    if writer is not None:
        for name, row in rows.items():
            for key, value in row.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"compress/{name}/{key}", float(value), step)
        writer.add_text("compress/report", md, step)
        writer.flush()
    return md_path
