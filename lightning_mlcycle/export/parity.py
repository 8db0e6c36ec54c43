"""Parity check: does an artifact compute what the PyTorch model computes, within its precision?

Tolerances per precision:

* ``fp32``: ``max|y - y_ref| <= atol + rtol * max|y_ref|`` (tight: the same arithmetic, only the
  order of float additions differs between runtimes);
* ``fp16``/``bf16``: the same rule with a looser ``rtol`` plus class agreement;
* ``int8``: agreement of predicted classes (default >= 97%, in the spirit of MLPerf Inference's
  "99% of the fp32 accuracy" target for quantized models, loosened for small test sets) and a bound
  on the relative L2 error of the logits (default 0.25), since int8 logits differ by design.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_mlcycle._errors import MLCycleError

_QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
}


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact of one precision must be to the reference.

    Args:
        atol: absolute part of the max-error bound.
        rtol: relative part, times ``max|y_ref|``; None skips the max-error rule.
        min_agreement: minimum share of samples with the same predicted class; None skips it.
        max_rel_l2: maximum ``||y - y_ref|| / ||y_ref||``; None skips it.

    Example:
        >>> Tolerance(atol=1e-5, rtol=1e-4).rtol
        0.0001
    """

    atol: float = 0.0
    rtol: float | None = None
    min_agreement: float | None = None
    max_rel_l2: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol", "max_rel_l2"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"`{name}` cannot be negative, but got {name}={v!r}.")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"`min_agreement` must be in [0, 1], but got {self.min_agreement!r}.")


#: default tolerance per precision (override with ``export_model(..., tolerances={...})``)
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # fp32 runtimes reorder additions; 1e-4 of the logit scale is ~1000x the float epsilon
    "fp32": Tolerance(atol=1e-5, rtol=1e-4),
    "fp16": Tolerance(atol=1e-3, rtol=1e-2, min_agreement=0.99),
    "bf16": Tolerance(atol=1e-2, rtol=5e-2, min_agreement=0.98),
    "int8": Tolerance(min_agreement=0.97, max_rel_l2=0.25),
}


def merge_tolerances(overrides: Mapping[str, Any] | None) -> dict[str, Tolerance]:
    """Defaults updated with ``{precision: Tolerance | {field: value}}``.

    Example:
        >>> merge_tolerances({"int8": {"min_agreement": 0.9}})["int8"].min_agreement
        0.9
    """
    out = dict(DEFAULT_TOLERANCES)
    for key, value in (overrides or {}).items():
        if key not in out:
            raise ValueError(f"Expected `tolerances` keys in {sorted(out)}, but got {key!r}.")
        if isinstance(value, Tolerance):
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = dataclasses.replace(out[key], **dict(value))
        else:
            raise TypeError(
                f"`tolerances[{key!r}]` must be a Tolerance or a mapping, but got {value!r}."
            )
    return out


