"""The split/normalize/leakage machinery shared by our DataModules (private)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.data._split import LeakageReport, find_leakage, stratified_split

log = logging.getLogger(__name__)

_LEAKAGE_POLICIES = ("warn", "raise", "drop", "ignore")


def _compose(augmentation: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Turn ``None``, one transform or a list of transforms into one callable."""
    if augmentation is None:
        return None
    if isinstance(augmentation, Sequence) and not isinstance(augmentation, str):
        items = list(augmentation)
        if not items:
            return None
        from torchvision.transforms import v2

        for t in items:
            if not callable(t):
                raise MLCycleError(
                    f"Expected every entry of `augmentation` to be a callable transform "
                    f"(e.g. torchvision.transforms.v2.RandomAffine), but got {t!r}."
                )
        return v2.Compose(items)
    if not callable(augmentation):
        raise MLCycleError(
            f"Expected argument `augmentation` to be a transform or a list of transforms, "
            f"but got {augmentation!r}."
        )
    return augmentation


class NormalizedTensorDataset(Dataset):
    """Samples from in-memory tensors, optionally augmented, then normalized.

    Without augmentation the whole tensor is normalized once (fast path); with augmentation each
    sample is augmented in its raw range and then normalized, as a user's pipeline would do.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.y = y
        self.transform = transform
        self.mean, self.std = mean, std
        self.x = x if transform is not None else (x - mean) / std

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.transform is not None:
            x = (self.transform(x) - self.mean) / self.std
        return x, self.y[i]


class SplitDataModule(pl.LightningDataModule):
    """Base of our DataModules: seeded stratified split, train-only statistics, leakage check.

    Subclasses implement :meth:`_load` (all samples and labels) and :meth:`_hashes` (a content hash
    per sample), and may override :meth:`_make_dataset`.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        split: shares of train, validation and test; positive, summing to 1.
        seed: seed of the split (the split does not depend on the training seed).
        augmentation: a transform or list of transforms (e.g. torchvision ``v2``) applied to
            training samples only.
        leakage: what to do when a sample's content appears in more than one split: ``"warn"``
            (log the count), ``"raise"``, ``"drop"`` (remove the repeats from val/test) or
            ``"ignore"``.
        pin_memory: pin batches in page-locked memory (useful with a GPU).
        persistent_workers: keep worker processes between epochs (needs ``num_workers > 0``).
    """

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        seed: int = 0,
        augmentation: Any = None,
        leakage: str = "warn",
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MLCycleError(f"`batch_size` must be a positive integer, but got {batch_size!r}.")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise MLCycleError(f"`num_workers` cannot be negative, but got {num_workers!r}.")
        split = tuple(float(s) for s in split)
        if len(split) != 3 or any(s <= 0 for s in split) or not np.isclose(sum(split), 1.0):
            raise MLCycleError(
                f"`split` must be three positive shares (train, val, test) summing to 1, "
                f"but got {list(split)}."
            )
        if leakage not in _LEAKAGE_POLICIES:
            raise MLCycleError(
                f"Expected argument `leakage` to be one of {list(_LEAKAGE_POLICIES)}, "
                f"but got {leakage!r}."
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split = split
        self.seed = seed
        self.augmentation = _compose(augmentation)
        self.leakage = leakage
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.leakage_report: LeakageReport | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.class_names: list[str] = []
        self.indices: dict[str, np.ndarray] = {}
        self._datasets: dict[str, Dataset] = {}

    # -- to implement -------------------------------------------------------------------------
    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all samples (N, ...) as float tensor in their raw range, and labels (N,)."""
        raise NotImplementedError

    def _hashes(self, x: torch.Tensor, idx: np.ndarray) -> list[str]:
        from lightning_mlcycle.data._split import content_hash

        return [content_hash(x[i].numpy().tobytes()) for i in idx]

    # -- shared machinery ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes (known after :meth:`setup`)."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension (known after :meth:`setup`)."""
        return tuple(self._x.shape[1:])

    @property
    def num_channels(self) -> int:
        """Channels of an image sample (or features of a tabular one)."""
        return int(self.input_shape[0])

    @property
    def normalization(self) -> dict[str, list[float]]:
        """The train-split statistics every sample is normalized with: ``x' = (x - mean) / std``."""
        assert self.mean is not None and self.std is not None, "call setup() first"
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def setup(self, stage: str | None = None) -> None:
        """Load, split, check leakage and compute normalization statistics (once)."""
        if self._datasets:
            return
        x, y = self._load()
        self._x, self._y = x, y
        train, val, test = stratified_split(y.numpy(), self.split, seed=self.seed)
        self.indices = {"train": train, "val": val, "test": test}
        self._check_leakage(x)
        self.mean, self.std = self._statistics(x[torch.as_tensor(self.indices["train"])])
        tr = self.augmentation
        for name, idx in self.indices.items():
            t = torch.as_tensor(idx, dtype=torch.long)
            self._datasets[name] = NormalizedTensorDataset(
                x[t], y[t], self.mean, self.std, tr if name == "train" else None
            )

    def _statistics(self, x_train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (images: N,C,H,W) or per-feature (N,F) mean and std of the train split."""
        dims = [0] + list(range(2, x_train.ndim))
        mean = x_train.mean(dim=dims, keepdim=True)[0]
        std = x_train.std(dim=dims, keepdim=True)[0].clamp_min(1e-6)
        return mean, std

    def _check_leakage(self, x: torch.Tensor) -> None:
        if self.leakage == "ignore":
            return
        hashes = {k: self._hashes(x, v) for k, v in self.indices.items()}
        report = find_leakage(hashes)
        self.leakage_report = report
        if not report:
            return
        msg = (
            f"Leakage check: {report.summary()}. Identical samples in train and val/test make "
            f"validation look better than it is."
        )
        if self.leakage == "raise":
            raise MLCycleError(msg + " Set `leakage='drop'` to remove the repeats.")
        if self.leakage == "drop":
            for name, leaked in report.leaked_indices.items():
                if leaked:
                    self.indices[name] = np.delete(self.indices[name], leaked)
            log.warning("%s Dropped them from the later splits.", msg)
        else:
            log.warning("%s Set `leakage='drop'` to remove them.", msg)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        if not self._datasets:
            self.setup()
        return DataLoader(
            self._datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, for ``trainer.predict``."""
        return self._loader("test", shuffle=False)

    def raw_split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalized samples and labels of split ``name`` (``train``, ``val`` or ``test``)."""
        if not self._datasets:
            self.setup()
        if name not in self.indices:
            raise MLCycleError(f"Expected a split in {list(self.indices)}, but got {name!r}.")
        t = torch.as_tensor(self.indices[name], dtype=torch.long)
        return self._x[t], self._y[t]

    def state_dict(self) -> dict[str, Any]:
        """Statistics and split sizes, saved in checkpoints for reproducibility checks."""
        if self.mean is None:
            return {}
        return {
            "normalization": self.normalization,
            "class_names": list(self.class_names),
            "split_sizes": {k: int(len(v)) for k, v in self.indices.items()},
            "seed": self.seed,
        }


class ArrayDataModule(SplitDataModule):
    """A DataModule over arrays you already have in memory (images N,C,H,W or tabular N,F).

    Args:
        x: samples, float-convertible, first dimension is the sample.
        y: integer class labels.
        class_names: optional names, one per class.
        **kwargs: see :class:`SplitDataModule` (batch size, split, seed, augmentation, ...).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> dm = ArrayDataModule(rng.normal(size=(90, 4)), np.repeat([0, 1, 2], 30), batch_size=8)
        >>> dm.setup()
        >>> dm.num_classes, dm.input_shape, len(dm.indices["test"])
        (3, (4,), 12)
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        *,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        x_t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
        if x_t.shape[0] != y_t.shape[0]:
            raise MLCycleError(
                f"`x` and `y` must have the same number of samples, but got {x_t.shape[0]} "
                f"and {y_t.shape[0]}."
            )
        n_cls = int(y_t.max()) + 1 if y_t.numel() else 0
        if len(torch.unique(y_t)) < 2:
            raise MLCycleError(
                f"`y` must hold at least two classes to train a classifier, but got {n_cls}."
            )
        self._x_all, self._y_all = x_t, y_t
        self.class_names = list(class_names) if class_names else [str(i) for i in range(n_cls)]

    def _load(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._x_all, self._y_all
