"""ONNX export shared by the compression and export stages (private).

Uses the dynamo exporter with a dynamic batch dimension and writes **one self-contained file**
(torch 2.14 defaults to ``external_data=True``, a weights sidecar; we keep the weights inside unless
the model is over ONNX's 2 GB protobuf limit).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

_PROTOBUF_LIMIT = 2 * 1024**3 - 1


def to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    input_name: str = "input",
    output_name: str = "logits",
) -> Path:
    """Export ``model`` (in eval mode, on the CPU) to a single ONNX file at ``path``.

    Args:
        model: the module; it is exported as it is (call ``.eval()`` first if it has dropout/BN).
        example: one example batch (its batch size does not matter with ``dynamic_batch``).
        path: the ``.onnx`` file to write (parents are created).
        opset: ONNX opset version.
        dynamic_batch: make dimension 0 of input and output dynamic.
        input_name: name of the graph input.
        output_name: name of the graph output.

    Returns:
        The path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    external = n_bytes > _PROTOBUF_LIMIT
    kwargs: dict = {}
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        kwargs["dynamic_shapes"] = ({0: batch},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            verbose=False,
            **kwargs,
        )
    assert program is not None
    program.save(str(out), external_data=external)
    return out
