"""Load a trained ``ClassificationModule`` from a checkpoint, with clear errors for bad files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lightning_mlcycle._errors import MLCycleError


def load_classifier(path: str | os.PathLike[str]) -> Any:
    """Rebuild a ``ClassificationModule`` from one of our checkpoints (``weights_only=True``).

    The backbone is rebuilt from the ``backbone_config`` hyper-parameter saved in the checkpoint,
    so no code of the training run is needed.

    Args:
        path: a ``.ckpt`` written by a Trainer training a ``ClassificationModule``.

    Returns:
        The module, in eval mode, on the CPU.

    Raises:
        MLCycleError: the file does not exist, is not a PyTorch checkpoint (or needs unsafe
            unpickling), or was not written for a ``ClassificationModule`` with a backbone config.

    Example:
        >>> load_classifier("no/such/file.ckpt")
        Traceback (most recent call last):
        ...
        lightning_mlcycle._errors.MLCycleError: Checkpoint 'no/such/file.ckpt' does not exist.
    """
    from lightning_mlcycle.models import ClassificationModule

    p = Path(path)
    if not p.is_file():
        raise MLCycleError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise MLCycleError(
            f"{str(path)!r} is not a PyTorch checkpoint that loads with weights_only=True: "
            f"{str(err).strip().splitlines()[0]}"
        ) from err
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "state_dict" not in ckpt:
        raise MLCycleError(
            f"{str(path)!r} is not a Lightning checkpoint (no `state_dict` and `hyper_parameters`)."
        )
    if not hp.get("backbone_config") or not hp.get("num_classes"):
        raise MLCycleError(
            f"{str(path)!r} was not written for a lightning_mlcycle ClassificationModule: its "
            f"hyper-parameters have no `backbone_config` to rebuild the network from "
            f"(found {sorted(hp)})."
        )
    try:
        module = ClassificationModule.load_from_checkpoint(
            str(p), map_location="cpu", weights_only=True
        )
    except Exception as err:
        raise MLCycleError(f"Cannot rebuild the model from {str(path)!r}: {err}") from err
    return module.eval()
