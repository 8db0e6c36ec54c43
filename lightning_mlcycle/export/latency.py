"""Latency on the hardware it runs on: median and p95 latency and throughput per batch size.

Pure measuring functions; :func:`~lightning_mlcycle.export.export_model` runs them for every
artifact and runtime and writes the report.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def hardware_info() -> dict[str, Any]:
    """CPU model, cores, torch threads and GPU (if any) of this machine.

    Example:
        >>> info = hardware_info()
        >>> sorted(info)[:3]
        ['cpu', 'cpu_cores_available', 'cpu_cores_logical']
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        available = os.cpu_count() or 1
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu,
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_available": available,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
    }


@dataclass(frozen=True)
class LatencyRow:
    """One cell of the report: an artifact on a runtime at one batch size.

    Attributes:
        artifact: the artifact (file name, or ``<variant> (eager)``).
        runtime: ``eager``, ``onnxruntime``, ``tvm`` ...
        batch_size: samples per call.
        median_ms: median latency of one call.
        p95_ms: 95th percentile latency.
        throughput: samples per second at the median latency.
        runs: timed calls (after warm-up).
        size_bytes: file size of the artifact (parameters' bytes for eager).
        accuracy: test accuracy of this artifact on this runtime, or None without labels.
    """

    artifact: str
    runtime: str
    batch_size: int
    median_ms: float
    p95_ms: float
    throughput: float
    runs: int
    size_bytes: int
    accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def measure_latency(
    fn: Callable[[np.ndarray], Any],
    batch: np.ndarray,
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Time ``fn(batch)``: ``warmup`` untimed calls, then up to ``repeats`` timed calls.

    Args:
        fn: the runner.
        batch: its input.
        warmup: untimed calls first (lazy initialization, caches, allocator).
        repeats: timed calls.
        max_seconds: stop timing after this long (at least 3 timed calls are kept), so a slow
            runtime cannot blow the budget.

    Returns:
        ``{"median_ms", "p95_ms", "min_ms", "throughput", "runs"}``.

    Example:
        >>> r = measure_latency(lambda x: x * 2, np.ones((8, 4)), warmup=1, repeats=5)
        >>> r["runs"], r["throughput"] > 0
        (5, True)
    """
    if warmup < 0:
        raise ValueError(f"`warmup` cannot be negative, but got warmup={warmup!r}.")
    if repeats < 1:
        raise ValueError(f"`repeats` must be positive, but got repeats={repeats!r}.")
    for _ in range(warmup):
        fn(batch)
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
        if (
            max_seconds is not None
            and len(times) >= 3
            and time.perf_counter() - start > max_seconds
        ):
            break
    arr = np.asarray(times) * 1000.0
    median = float(np.median(arr))
    return {
        "median_ms": median,
        "p95_ms": float(np.percentile(arr, 95)),
        # the best case: on a shared machine the calls that were not preempted
        "min_ms": float(arr.min()),
        "throughput": float(batch.shape[0] / (median / 1000.0)) if median > 0 else float("inf"),
        "runs": len(times),
    }


def tile_batch(samples: np.ndarray, batch_size: int) -> np.ndarray:
    """A batch of ``batch_size`` real samples (repeated when there are fewer).

    Example:
        >>> tile_batch(np.arange(3.0).reshape(3, 1), 5)[:, 0].tolist()
        [0.0, 1.0, 2.0, 0.0, 1.0]
    """
    reps = -(-batch_size // samples.shape[0])
    return np.ascontiguousarray(np.concatenate([samples] * reps)[:batch_size])


def latency_markdown(rows: Sequence[LatencyRow], hardware: Mapping[str, Any] | None = None) -> str:
    """The report as a markdown table (with the hardware above it).

    Example:
        >>> print(latency_markdown([LatencyRow("model.onnx", "onnxruntime", 1, 0.1, 0.2, 1e4, 20, 2048, 0.98)]))
        | artifact | runtime | batch | median ms | p95 ms | samples/s | size KiB | accuracy |
        |---|---|---:|---:|---:|---:|---:|---:|
        | model.onnx | onnxruntime | 1 | 0.100 | 0.200 | 10,000 | 2.0 | 0.9800 |
    """
    lines = []
    if hardware:
        gpu = hardware.get("gpu") or "none"
        lines += [
            f"Hardware: {hardware.get('cpu')}, {hardware.get('cpu_cores_available')} of "
            f"{hardware.get('cpu_cores_logical')} logical cores available, "
            f"{hardware.get('torch_threads')} thread(s), GPU: {gpu}.",
            "",
        ]
    lines += [
        "| artifact | runtime | batch | median ms | p95 ms | samples/s | size KiB | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = "n/a" if r.accuracy is None else f"{r.accuracy:.4f}"
        lines.append(
            f"| {r.artifact} | {r.runtime} | {r.batch_size} | {r.median_ms:.3f} | {r.p95_ms:.3f} | "
            f"{r.throughput:,.0f} | {r.size_bytes / 1024:.1f} | {acc} |"
        )
    return "\n".join(lines)
