"""Write deployment artifacts: a ``torch.export`` program (``.pt2``), ONNX, and a TVM module.

The functions here only write files; checking that the files compute what the model computes is
:mod:`lightning_mlcycle.export.parity`'s job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._onnx import to_onnx

log = logging.getLogger(__name__)

#: batch sizes a dynamic-batch artifact accepts (ONNX Runtime and TVM take any size in this range)
_MAX_BATCH = 1 << 16


def tvm_available() -> bool:
    """Return True when Apache TVM (the ``tvm`` extra: ``pip install 'lightning-mlcycle[tvm]'``) is installed.

    Example:
        >>> isinstance(tvm_available(), bool)
        True
    """
    return importlib.util.find_spec("tvm") is not None


def _explain_export_error(model: nn.Module, err: Exception) -> MLCycleError:
    """Turn a ``torch.export`` failure into a message that names the op and the line at fault."""
    text = str(err)
    where = ""
    # torch.export ends its message with "The following call raised this error:\n  File ..."
    m = re.search(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)', text)
    if m:
        where = f" at {m.group(1)}:{m.group(2)} in {m.group(3)}(): `{m.group(4).strip()}`"
    data_dependent = "data-dependent" in text or "GuardOnDataDependent" in type(err).__name__
    name = type(model).__name__
    if data_dependent:
        expr = re.search(r"data-dependent expression (.+?) \(", text)
        op = f" (guard on {expr.group(1)})" if expr else ""
        return MLCycleError(
            f"Cannot export `{name}`: data-dependent control flow{where}{op}. A Python `if`, "
            f"`bool()` or `.item()` on a tensor's values picks the code path at run time, and an "
            f"exported graph has one path. Rewrite it with `torch.where` or `torch.cond`."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return MLCycleError(f"Cannot export `{name}` with torch.export{where}: {first}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress warnings and INFO logs (they are not the user's business)."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_program(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str] | None = None,
    *,
    dynamic_batch: bool = True,
) -> torch.export.ExportedProgram:
    """Capture ``model`` with ``torch.export`` (dynamic batch) and optionally save it as ``.pt2``.

    Args:
        model: the module, in eval mode, on the CPU.
        example: one input batch; its batch size does not matter with ``dynamic_batch``.
        path: where to save the program (``torch.export.save``); None only returns it.
        dynamic_batch: make dimension 0 of the input dynamic.

    Returns:
        The exported program.

    Raises:
        MLCycleError: the model cannot be captured; the message names the line and op (for example
            data-dependent control flow).

    Example:
        >>> prog = export_program(nn.Linear(4, 2).eval(), torch.zeros(3, 4))
        >>> prog.module()(torch.zeros(5, 4)).shape
        torch.Size([5, 2])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    kwargs: dict = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)},)
    # a batch of one would specialize the batch dimension to 1 (torch.export treats 0/1 as static)
    if dynamic_batch and example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(model, (example,), **kwargs)
    except (
        Exception
    ) as err:  # torch raises many types (UserError, GuardOnDataDependentSymNode, ...)
        raise _explain_export_error(model, err) from err
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(out))
    return program


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    input_name: str = "input",
    output_name: str = "logits",
) -> Path:
    """Write ``model`` as one self-contained ONNX file with a dynamic batch dimension.

    Uses the dynamo exporter (via the package's shared ``to_onnx``); weights go to a sidecar file
    only when the model is over ONNX's 2 GB protobuf limit. The model is first captured with
    ``torch.export`` so that a model that cannot be exported fails with the line at fault.

    Args:
        model: the module, in eval mode, on the CPU.
        example: one input batch.
        path: the ``.onnx`` file to write.
        opset: ONNX opset version (>= 18 for the dynamo exporter).
        input_name: name of the graph input.
        output_name: name of the graph output.

    Returns:
        The path written.

    Example:
        >>> import tempfile, onnx
        >>> p = export_onnx(nn.Linear(4, 2).eval(), torch.zeros(3, 4), tempfile.mkdtemp() + "/m.onnx")
        >>> [d.dim_param or d.dim_value for d in
        ...  onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim][1]
        4
    """
    if not isinstance(opset, int) or opset < 18:
        raise ValueError(
            f"`opset` must be an integer >= 18 (the dynamo exporter's minimum), but got {opset!r}."
        )
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with _quiet(), torch.no_grad():
            return to_onnx(
                model, example, path, opset=opset, input_name=input_name, output_name=output_name
            )
    except Exception as err:
        # the ONNX exporter's message buries the cause; torch.export alone names the line at fault
        export_program(model, example)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MLCycleError(f"ONNX export of `{type(model).__name__}` failed: {first}") from err


def compile_tvm(
    source: torch.export.ExportedProgram | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    target: str = "llvm",
) -> Path:
    """Compile an exported program or an ONNX file with Apache TVM and save the shared library.

    Needs the ``tvm`` extra. The library is loaded back with
    :class:`~lightning_mlcycle.export.runtimes.TvmRunner`.

    Args:
        source: a ``torch.export`` program, or the path of an ``.onnx`` file.
        path: the shared library to write (``.so``).
        target: TVM target string; ``"llvm"`` compiles for this machine's CPU.

    Returns:
        The path written.

    Raises:
        MLCycleError: TVM is not installed, or it cannot import/compile the model.
    """
    if not tvm_available():
        raise MLCycleError(
            "TVM is not installed: `pip install 'lightning-mlcycle[tvm]'` (the apache-tvm wheel) "
            "to compile for the CPU, or leave 'tvm' out of `formats`."
        )
    import tvm
    from tvm import relax

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet():
            if isinstance(source, torch.export.ExportedProgram):
                from tvm.relax.frontend.torch import from_exported_program

                mod = from_exported_program(source, keep_params_as_input=False)
            else:
                import onnx
                from tvm.relax.frontend.onnx import from_onnx

                mod = from_onnx(onnx.load(str(source)), keep_params_in_input=False)
            executable = tvm.compile(mod, target=target)
            executable.export_library(str(out))
    except Exception as err:
        what = (
            "the exported program"
            if isinstance(source, torch.export.ExportedProgram)
            else str(source)
        )
        raise MLCycleError(f"TVM could not compile {what} for target {target!r}: {err}") from err
    del relax
    return out