def onnx_precision(path: str | os.PathLike[str]) -> str:
    """``"int8"`` when the ONNX graph holds quantization ops, else the input's float type.

    Example:
        >>> import tempfile, onnx
        >>> from onnx import TensorProto, helper
        >>> graph = helper.make_graph(
        ...     [helper.make_node("Relu", ["x"], ["y"])], "relu",
        ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
        >>> path = tempfile.mkdtemp() + "/relu.onnx"
        >>> onnx.save(helper.make_model(graph), path)
        >>> onnx_precision(path)
        'fp32'
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    for fn in model.functions:
        ops |= {n.op_type for n in fn.node}
    if ops & _QUANT_OPS:
        return "int8"
    elem = model.graph.input[0].type.tensor_type.elem_type if model.graph.input else 1
    return {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}.get(elem, "fp32")


def module_precision(module: Any) -> str:
    """Precision of a PyTorch module: ``int8`` if it holds quantized/int8 weights, else its float type.

    Example:
        >>> import torch
        >>> module_precision(torch.nn.Linear(2, 2).half())
        'fp16'
    """
    import torch

    names = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    found = "fp32"
    for t in list(module.parameters()) + list(module.buffers()):
        if t.dtype in (torch.qint8, torch.quint8, torch.int8, torch.uint8) or t.is_quantized:
            return "int8"
        if type(t).__name__ != "Parameter" and type(t).__name__ != "Tensor":
            return "int8"  # a torchao-style tensor subclass holding packed int weights
        found = names.get(t.dtype, found)
    return found


@dataclass(frozen=True)
class ParityResult:
    """Outcome of one artifact/runtime compared with the reference on the same inputs.

    Attributes:
        artifact: the artifact's name (e.g. ``model.onnx``).
        runtime: the runtime that ran it (``onnxruntime``, ``tvm``, ``torch.export``).
        precision: the tolerance class used (``fp32``, ``fp16``, ``bf16``, ``int8``).
        samples: number of compared samples.
        max_abs_error: ``max|y - y_ref|``.
        rel_l2_error: ``||y - y_ref|| / ||y_ref||``.
        agreement: share of samples with the same predicted class.
        passed: whether every rule of the tolerance holds.
        rule: the rule, with the measured numbers, in words.
    """

    artifact: str
    runtime: str
    precision: str
    samples: int
    max_abs_error: float
    rel_l2_error: float
    agreement: float
    passed: bool
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


class ParityError(MLCycleError):
    """An exported artifact does not reproduce the model within its tolerance (message: the numbers)."""


def compare_outputs(
    output: np.ndarray,
    reference: np.ndarray,
    *,
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
    artifact: str = "artifact",
    runtime: str = "runtime",
) -> ParityResult:
    """Compare an artifact's logits with the reference logits (pure function).

    Example:
        >>> ref = np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32)
        >>> compare_outputs(ref + 1e-7, ref).passed
        True
        >>> compare_outputs(ref + 0.5, ref).rule
        'max|y - y_ref| = 0.5 <= 1e-05 + 0.0001 * 3 = 0.00031: no'
    """
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(
            f"Expected argument `precision` to be one of {sorted(DEFAULT_TOLERANCES)}, but got {precision!r}."
        )
    tol = tolerance or DEFAULT_TOLERANCES[precision]
    out = np.asarray(output, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if out.shape != ref.shape:
        raise ParityError(
            f"Parity check of {artifact} ({runtime}): output shape {tuple(out.shape)} differs from "
            f"the model's {tuple(ref.shape)}."
        )
    if not np.all(np.isfinite(out)):
        bad = int(np.sum(~np.isfinite(out)))
        return ParityResult(
            artifact,
            runtime,
            precision,
            int(ref.shape[0]),
            float("nan"),
            float("nan"),
            0.0,
            False,
            f"{bad} non-finite outputs: no",
        )
    err = np.abs(out - ref)
    max_abs = float(err.max()) if err.size else 0.0
    ref_norm = float(np.linalg.norm(ref)) or 1.0
    rel_l2 = float(np.linalg.norm(out - ref) / ref_norm)
    agree = float(np.mean(out.argmax(-1) == ref.argmax(-1))) if ref.ndim > 1 else 1.0
    rules: list[tuple[str, bool]] = []
    if tol.rtol is not None:
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        bound = tol.atol + tol.rtol * scale
        rules.append(
            (
                f"max|y - y_ref| = {max_abs:.3g} <= {tol.atol:g} + {tol.rtol:g} * {scale:.3g} "
                f"= {bound:.3g}",
                max_abs <= bound,
            )
        )
    if tol.min_agreement is not None:
        rules.append(
            (f"class agreement = {agree:.4f} >= {tol.min_agreement:g}", agree >= tol.min_agreement)
        )
    if tol.max_rel_l2 is not None:
        rules.append(
            (
                f"||y - y_ref|| / ||y_ref|| = {rel_l2:.3g} <= {tol.max_rel_l2:g}",
                rel_l2 <= tol.max_rel_l2,
            )
        )
    passed = all(ok for _, ok in rules)
    rule = "; ".join(f"{text}: {'yes' if ok else 'no'}" for text, ok in rules)
    return ParityResult(
        artifact, runtime, precision, int(ref.shape[0]), max_abs, rel_l2, agree, passed, rule
    )


def check_parity(
    runner: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray] | np.ndarray,
    inputs: np.ndarray,
    *,
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
    artifact: str = "artifact",
    runtime: str | None = None,
    batch_size: int = 64,
    raise_on_failure: bool = True,
) -> ParityResult:
    """Run ``runner`` and ``reference`` on ``inputs`` (in batches) and compare the outputs.

    Args:
        runner: the artifact, ``runner(x) -> logits`` (e.g. an ``OnnxRuntimeRunner``).
        reference: the PyTorch model as a runner, or its precomputed logits on ``inputs``.
        inputs: real (normalized) samples, ``(N, ...)``.
        precision: tolerance class, see :data:`DEFAULT_TOLERANCES`.
        tolerance: overrides the default tolerance of ``precision``.
        artifact: name shown in the result and the error.
        runtime: runtime name (default: ``runner.runtime``).
        batch_size: samples per call, so large test sets fit in memory.
        raise_on_failure: raise :class:`ParityError` (with the measured error) when the check fails.

    Returns:
        The :class:`ParityResult`.

    Example:
        >>> from lightning_mlcycle.export.runtimes import EagerRunner
        >>> import torch
        >>> m = EagerRunner(torch.nn.Linear(4, 3))
        >>> check_parity(m, m, np.ones((5, 4), dtype=np.float32)).passed
        True
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, but got batch_size={batch_size!r}.")
    inputs = np.asarray(inputs, dtype=np.float32)
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(f"`inputs` must hold at least one sample, but got shape {inputs.shape}.")
    chunks = [inputs[i : i + batch_size] for i in range(0, inputs.shape[0], batch_size)]
    out = np.concatenate([np.asarray(runner(c)) for c in chunks])
    ref = (
        reference
        if isinstance(reference, np.ndarray)
        else np.concatenate([np.asarray(reference(c)) for c in chunks])
    )
    result = compare_outputs(
        out,
        ref,
        precision=precision,
        tolerance=tolerance,
        artifact=artifact,
        runtime=runtime or getattr(runner, "runtime", type(runner).__name__),
    )
    if raise_on_failure and not result.passed:
        raise ParityError(
            f"Parity check failed for {result.artifact} on {result.runtime} ({result.precision}, "
            f"{result.samples} samples): {result.rule}. Max abs error {result.max_abs_error:.4g}, "
            f"relative L2 error {result.rel_l2_error:.4g}, class agreement {result.agreement:.4f}."
        )
    return result
