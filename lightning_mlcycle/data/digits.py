"""The scikit-learn digits data set as a LightningDataModule (bundled, no download)."""

from __future__ import annotations

from typing import Any

import torch

from lightning_mlcycle.data._base import SplitDataModule


class DigitsDataModule(SplitDataModule):
    """8x8 grey images of hand-written digits, 1,797 samples, 10 classes.

    The data ship with scikit-learn (``sklearn.datasets.load_digits``), so nothing is downloaded.
    Samples are ``(1, 8, 8)`` float tensors in [0, 16] before normalization.

    Args:
        **kwargs: see :class:`~lightning_mlcycle.data.SplitDataModule` (batch size, workers,
            split, seed, augmentation, leakage policy).

    Example:
        >>> dm = DigitsDataModule(batch_size=32, seed=0)
        >>> dm.setup()
        >>> dm.num_classes, dm.input_shape
        (10, (1, 8, 8))
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((32, 1, 8, 8), torch.int64)
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("leakage", "warn")
        super().__init__(**kwargs)
        self.class_names = [str(i) for i in range(10)]

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
        y = torch.as_tensor(bunch.target, dtype=torch.long)
        return x, y
