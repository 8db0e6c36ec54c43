"""Label-free performance estimate: temperature-scaled confidence (pure functions + a small class).

A classifier's average top-class probability estimates its accuracy only when the probabilities are
calibrated. Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017)
fits one scalar ``T`` on held-out data; the average calibrated confidence of a window is then a
label-free accuracy estimate (the average-confidence form of NannyML's CBPE). It holds while the
shift keeps the model calibrated and drifts upward under strong shifts (models stay confident
on inputs they get wrong), which is why it is reported next to the drift tests, not instead of them.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle._errors import MLCycleError


def _log_probs(probs: torch.Tensor) -> torch.Tensor:
    return torch.log(probs.double().clamp_min(1e-12))


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor, *, max_iter: int = 200) -> float:
    """The temperature ``T`` minimizing the NLL of ``softmax(log(probs) / T)`` on labelled data.

    Works from probabilities (``log p`` equals the logits up to a per-row constant, which softmax
    ignores), so it applies to a deployed model that only returns probabilities.

    Args:
        probs: ``(N, K)`` class probabilities on held-out data.
        labels: ``(N,)`` true classes.
        max_iter: LBFGS iterations.

    Returns:
        ``T`` in [0.05, 20] (clipped: outside it the fit is degenerate).

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]])
        >>> t = fit_temperature(torch.softmax(logits, 1), torch.tensor([0, 1, 1, 1]))
        >>> t > 1.0  # one confident mistake in four: soften
        True
    """
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise MLCycleError(
            f"`probs` must be (N, K) and `labels` (N,), but got {tuple(probs.shape)} and {tuple(labels.shape)}."
        )
    logp = _log_probs(probs)
    y = labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logp / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, 0.05), 20.0) if math.isfinite(t) else 1.0


def calibrated_confidence(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Top-class probability of every row after temperature scaling, ``(N,)``.

    Example:
        >>> p = torch.tensor([[0.9, 0.1]])
        >>> round(float(calibrated_confidence(p, 1.0)), 3), round(float(calibrated_confidence(p, 2.0)), 3)
        (0.9, 0.75)
    """
    return torch.softmax(_log_probs(probs) / temperature, dim=1).max(dim=1).values.float()


def estimate_accuracy(probs: torch.Tensor, temperature: float = 1.0) -> float:
    """Label-free accuracy estimate: the mean calibrated confidence of a window.

    Example:
        >>> estimate_accuracy(torch.tensor([[0.9, 0.1], [0.3, 0.7]]))
        0.8
    """
    return round(float(calibrated_confidence(probs, temperature).mean()), 6)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of probabilities against labels (for windows whose labels arrived).

    Example:
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        0.5
    """
    if labels.shape[0] != probs.shape[0]:
        raise MLCycleError(
            f"`labels` must have one label per input ({probs.shape[0]}), but got {labels.shape[0]}."
        )
    return float((probs.argmax(1).cpu() == labels.cpu().long()).float().mean())


def macro_f1(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Macro-averaged F1 of probabilities against labels (classes absent from both count as 0).

    Example:
        >>> macro_f1(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 1]))
        1.0
    """
    from torchmetrics.functional.classification import multiclass_f1_score

    if labels.shape[0] != probs.shape[0]:
        raise MLCycleError(
            f"`labels` must have one label per input ({probs.shape[0]}), but got {labels.shape[0]}."
        )
    return float(
        multiclass_f1_score(
            probs.cpu(), labels.cpu().long(), num_classes=probs.shape[1], average="macro"
        )
    )
