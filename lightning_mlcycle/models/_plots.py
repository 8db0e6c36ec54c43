"""Matplotlib figures for TensorBoard (private)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def confusion_matrix_figure(cm: torch.Tensor, class_names: Sequence[str]):  # noqa: ANN201, ANN202
    """Draw a confusion-matrix heat map with counts in the cells (rows: true, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = cm.shape[0]
    size = max(3.0, 0.45 * n + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(n), list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(n), list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = float(cm.max()) if cm.numel() else 0.0
    for i in range(n):
        for j in range(n):
            v = int(cm[i, j])
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > peak / 2 else "black",
            )
    fig.tight_layout()
    return fig
