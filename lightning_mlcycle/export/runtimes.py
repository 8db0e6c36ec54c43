"""Run an artifact on numpy batches: PyTorch eager, a ``.pt2`` program, ONNX Runtime, TVM.

Every runner is a callable ``runner(x: np.ndarray) -> np.ndarray`` (normalized inputs in, logits
out) with a ``runtime`` name, so the parity check and the latency report treat them alike.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError

log = logging.getLogger(__name__)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (recorded in the model card, checked when the file is loaded).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
        >>> _ = p.write_bytes(b"abc")
        >>> file_sha256(p)[:12]
        'ba7816bf8f01'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class EagerRunner:
    """A PyTorch module run eagerly under ``torch.inference_mode``.

    Args:
        module: the model (put in eval mode here).
        device: where to run it (``"cpu"`` or ``"cuda"``).

    Example:
        >>> run = EagerRunner(nn.Linear(4, 2))
        >>> run(np.zeros((3, 4), dtype=np.float32)).shape
        (3, 2)
    """

    runtime = "eager"

    def __init__(self, module: nn.Module, device: str = "cpu") -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Expected argument `module` to be a torch.nn.Module, but got {type(module).__name__}."
            )
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch."""
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        return out.float().cpu().numpy()


class ProgramRunner(EagerRunner):
    """A saved ``torch.export`` program (``.pt2``), loaded back and run.

    Args:
        path: the ``.pt2`` file.
        device: where to run it.
    """

    runtime = "torch.export"

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise MLCycleError(f"`path` must be an existing .pt2 file, but got {str(path)!r}.")
        try:
            program = torch.export.load(str(path))
        except Exception as err:
            raise MLCycleError(f"Cannot load the exported program {str(path)!r}: {err}") from err
        self.device = torch.device(device)
        self.module = program.module().to(self.device)


def _check_onnx_file(path: Path, sha256: str | None) -> None:
    if not path.is_file():
        raise MLCycleError(f"ONNX file {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise MLCycleError(f"ONNX file {str(path)!r} is empty (0 bytes): the export was truncated.")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            raise MLCycleError(
                f"ONNX file {str(path)!r} does not match the SHA-256 recorded in its model card "
                f"(expected {sha256[:16]}..., got {actual[:16]}...): it was modified or truncated "
                f"after export. Export it again."
            )


class OnnxRuntimeRunner:
    """An ONNX file run with ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: ``torch.get_num_threads()``, so runtimes compare fairly).
        device: ``"cpu"``, or ``"cuda"`` to use the CUDA provider when onnxruntime-gpu has it.
        sha256: the expected file hash (from the model card); a mismatch raises before loading.

    Raises:
        MLCycleError: the file is missing, empty, does not match ``sha256``, or ONNX Runtime cannot
            parse it (a tampered or truncated file).

    Example:
        >>> import tempfile, onnx
        >>> from onnx import TensorProto, helper
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Relu", ["x"], ["y"])], "relu",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
        >>> path = tempfile.mkdtemp() + "/relu.onnx"
        >>> onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
        >>> OnnxRuntimeRunner(path)(-np.ones((7, 4), dtype=np.float32)).max()
        np.float32(0.0)
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        device: str = "cpu",
        sha256: str | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        _check_onnx_file(self.path, sha256)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # ORT's workers spin-wait after each run by default; next to torch (eager timings, the
        # training process, other jobs on a small CPU) that steals the cores and made eager
        # latencies 100x slower in a full mlcycle run. Sleeping costs ORT a few microseconds.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as err:
            raise MLCycleError(
                f"ONNX Runtime cannot load {str(self.path)!r} (tampered, truncated or not an ONNX "
                f"model): {str(err).strip().splitlines()[0]}"
            ) from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise MLCycleError(
                f"ONNX model {str(self.path)!r} must have one input, but has {[i.name for i in inputs]}."
            )
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]


class TvmRunner:
    """A TVM-compiled shared library (see :func:`~lightning_mlcycle.export.exporters.compile_tvm`).

    Args:
        path: the ``.so`` file.
        device: ``"cpu"`` (the ``llvm`` target) or ``"cuda"``.
    """

    runtime = "tvm"

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu") -> None:
        from lightning_mlcycle.export.exporters import tvm_available

        if not tvm_available():
            raise MLCycleError("TVM is not installed: `pip install 'lightning-mlcycle[tvm]'`.")
        import tvm
        from tvm import relax

        self.path = Path(path)
        if not self.path.is_file():
            raise MLCycleError(f"TVM library {str(self.path)!r} does not exist.")
        self._tvm = tvm
        self.dev = tvm.cuda() if device.startswith("cuda") else tvm.cpu()
        try:
            self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(self.path)), self.dev)
        except Exception as err:
            raise MLCycleError(f"TVM cannot load {str(self.path)!r}: {err}") from err
        self._main = self.vm["main"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a batch."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self._main(self._tvm.runtime.tensor(x, self.dev))
        if not hasattr(out, "numpy"):  # a tuple of outputs
            out = out[0]
        return out.numpy()
