"""``Predictor``: an exported ONNX model plus its card, run on raw inputs with ONNX Runtime."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.export.card import CARD_FILE, load_model_card
from lightning_mlcycle.export.interface import ModelInterface
from lightning_mlcycle.export.runtimes import OnnxRuntimeRunner


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably.

    Example:
        >>> softmax(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Predictor:
    """Load an exported model with its model card and predict on raw inputs.

    Raw inputs are numpy arrays (or tensors) in the card's raw range, with or without the batch
    dimension (and, for one-channel images, with or without the channel dimension; channel-last
    images are transposed), 8-bit arrays, or PIL images (converted, resized and scaled to the raw
    range). The card's normalization is applied, then ONNX Runtime runs the model.

    Args:
        path_or_dir: the export folder (holding ``model_card.json``), or one ``.onnx`` file in it.
        threads: ONNX Runtime intra-op threads (None: torch's thread count).
        device: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu).
        verify: check the file against the SHA-256 in the card before loading (catches tampered
            or truncated files).

    Raises:
        MLCycleError: no card, an ONNX file the card does not list, a hash mismatch, or a file ONNX
            Runtime cannot load.

    Example:
        >>> import tempfile, torch
        >>> from lightning_mlcycle.export import export_model
        >>> d = tempfile.mkdtemp()
        >>> _ = export_model(torch.nn.Linear(4, 3).eval(), d, example=torch.zeros(2, 4), formats=["onnx"],
        ...                  batch_sizes=[1], repeats=1, warmup=0)
        >>> p = Predictor(d)
        >>> p.predict_proba(np.zeros((5, 4))).shape, p.predict(np.zeros(4)).shape
        ((5, 3), (1,))
    """

    def __init__(
        self,
        path_or_dir: str | os.PathLike[str],
        *,
        threads: int | None = None,
        device: str = "cpu",
        verify: bool = True,
    ) -> None:
        path = Path(path_or_dir)
        if not path.exists():
            raise MLCycleError(f"`path_or_dir` does not exist: {str(path)!r}.")
        folder = path if path.is_dir() else path.parent
        self.card: dict[str, Any] = load_model_card(folder / CARD_FILE)
        if path.is_dir():
            name = self.card.get("primary_artifact")
            if not name:
                raise MLCycleError(f"The model card in {str(folder)!r} lists no ONNX artifact.")
            path = folder / name
        entry = next(
            (a for a in self.card.get("artifacts", []) if a.get("file") == path.name), None
        )
        if entry is None or entry.get("format") != "onnx":
            listed = [
                a["file"] for a in self.card.get("artifacts", []) if a.get("format") == "onnx"
            ]
            raise MLCycleError(
                f"{path.name!r} is not an ONNX artifact of the model card in {str(folder)!r}; "
                f"it lists {listed}."
            )
        self.path = path
        self.artifact = entry
        self.interface = ModelInterface.from_dict(self.card["interface"])
        self._runner = OnnxRuntimeRunner(
            path, threads=threads, device=device, sha256=entry.get("sha256") if verify else None
        )

    @property
    def class_names(self) -> list[str]:
        """Class names, in output order."""
        return list(self.interface.class_names)

    def preprocess(self, raw: Any) -> np.ndarray:
        """Raw input(s) to the normalized float32 batch the model takes.

        Example:
            >>> spec = ModelInterface((1, 2, 2), ["a", "b"], {"mean": [1.0], "std": [2.0]}, (0, 16))
            >>> _raw_to_batch(np.ones((2, 2)), spec).shape
            (1, 1, 2, 2)
        """
        return self.interface.normalize(_raw_to_batch(raw, self.interface))

    def logits(self, raw: Any) -> np.ndarray:
        """Logits ``(N, num_classes)`` for raw input(s)."""
        return self._runner(self.preprocess(raw))

    def predict_proba(self, raw: Any) -> np.ndarray:
        """Class probabilities ``(N, num_classes)`` for raw input(s)."""
        return softmax(self.logits(raw).astype(np.float64)).astype(np.float32)

    def predict(self, raw: Any) -> np.ndarray:
        """Predicted class indices ``(N,)`` (names: ``[p.class_names[i] for i in ...]``)."""
        return self.logits(raw).argmax(axis=-1)

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, classes={len(self.class_names)})"


def _pil_to_array(img: Any, spec: ModelInterface) -> np.ndarray:
    mode = spec.image_mode
    if mode is None:
        raise MLCycleError(
            f"Got an image, but the model takes {spec.layout} inputs of shape {spec.input_shape}."
        )
    h, w = spec.input_shape[1:]
    img = img.convert(mode)
    if img.size != (w, h):
        img = img.resize((w, h))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _scale_uint8(arr: np.ndarray, spec: ModelInterface) -> np.ndarray:
    lo, hi = spec.raw_range or (0.0, 1.0)
    return lo + arr.astype(np.float32) / 255.0 * (hi - lo)


def _raw_to_batch(raw: Any, spec: ModelInterface) -> np.ndarray:
    """A float32 batch ``(N, *input_shape)`` in the raw range, from any accepted raw input."""
    if hasattr(raw, "convert") and hasattr(raw, "size"):  # one PIL image
        return _scale_uint8(_pil_to_array(raw, spec), spec)[None]
    if (
        isinstance(raw, Sequence)
        and not isinstance(raw, (str, bytes))
        and raw
        and hasattr(raw[0], "convert")
    ):
        return np.stack([_scale_uint8(_pil_to_array(r, spec), spec) for r in raw])
    if hasattr(raw, "detach"):  # a torch tensor
        raw = raw.detach().cpu().numpy()
    arr = np.asarray(raw)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise MLCycleError(
            f"Expected raw inputs as numbers, numpy arrays or PIL images, but got dtype {arr.dtype}."
        )
    is_uint8 = arr.dtype == np.uint8
    shape = spec.input_shape
    if arr.shape == shape:
        arr = arr[None]
    elif spec.layout == "NCHW" and shape[0] == 1 and arr.shape == shape[1:]:
        arr = arr[None, None]
    elif spec.layout == "NCHW" and shape[0] == 1 and arr.ndim == 3 and arr.shape[1:] == shape[1:]:
        arr = arr[:, None]
    elif spec.layout == "NCHW" and arr.ndim == 4 and arr.shape[1:] == (*shape[1:], shape[0]):
        arr = arr.transpose(0, 3, 1, 2)  # channel-last images
    elif spec.layout == "NCHW" and arr.ndim == 3 and arr.shape == (*shape[1:], shape[0]):
        arr = arr.transpose(2, 0, 1)[None]
    if arr.shape[1:] != shape:
        raise MLCycleError(
            f"Expected raw inputs of shape {shape} (one sample) or (N, {', '.join(map(str, shape))}), "
            f"but got {tuple(np.asarray(raw).shape)}."
        )
    return _scale_uint8(arr, spec) if is_uint8 else arr.astype(np.float32)
