"""One interface over the models a monitor can watch (private).

A deployed ``Predictor`` (``predict_proba(raw) -> np.ndarray``), a LightningModule or
``nn.Module`` (normalized inputs -> logits) or any callable all become a :class:`ModelAdapter`
with ``predict_proba(raw) -> Tensor`` and, for torch modules, ``embed(raw) -> Tensor`` (the input
of the last linear layer, captured by a forward hook).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice

_OUTPUTS = ("auto", "logits", "probs")


def _normalizer(
    normalization: Mapping[str, Sequence[float]],
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.as_tensor(list(normalization["mean"]), dtype=torch.float32)
    std = torch.as_tensor(list(normalization["std"]), dtype=torch.float32)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.ndim - 2)
        return (x - mean.view(shape).to(x.device)) / std.view(shape).to(x.device)

    return normalize


class ModelAdapter:
    """Raw inputs in, class probabilities (and optionally embeddings) out.

    Args:
        model: a ``Predictor`` (anything with ``predict_proba``), an ``nn.Module`` or a callable.
        preprocess: maps a raw batch to the model's input; for a module whose ``hparams`` hold
            ``normalization`` (our ``ClassificationModule``) it defaults to that normalization.
        outputs: what the module/callable returns: ``"logits"``, ``"probs"`` or ``"auto"`` (rows
            that are non-negative and sum to 1 are taken as probabilities).
        embedding_layer: name of the module whose *input* is the embedding (``"auto"``: the last
            ``nn.Linear``), for :meth:`embed`; only for torch modules.
        batch_size: rows per forward pass.
    """

    def __init__(
        self,
        model: Any,
        *,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        outputs: str = "auto",
        embedding_layer: str | None = "auto",
        batch_size: int = 512,
    ) -> None:
        check_choice("outputs", outputs, _OUTPUTS)
        if not (hasattr(model, "predict_proba") or isinstance(model, nn.Module) or callable(model)):
            raise TypeError(
                "Expected argument `model` to be a Predictor (with `predict_proba`), an nn.Module or a "
                f"callable, but got {type(model).__name__}."
            )
        self.model = model
        self.outputs = outputs
        self.batch_size = batch_size
        self.is_predictor = hasattr(model, "predict_proba") and not isinstance(model, nn.Module)
        if preprocess is None and isinstance(model, nn.Module):
            norm = getattr(getattr(model, "hparams", None), "get", lambda _k: None)("normalization")
            if norm:
                preprocess = _normalizer(norm)
        self.preprocess = preprocess
        self.embedding_layer = (
            self._find_layer(embedding_layer) if isinstance(model, nn.Module) else None
        )

    def _find_layer(self, name: str | None) -> str | None:
        assert isinstance(self.model, nn.Module)
        if name is None:
            return None
        modules = dict(self.model.named_modules())
        if name == "auto":
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            return linears[-1] if linears else None
        if name not in modules:
            raise MLCycleError(
                f"`embedding_layer`={name!r} is not a module of the model; some names: "
                f"{[n for n in modules if n][:10]}."
            )
        return name

    @property
    def can_embed(self) -> bool:
        """Whether :meth:`embed` is available (a torch module with a linear head)."""
        return self.embedding_layer is not None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        if self.preprocess is not None:
            x = self.preprocess(x)
        if isinstance(model, nn.Module):
            param = next(model.parameters(), None)
            if param is not None:
                x = x.to(param.device, param.dtype if param.is_floating_point() else x.dtype)
            was_training = model.training
            model.eval()
            try:
                with torch.inference_mode():
                    out = model(x)
            finally:
                model.train(was_training)
        else:
            with torch.inference_mode():
                out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.as_tensor(out).float().cpu()

    def _to_probs(self, out: torch.Tensor) -> torch.Tensor:
        mode = self.outputs
        if mode == "auto":
            sums = out.sum(dim=1)
            mode = (
                "probs"
                if bool((out >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)
                else "logits"
            )
        return torch.softmax(out, dim=1) if mode == "logits" else out

    def predict_proba(self, raw: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` float32 class probabilities of a raw batch."""
        chunks = []
        for start in range(0, raw.shape[0], self.batch_size):
            batch = raw[start : start + self.batch_size]
            if self.is_predictor:
                out = self.model.predict_proba(batch.cpu().numpy())
                chunks.append(torch.as_tensor(np.asarray(out), dtype=torch.float32))
            else:
                chunks.append(self._to_probs(self._forward(batch)))
        probs = torch.cat(chunks)
        if probs.ndim != 2 or probs.shape[0] != raw.shape[0]:
            raise MLCycleError(
                f"The model must return (N, num_classes) outputs for N inputs, but got {tuple(probs.shape)} "
                f"for {raw.shape[0]} inputs."
            )
        return probs

    def embed(self, raw: torch.Tensor) -> torch.Tensor:
        """``(N, E)`` inputs of the embedding layer (penultimate features), via a forward hook."""
        if not self.can_embed:
            raise MLCycleError(
                "Embeddings need a torch module with a linear layer (or `embedding_layer`); "
                "use projection='pca' for a Predictor or a plain callable."
            )
        assert isinstance(self.model, nn.Module)
        layer = dict(self.model.named_modules())[self.embedding_layer]  # type: ignore[index]
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach().flatten(1).float().cpu())

        handle = layer.register_forward_pre_hook(hook)
        try:
            for start in range(0, raw.shape[0], self.batch_size):
                self._forward(raw[start : start + self.batch_size])
        finally:
            handle.remove()
        return torch.cat(captured)
