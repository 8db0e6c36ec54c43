"""Measure a classifier the way the distill stage and benchmark compare teacher and student (private)."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightning_mlcycle.models.classification import classification_metrics


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return int(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()))


def size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized ``state_dict`` (what a saved model weighs)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Any], num_classes: int) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 of ``model`` (eval mode) over ``(x, y, ...)`` batches."""
    was_training = model.training
    model.eval()
    metrics = classification_metrics(num_classes)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for batch in batches:
            x, y = batch[0].to(device), batch[1].to(device)
            metrics.to(device).update(model(x), y)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in metrics.compute().items()}


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, *, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall time of one forward pass on ``example``, in milliseconds (eval mode).

    The median of many short runs resists the noise of a shared machine better than the mean.
    """
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            if example.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(example)
            if example.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)
