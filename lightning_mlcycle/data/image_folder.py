"""A DataModule for a user's own images laid out as ``root/<class>/<image>``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.data._base import SplitDataModule
from lightning_mlcycle.data._split import content_hash, stratified_split

log = logging.getLogger(__name__)

_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class _FileDataset(Dataset):
    """Decode, resize, (augment), scale to [0, 1] and normalize image files on the fly."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        image_size: tuple[int, int],
        channels: int,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        augmentation: Any = None,
    ) -> None:
        from torchvision.transforms import v2

        self.samples = list(samples)
        self.mode = "L" if channels == 1 else "RGB"
        steps: list[Any] = [v2.ToImage(), v2.Resize(list(image_size), antialias=True)]
        if augmentation is not None:
            steps.append(augmentation)
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if mean is not None and std is not None:
            steps.append(v2.Normalize(mean.flatten().tolist(), std.flatten().tolist()))
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, target = self.samples[i]
        with Image.open(path) as img:
            x = self.transform(img.convert(self.mode))
        return x, target


def scan_image_folder(root: str | Path) -> tuple[list[str], list[tuple[str, int]]]:
    """List the classes (sub-folders holding images) and the ``(path, class)`` samples of ``root``.

    Raises:
        MLCycleError: if ``root`` is missing or holds fewer than two classes with images.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MLCycleError(
            f"`data.root`: the image folder {str(path)!r} does not exist or is not a directory. "
            f"Expected a folder with one sub-folder of images per class."
        )
    classes: list[str] = []
    samples: list[tuple[str, int]] = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        files = sorted(
            f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() in _IMG_EXTENSIONS
        )
        if not files:
            continue
        classes.append(sub.name)
        samples.extend((str(f), len(classes) - 1) for f in files)
    if len(classes) < 2:
        raise MLCycleError(
            f"`data.root`: the image folder {str(path)!r} holds {len(classes)} class(es) with "
            f"images ({classes}); a classifier needs at least two sub-folders of images, "
            f"one per class, with extensions {list(_IMG_EXTENSIONS)}."
        )
    return classes, samples


class ImageFolderDataModule(SplitDataModule):
    """Your own images, one sub-folder per class, with the same split and checks as our data.

    Images are decoded on the fly, resized to ``image_size`` and scaled to [0, 1]; the per-channel
    mean and std are computed on (up to ``stats_samples`` images of) the train split only. The
    leakage check hashes the image files' bytes.

    Args:
        root: folder with one sub-folder of images per class.
        image_size: ``(height, width)`` or one int for square images.
        channels: 1 (grey) or 3 (RGB).
        stats_samples: at most this many training images are read to compute mean and std.
        **kwargs: see :class:`~lightning_mlcycle.data.SplitDataModule`.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for c in ("cat", "dog"):
        ...     (root / c).mkdir()
        ...     for i in range(10):
        ...         px = np.full((6, 6, 3), 20 * i + (60 if c == "dog" else 0), dtype=np.uint8)
        ...         Image.fromarray(px).save(root / c / f"{i}.png")
        >>> dm = ImageFolderDataModule(root, image_size=8, batch_size=4)
        >>> dm.setup()
        >>> dm.class_names, dm.input_shape
        (['cat', 'dog'], (3, 8, 8))
    """

    def __init__(
        self,
        root: str | Path,
        *,
        image_size: int | Sequence[int] = 32,
        channels: int = 3,
        stats_samples: int = 2000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if channels not in (1, 3):
            raise MLCycleError(f"`channels` must be 1 or 3, but got {channels!r}.")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise MLCycleError(
                f"`image_size` must be a positive int or (h, w), but got {image_size!r}."
            )
        self.root = Path(root).expanduser()
        self.image_size = (int(size[0]), int(size[1]))
        self.channels = channels
        self.stats_samples = stats_samples
        # fail before training: a missing folder or a single class is found at construction
        self.class_names, self._samples = scan_image_folder(self.root)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(channels, height, width)`` of a sample after resizing."""
        return (self.channels, *self.image_size)

    def _hashes(self, x: Any, idx: np.ndarray) -> list[str]:
        return [content_hash(Path(self._samples[i][0]).read_bytes()) for i in idx]

    def setup(self, stage: str | None = None) -> None:
        """Split the file list, check leakage, compute train statistics, build datasets."""
        if self._datasets:
            return
        labels = np.array([t for _, t in self._samples])
        train, val, test = stratified_split(labels, self.split, seed=self.seed)
        self.indices = {"train": train, "val": val, "test": test}
        self._check_leakage(None)
        self.mean, self.std = self._file_statistics()
        for name, idx in self.indices.items():
            self._datasets[name] = _FileDataset(
                [self._samples[i] for i in idx],
                self.image_size,
                self.channels,
                self.mean,
                self.std,
                self.augmentation if name == "train" else None,
            )

    def _file_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices["train"]
        if len(idx) > self.stats_samples:
            idx = np.random.default_rng(self.seed).choice(idx, self.stats_samples, replace=False)
        ds = _FileDataset(
            [self._samples[i] for i in idx], self.image_size, self.channels, None, None
        )
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return self._statistics(x)

    def raw_split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Resized images in [0, 1] (not normalized) and labels of split ``name``."""
        if not self._datasets:
            self.setup()
        ds = _FileDataset(
            [self._samples[i] for i in self.indices[name]],
            self.image_size,
            self.channels,
            None,
            None,
        )
        xs, ys = zip(*(ds[i] for i in range(len(ds))), strict=True)
        return torch.stack(xs), torch.as_tensor(ys)
