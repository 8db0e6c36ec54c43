"""Post-training quantization of an fp32 ONNX model with ONNX Runtime, and the numbers to judge it.

Static quantization calibrates activation ranges on a few batches (e.g. of the validation loader)
and writes a QDQ graph with per-channel int8 weights and uint8 activations, the format ONNX Runtime
fuses into integer kernels on x86 (``QLinearConv``, ``QGemm``; "U8S8" in ONNX Runtime's
quantization guide). Dynamic quantization stores int8 weights and quantizes activations on the fly;
it needs no calibration and suits Linear-heavy models (MLPs, transformers).

The measuring helpers (accuracy, median latency, file size) are shared with the QAT and binarized
variants so that one report compares them all on the same data and the same session settings.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._onnx import compact_onnx
from lightning_mlcycle._utils import check_choice, check_positive

log = logging.getLogger(__name__)

_QUANT_TYPES = ("int8", "uint8")
_CALIBRATION = ("minmax", "entropy", "percentile")


def require_onnxruntime() -> Any:
    """Import ``onnxruntime`` or raise an error that says how to install it."""
    try:
        import onnxruntime
        import onnxruntime.quantization  # noqa: F401
    except ImportError as err:
        raise MLCycleError(
            f"Post-training quantization needs the onnxruntime back-end, which is not installed ({err}). "
            "Install it with `pip install onnxruntime onnx`."
        ) from err
    return onnxruntime


def needs_reduce_range() -> bool:
    """True on x86 CPUs without VNNI, where ONNX Runtime's u8 x s8 kernels can saturate.

    Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with ``VPMADDUBSW``,
    which adds pairs of products in int16 and saturates (255 * 127 * 2 > 32767); its quantization
    guide recommends 7-bit weights (``reduce_range``) there. On such a CPU an int8 MLP here was
    off by 25% of its logit range without it and by 2% with it.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _quant_type(name: str, value: str) -> Any:
    from onnxruntime.quantization import QuantType

    check_choice(name, value, _QUANT_TYPES)
    return QuantType.QInt8 if value == "int8" else QuantType.QUInt8


def _inputs(batch: Any) -> np.ndarray:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _input_name(path: str | os.PathLike[str]) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise MLCycleError(f"Expected an ONNX model with one input, but {path} has {names}.")
    return names[0]


