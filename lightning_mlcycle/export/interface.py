"""``ModelInterface``: what goes into an exported model and what comes out of it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightning_mlcycle._errors import MLCycleError


@dataclass
class ModelInterface:
    """The contract of an exported classifier: input shape, preprocessing and class names.

    Raw inputs (in ``raw_range``) are normalized as ``x = (raw - mean) / std`` with per-channel
    (images ``C, H, W``) or per-feature (tabular ``F``) constants, then fed to the model, which
    returns one logit per class.

    Args:
        input_shape: one sample's shape, without the batch dimension.
        class_names: one name per output.
        normalization: ``{"mean": [...], "std": [...]}`` (one value, one per channel, or one per
            element); None when the model takes raw inputs.
        raw_range: ``(low, high)`` of raw inputs, e.g. ``(0, 16)`` for digits, ``(0, 1)`` for
            decoded images; 8-bit images (0..255) are mapped linearly onto it.
        input_name: name of the exported graph's input.
        output_name: name of the exported graph's output.

    Example:
        >>> spec = ModelInterface((1, 8, 8), [str(i) for i in range(10)],
        ...                       {"mean": [4.9], "std": [6.0]}, raw_range=(0.0, 16.0))
        >>> spec.layout, spec.image_mode
        ('NCHW', 'L')
        >>> float(spec.normalize(np.full((1, 1, 8, 8), 4.9))[0, 0, 0, 0])
        0.0
    """

    input_shape: tuple[int, ...]
    class_names: list[str]
    normalization: dict[str, list[float]] | None = None
    raw_range: tuple[float, float] | None = None
    input_name: str = "input"
    output_name: str = "logits"
    _mean: np.ndarray | None = field(default=None, init=False, repr=False)
    _std: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.input_shape)
        if not shape or any(s < 1 for s in shape):
            raise MLCycleError(
                f"`input_shape` must be positive sizes, but got {self.input_shape!r}."
            )
        self.input_shape = shape
        self.class_names = [str(c) for c in self.class_names]
        if len(self.class_names) < 2:
            raise MLCycleError(
                f"`class_names` must name at least 2 classes, but got {self.class_names!r}."
            )
        if self.raw_range is not None:
            lo, hi = (float(v) for v in self.raw_range)
            if not hi > lo:
                raise MLCycleError(
                    f"`raw_range` must be (low, high) with high > low, but got {self.raw_range!r}."
                )
            self.raw_range = (lo, hi)
        if self.normalization is not None:
            if not isinstance(self.normalization, Mapping) or set(self.normalization) < {
                "mean",
                "std",
            }:
                raise MLCycleError(
                    f"`normalization` must be a mapping with 'mean' and 'std', but got {self.normalization!r}."
                )
            mean = np.asarray(self.normalization["mean"], dtype=np.float32).ravel()
            std = np.asarray(self.normalization["std"], dtype=np.float32).ravel()
            if mean.shape != std.shape:
                raise MLCycleError(
                    f"`normalization` mean and std differ in length: {mean.size} vs {std.size}."
                )
            if np.any(std <= 0):
                raise MLCycleError(
                    f"`normalization['std']` must be positive, but got {std.tolist()}."
                )
            self.normalization = {"mean": mean.tolist(), "std": std.tolist()}
            self._mean, self._std = self._broadcast(mean), self._broadcast(std)

    def _broadcast(self, v: np.ndarray) -> np.ndarray:
        shape = self.input_shape
        if v.size == 1:
            return v.reshape(())
        if v.size == math.prod(shape):
            return v.reshape(shape)
        if v.size == shape[0]:
            return v.reshape((shape[0],) + (1,) * (len(shape) - 1))
        raise MLCycleError(
            f"`normalization` has {v.size} values; expected 1, {shape[0]} (per channel/feature) "
            f"or {math.prod(shape)} (per element) for input_shape {shape}."
        )

    @property
    def num_classes(self) -> int:
        """Number of outputs."""
        return len(self.class_names)

    @property
    def layout(self) -> str:
        """``NCHW`` for images, ``NF`` for feature vectors, else ``N`` + one letter per dim."""
        if len(self.input_shape) == 3:
            return "NCHW"
        if len(self.input_shape) == 1:
            return "NF"
        return "N" + "D" * len(self.input_shape)

    @property
    def image_mode(self) -> str | None:
        """PIL mode images are converted to (``L`` or ``RGB``), None for non-image inputs."""
        if self.layout != "NCHW":
            return None
        return {1: "L", 3: "RGB"}.get(self.input_shape[0])

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std`` as float32 (identity without normalization constants)."""
        x = np.asarray(raw, dtype=np.float32)
        if self._mean is None or self._std is None:
            return x
        return ((x - self._mean) / self._std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (used in the model card)."""
        return {
            "input_name": self.input_name,
            "input_shape": ["batch", *self.input_shape],
            "input_dtype": "float32",
            "layout": self.layout,
            "output_name": self.output_name,
            "output_shape": ["batch", self.num_classes],
            "output_dtype": "float32",
            "output_meaning": (
                "unnormalized class scores (logits), one per class in `class_names` order; "
                "softmax gives probabilities, argmax the predicted class"
            ),
            "class_names": list(self.class_names),
            "preprocessing": {
                "raw_range": list(self.raw_range) if self.raw_range else None,
                "image_mode": self.image_mode,
                "image_size": list(self.input_shape[1:]) if self.layout == "NCHW" else None,
                "normalization": self.normalization,
                "formula": "x = (raw - mean) / std, per channel (images) or per feature"
                if self.normalization
                else "none recorded: feed inputs exactly as the training data loader produced them",
                "uint8_images": (
                    f"8-bit pixels p are mapped to raw = {self.raw_range[0]:g} + p / 255 * "
                    f"{self.raw_range[1] - self.raw_range[0]:g} before normalization"
                )
                if self.raw_range and self.layout == "NCHW"
                else None,
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelInterface:
        """Inverse of :meth:`to_dict`."""
        pre = d.get("preprocessing") or {}
        shape = [s for s in d["input_shape"] if not isinstance(s, str)]
        return cls(
            input_shape=tuple(shape),
            class_names=list(d["class_names"]),
            normalization=pre.get("normalization"),
            raw_range=tuple(pre["raw_range"]) if pre.get("raw_range") else None,
            input_name=d.get("input_name", "input"),
            output_name=d.get("output_name", "logits"),
        )

    @classmethod
    def infer(
        cls,
        *,
        module: Any = None,
        datamodule: Any = None,
        example: Any = None,
        num_classes: int | None = None,
    ) -> ModelInterface:
        """Gather the interface from a data module, a module's hyper-parameters, or an example.

        The data module wins (``input_shape``, ``normalization``, ``class_names``, raw range from
        ``raw_split("test")``), then ``module.hparams`` (as saved by ``ClassificationModule``), then
        the example batch's shape and ``num_classes``.

        Example:
            >>> import torch
            >>> ModelInterface.infer(example=torch.zeros(2, 4), num_classes=3).class_names
            ['0', '1', '2']
        """
        hp = dict(getattr(module, "hparams", {}) or {})
        shape = getattr(datamodule, "input_shape", None) or hp.get("input_shape")
        if not shape and example is not None:
            shape = tuple(example.shape[1:])
        if not shape:
            raise MLCycleError(
                "Cannot tell the model's input shape: pass `example` or a datamodule with `input_shape`."
            )
        names = list(getattr(datamodule, "class_names", None) or hp.get("class_names") or [])
        if not names:
            n = num_classes or hp.get("num_classes")
            if not n:
                raise MLCycleError(
                    "Cannot tell the number of classes: pass `num_classes` or class names."
                )
            names = [str(i) for i in range(int(n))]
        norm = None
        try:
            norm = getattr(datamodule, "normalization", None)
        except AssertionError:  # our data modules before setup()
            norm = None
        norm = norm or hp.get("normalization")
        raw_range = None
        raw_split = getattr(datamodule, "raw_split", None)
        if callable(raw_split):
            try:
                x, _ = raw_split("test")
                raw_range = (float(x.min()), float(x.max()))
                if raw_range[1] <= raw_range[0]:
                    raw_range = None
            except Exception:  # a data module whose raw_split needs more than we know
                raw_range = None
        return cls(tuple(shape), names, dict(norm) if norm else None, raw_range)
