"""Teachers for distillation: from a module, one of our checkpoints or an ONNX file (private)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError

log = logging.getLogger(__name__)


class OnnxTeacher(nn.Module):
    """An ONNX model run by ONNX Runtime, behind the ``nn.Module`` interface (no parameters).

    The session is created on first use (and dropped when pickled, so the module can be copied or
    sent to DDP workers). Inputs are moved to the CPU as ``float32`` numpy arrays and the outputs
    come back on the input's device; on a CUDA input the CUDA execution provider is used when
    ONNX Runtime has it.

    Args:
        path: the ``.onnx`` file (one input, the first output is taken as the logits).

    Example:
        >>> import os, tempfile
        >>> import onnx
        >>> from onnx import TensorProto, helper
        >>> io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in "xy"]
        >>> graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [io[0]], [io[1]])
        >>> path = os.path.join(tempfile.mkdtemp(), "relu.onnx")
        >>> onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
        >>> OnnxTeacher(path)(torch.tensor([[-1.0, 0.0, 2.0]])).tolist()
        [[0.0, 0.0, 2.0]]
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = str(path)
        if not Path(self.path).is_file():
            raise MLCycleError(f"`teacher`: the ONNX file {self.path!r} does not exist.")
        self._session: Any = None
        self._session_cuda: bool | None = None

    def _get_session(self, cuda: bool) -> Any:
        if self._session is None or self._session_cuda != cuda:
            import onnxruntime as ort

            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if cuda and "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
            opts = ort.SessionOptions()
            # the teacher runs between the student's torch steps: spinning ORT workers would
            # steal the cores torch trains on
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(self.path, opts, providers=providers)
            self._session_cuda = cuda
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from ONNX Runtime, as a tensor on ``x``'s device (no gradient)."""
        session = self._get_session(x.is_cuda)
        feed = {session.get_inputs()[0].name: x.detach().float().cpu().numpy()}
        out = session.run(None, feed)[0]
        return torch.from_numpy(out).to(x.device)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        state["_session_cuda"] = None
        return state

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def resolve_teacher(teacher: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Turn what the user gave as a teacher into an ``nn.Module`` and what it tells about the data.

    Accepts an ``nn.Module`` (a :class:`~lightning_mlcycle.models.ClassificationModule` gives its
    backbone), a path to one of our Lightning checkpoints, or a path to an ``.onnx`` file.

    Returns:
        The module and ``{"input_shape": ..., "num_classes": ..., "onnx": bool}`` (what is known).
    """
    from lightning_mlcycle.models import ClassificationModule

    meta: dict[str, Any] = {"onnx": False}
    if isinstance(teacher, (str, os.PathLike)):
        path = Path(teacher)
        if not path.is_file():
            raise MLCycleError(
                f"`teacher`: no file at {str(path)!r}; pass an nn.Module, a checkpoint (.ckpt) "
                f"or an ONNX file (.onnx)."
            )
        if path.suffix.lower() == ".onnx":
            meta["onnx"] = True
            return OnnxTeacher(path), meta
        try:
            # our checkpoints keep `backbone_config` in their hyper-parameters, so the module
            # rebuilds itself; weights_only keeps loading safe for untrusted files
            teacher = ClassificationModule.load_from_checkpoint(
                path, map_location="cpu", weights_only=True
            )
        except Exception as err:  # noqa: BLE001 - re-raised with the context that explains it
            raise MLCycleError(
                f"`teacher`: could not load {str(path)!r} as a ClassificationModule checkpoint "
                f"({type(err).__name__}: {err}). Pass the module itself for other checkpoints."
            ) from err
    if isinstance(teacher, ClassificationModule):
        hp = teacher.hparams
        if hp.get("input_shape"):
            meta["input_shape"] = tuple(int(s) for s in hp["input_shape"])
        meta["num_classes"] = int(teacher.num_classes)
        return teacher.backbone, meta
    if isinstance(teacher, nn.Module):
        return teacher, meta
    raise TypeError(
        f"Expected argument `teacher` to be an nn.Module, a checkpoint path or an .onnx path, "
        f"but got {type(teacher).__name__}."
    )