def _reader(path: Path, batches: Iterable[Any], num_batches: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    name = _input_name(path)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[Any] = iter(batches)
            self._left = num_batches

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._left <= 0:
                return None
            batch = next(self._it, None)
            if batch is None:
                return None
            self._left -= 1
            return {name: _inputs(batch)}

    return _Reader()


def quantize_static_onnx(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    calibration_batches: Iterable[Any],
    *,
    num_batches: int = 8,
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    calibration: str = "minmax",
    preprocess: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Statically quantize an fp32 ONNX model to int8 QDQ, calibrated on a few batches.

    Args:
        model_path: the fp32 ONNX file (one input; e.g. from ``lightning_mlcycle._onnx.to_onnx``).
        output_path: where to write the int8 model.
        calibration_batches: an iterable of inputs or ``(inputs, target)`` batches, normalized as
            the model expects (a validation ``DataLoader`` works as is).
        num_batches: how many batches to calibrate on.
        per_channel: one weight scale per output channel (more accurate for convolutions).
        activation_type: ``"uint8"`` (fastest on x86) or ``"int8"``.
        weight_type: ``"int8"`` or ``"uint8"``.
        calibration: ``"minmax"``, ``"entropy"`` or ``"percentile"`` range estimation.
        preprocess: run ONNX Runtime's ``quant_pre_process`` (shape inference and graph
            optimization) first, as its documentation recommends.
        reduce_range: 7-bit weights; None decides by this CPU (:func:`needs_reduce_range`).

    Returns:
        ``output_path``.

    Example:
        >>> import tempfile
        >>> from lightning_mlcycle._onnx import to_onnx
        >>> d = Path(tempfile.mkdtemp())
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        ...                           torch.nn.Linear(8 * 6 * 6, 4)).eval()
        >>> fp32 = to_onnx(net, torch.randn(2, 1, 8, 8), d / "fp32.onnx")
        >>> q = quantize_static_onnx(fp32, d / "int8.onnx", [torch.randn(4, 1, 8, 8)] * 2)
        >>> count_ops(q)["QuantizeLinear"] > 0
        True
    """
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    check_positive("num_batches", num_batches)
    check_choice("calibration", calibration, _CALIBRATION)
    act, wt = _quant_type("activation_type", activation_type), _quant_type("weight_type", weight_type)
    src, out = Path(model_path), Path(output_path)
    if not src.is_file():
        raise MLCycleError(f"`model_path` {src} does not exist.")
    out.parent.mkdir(parents=True, exist_ok=True)
    if preprocess:
        src = _preprocess(src, out.with_name(out.stem + ".pre.onnx"))
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[calibration]
    try:
        quantize_static(
            str(src),
            str(out),
            _reader(src, calibration_batches, num_batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=act,
            weight_type=wt,
            calibrate_method=method,
            reduce_range=needs_reduce_range() if reduce_range is None else bool(reduce_range),
        )
    finally:
        if preprocess and src != Path(model_path):
            src.unlink(missing_ok=True)
    compact_onnx(out)
    return out


def _preprocess(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as err:  # noqa: BLE001 - symbolic shape inference fails on some graphs
        log.info("quant_pre_process failed (%s); quantizing the model as exported.", err)
        return src
    return dst


def quantize_dynamic_onnx(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    per_channel: bool = False,
    weight_type: str = "int8",
    reduce_range: bool | None = None,
) -> Path:
    """Dynamically quantize an fp32 ONNX model (int8 weights, activations quantized at run time).

    ``reduce_range`` (7-bit weights) defaults to what this CPU needs (:func:`needs_reduce_range`).

    Example:
        >>> import tempfile
        >>> from lightning_mlcycle._onnx import to_onnx
        >>> d = Path(tempfile.mkdtemp())
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> q = quantize_dynamic_onnx(to_onnx(mlp, torch.randn(2, 16), d / "m.onnx"), d / "m8.onnx")
        >>> "DynamicQuantizeLinear" in count_ops(q) or "MatMulInteger" in count_ops(q)
        True
    """
    require_onnxruntime()
    from onnxruntime.quantization import quantize_dynamic

    src, out = Path(model_path), Path(output_path)
    if not src.is_file():
        raise MLCycleError(f"`model_path` {src} does not exist.")
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(src),
        str(out),
        per_channel=per_channel,
        weight_type=_quant_type("weight_type", weight_type),
        reduce_range=needs_reduce_range() if reduce_range is None else bool(reduce_range),
    )
    return out


def count_ops(path: str | os.PathLike[str]) -> Counter[str]:
    """How many nodes of each op type the ONNX graph has."""
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """A CPU ``InferenceSession`` with full graph optimization (``threads`` intra-op threads)."""
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # sleep instead of spin-waiting between runs, so torch work timed or run next to it keeps its cores
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: str | os.PathLike[str] | Any, batches: Iterable[Any], *, threads: int | None = None) -> float:
    """Top-1 accuracy of an ONNX classifier (logits out) on ``(inputs, targets)`` batches."""
    sess = path if hasattr(path, "run") else session(path, threads=threads)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for batch in batches:
        x, y = _inputs(batch), batch[1]
        logits = sess.run(None, {name: x})[0]
        y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        correct += int((logits.argmax(-1) == y).sum())
        total += int(y.shape[0])
    if total == 0:
        raise MLCycleError("`batches` is empty: cannot measure accuracy.")
    return correct / total


def onnx_latency_ms(
    path: str | os.PathLike[str] | Any,
    sample_shape: tuple[int, ...],
    batch_size: int,
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Median wall time (ms) of one ``session.run`` on a random batch of ``batch_size``."""
    check_positive("batch_size", batch_size)
    check_positive("repeats", repeats)
    sess = path if hasattr(path, "run") else session(path, threads=threads)
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch_size, *sample_shape)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of a model file plus its external-data sidecar, if any."""
    p = Path(path)
    size = p.stat().st_size
    sidecar = p.with_name(p.name + ".data")
    return size + (sidecar.stat().st_size if sidecar.exists() else 0)


#: report columns: (key, header)
REPORT_COLUMNS = (
    ("accuracy", "accuracy"),
    ("size_bytes", "size (KB)"),
    ("smaller_x", "x smaller"),
    ("latency_b1_ms", "latency b1 (ms)"),
    ("latency_b64_ms", "latency b64 (ms)"),
    ("speedup_b64_x", "x faster b64"),
)


def measure_onnx(
    path: str | os.PathLike[str],
    batches: Iterable[Any],
    sample_shape: tuple[int, ...],
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    repeats: int = 20,
    threads: int | None = None,
) -> dict[str, float]:
    """Accuracy, file size and median latency per batch size of one ONNX classifier."""
    sess = session(path, threads=threads)
    row: dict[str, float] = {"accuracy": round(onnx_accuracy(sess, batches), 4), "size_bytes": file_size(path)}
    for b in batch_sizes:
        row[f"latency_b{b}_ms"] = round(onnx_latency_ms(sess, sample_shape, b, repeats=repeats), 3)
    return row


def add_ratios(rows: dict[str, dict[str, Any]], baseline: str = "fp32_ort") -> dict[str, dict[str, Any]]:
    """Add ``smaller_x`` and ``speedup_b64_x`` against the ``baseline`` row (in place).

    Example:
        >>> rows = {"fp32_ort": {"size_bytes": 400, "latency_b64_ms": 8.0},
        ...         "int8": {"size_bytes": 100, "latency_b64_ms": 2.0}}
        >>> add_ratios(rows)["int8"]["smaller_x"], rows["int8"]["speedup_b64_x"]
        (4.0, 4.0)
    """
    base = rows.get(baseline)
    if not base:
        return rows
    for row in rows.values():
        if row.get("size_bytes") and base.get("size_bytes"):
            row["smaller_x"] = round(base["size_bytes"] / row["size_bytes"], 2)
        if row.get("latency_b64_ms") and base.get("latency_b64_ms"):
            row["speedup_b64_x"] = round(base["latency_b64_ms"] / row["latency_b64_ms"], 2)
    return rows


def quantization_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table of report rows (missing cells left blank).

    Example:
        >>> print(quantization_table({"int8": {"accuracy": 0.9, "size_bytes": 2048}}))
        | model | accuracy | size (KB) |
        |---|---|---|
        | int8 | 0.9 | 2 |
    """
    cols = [(k, h) for k, h in REPORT_COLUMNS if any(k in r for r in rows.values())]
    lines = ["| model | " + " | ".join(h for _, h in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for key, _ in cols:
            v = row.get(key, "")
            if key == "size_bytes" and v != "":
                v = round(v / 1024, 1)
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
