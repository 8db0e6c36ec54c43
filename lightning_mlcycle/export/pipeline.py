"""``export_model``: artifacts, parity checks, latency report and model card in one call."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.export.card import build_model_card, write_model_card
from lightning_mlcycle.export.exporters import (
    compile_tvm,
    export_onnx,
    export_program,
    tvm_available,
)
from lightning_mlcycle.export.interface import ModelInterface
from lightning_mlcycle.export.latency import (
    LatencyRow,
    hardware_info,
    latency_markdown,
    measure_latency,
    tile_batch,
)
from lightning_mlcycle.export.parity import (
    ParityResult,
    check_parity,
    merge_tolerances,
    module_precision,
    onnx_precision,
)
from lightning_mlcycle.export.runtimes import (
    EagerRunner,
    OnnxRuntimeRunner,
    ProgramRunner,
    TvmRunner,
    file_sha256,
)

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2", "tvm")
RUNTIMES = ("eager", "torch.export", "onnxruntime", "tvm")
_SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "tvm": ".so"}
_RUNNER_OF_FORMAT = {"onnx": "onnxruntime", "pt2": "torch.export", "tvm": "tvm"}
_SYNTHETIC_SAMPLES = 64


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured.

    Attributes:
        directory: the export folder.
        artifacts: one dict per file (name, variant, format, precision, bytes, sha256, parity).
        parity: every parity check (all passed, or :class:`ParityError` was raised).
        latency: the latency report's rows.
        hardware: the machine it was measured on.
        card: the model card (also in ``model_card.json``).
        skipped: variant or artifact -> why it was not exported (e.g. an op ONNX lacks).
    """

    directory: Path
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    parity: list[ParityResult] = field(default_factory=list)
    latency: list[LatencyRow] = field(default_factory=list)
    hardware: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def path(self, file: str) -> Path:
        """Absolute path of an artifact by file name (e.g. ``"model.onnx"``)."""
        return self.directory / file

    def summary(self, prefix: str = "export/") -> dict[str, Any]:
        """A few flat numbers for the CLI summary: counts and the batch-1 latency per artifact."""
        out: dict[str, Any] = {
            f"{prefix}artifacts": len(self.artifacts),
            f"{prefix}parity_passed": sum(p.passed for p in self.parity),
        }
        for r in self.latency:
            if r.batch_size == 1:
                out[f"{prefix}{r.artifact}/{r.runtime}/b1_ms"] = round(r.median_ms, 4)
        for name in self.skipped:
            out[f"{prefix}{name}/skipped"] = True
        return out


@contextlib.contextmanager
def _on_cpu_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Export a model on the CPU in eval mode, then put it back as it was (device and mode)."""
    training = model.training
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    model.eval().cpu()
    try:
        yield model
    finally:
        model.train(training)
        model.to(device)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _module_bytes(m: nn.Module) -> int:
    return int(sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers())))


def _export_module(
    variant: str,
    module: nn.Module,
    example: torch.Tensor,
    out_dir: Path,
    formats: Sequence[str],
    opset: int,
    interface: ModelInterface,
    device: str,
) -> list[tuple[str, str, Path, Callable[[np.ndarray], np.ndarray]]]:
    """Write the artifacts of one module; return ``(format, runtime, path, runner)`` per artifact."""
    stem = "model" if variant == "dense" else f"model_{variant}"
    program = export_program(module, example, out_dir / f"{stem}.pt2" if "pt2" in formats else None)
    made: list[tuple[str, str, Path, Callable[[np.ndarray], np.ndarray]]] = []
    if "pt2" in formats:
        p = out_dir / f"{stem}.pt2"
        made.append(("pt2", "torch.export", p, ProgramRunner(p, device=device)))
    if "onnx" in formats:
        p = export_onnx(
            module,
            example,
            out_dir / f"{stem}.onnx",
            opset=opset,
            input_name=interface.input_name,
            output_name=interface.output_name,
        )
        made.append(("onnx", "onnxruntime", p, OnnxRuntimeRunner(p, device=device)))
    if "tvm" in formats:
        p = compile_tvm(
            program, out_dir / f"{stem}_tvm.so", target="llvm"
        )
        made.append(("tvm", "tvm", p, TvmRunner(p)))
    return made


def export_model(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    example: Any = None,
    test_data: Any = None,
    interface: ModelInterface | None = None,
    variants: Mapping[str, nn.Module] | None = None,
    onnx_files: Mapping[str, str | os.PathLike[str]] | None = None,
    formats: Sequence[str] = ("onnx", "pt2"),
    runtimes: Sequence[str] = ("eager", "onnxruntime", "tvm"),
    opset: int = 18,
    tolerances: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] = (1, 8, 64),
    warmup: int = 3,
    repeats: int = 20,
    max_seconds_per_cell: float | None = 2.0,
    max_parity_samples: int = 512,
    device: str = "cpu",
    name: str = "model",
    metrics: Mapping[str, float] | None = None,
    training_config: Mapping[str, Any] | None = None,
    tensorboard: Any = None,
    global_step: int = 0,
) -> ExportResult:
    """Export a trained classifier for deployment and prove the artifacts right, with numbers.

    Writes into ``out_dir``: ``model.onnx`` (one self-contained file, dynamic batch),
    ``model.pt2`` (``torch.export``), optionally ``model_tvm.so`` (TVM, ``llvm`` target), the same
    for each compressed variant (``model_<variant>.*``), copies of extra ONNX files
    (``model_<name>.onnx``, e.g. int8 models), ``latency.json|md`` and ``model_card.json|md``.

    Every artifact is loaded back and checked against its PyTorch model on ``test_data``
    (fp32: tight tolerance; int8: class agreement and an error bound; extra ONNX files against
    ``model``); a failed check raises :class:`~lightning_mlcycle.export.ParityError` with the
    measured error. Then every artifact and runtime is timed at each batch size.

    Args:
        model: the trained classifier (normalized inputs -> logits); a ``ClassificationModule``
            is exported through its ``backbone``. Put back on its device/mode afterwards.
        out_dir: the export folder (created).
        example: one input batch (tensor or array); default: the first test samples.
        test_data: real, normalized samples ``x`` or ``(x, y)`` (tensors or arrays) for parity
            and accuracy; default: ``max_parity_samples`` standard-normal samples (no accuracy).
        interface: input/preprocessing/classes; default: inferred from the model's
            hyper-parameters and the example.
        variants: name -> compressed ``nn.Module`` with the same interface (pruned, distilled, ...).
        onnx_files: name -> extra ONNX file with the same interface (e.g. ``{"int8_ptq": path}``).
        formats: any of ``onnx``, ``pt2``, ``tvm`` (``tvm`` needs the ``tvm`` extra).
        runtimes: runtimes in the latency report, any of ``eager``, ``torch.export``,
            ``onnxruntime``, ``tvm`` (a runtime without an artifact is left out).
        opset: ONNX opset (>= 18).
        tolerances: per-precision overrides, e.g. ``{"int8": {"min_agreement": 0.95}}``.
        batch_sizes: batch sizes of the latency report.
        warmup: untimed calls per cell.
        repeats: timed calls per cell.
        max_seconds_per_cell: cap on timing one cell (None: no cap).
        max_parity_samples: at most this many samples are compared.
        device: ``cpu`` or ``cuda`` (eager on the GPU, ONNX Runtime's CUDA provider); TVM
            modules are always compiled for the CPU (``llvm``): untuned CUDA needs schedules.
        name: the model's name in the card.
        metrics: test metrics for the card (e.g. ``{"test/acc": 0.97}``).
        training_config: the training configuration for the card.
        tensorboard: a ``SummaryWriter``; the latency table and card go to its text tab.
        global_step: step of the TensorBoard text.

    Returns:
        An :class:`ExportResult`.

    Raises:
        MLCycleError: bad arguments, or ``model`` cannot be exported (the message names the line).
        ParityError: an artifact does not match its model within tolerance.

    Example:
        >>> import tempfile
        >>> res = export_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval(),
        ...                    tempfile.mkdtemp(), example=torch.zeros(2, 4), formats=["pt2"],
        ...                    batch_sizes=[1, 8], repeats=2, warmup=0)
        >>> [a["file"] for a in res.artifacts], all(p.passed for p in res.parity)
        (['model.pt2'], True)
        >>> sorted({(r.runtime, r.batch_size) for r in res.latency})
        [('eager', 1), ('eager', 8)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    formats = list(dict.fromkeys(formats))
    for f in formats:
        if f not in FORMATS:
            raise ValueError(
                f"Expected every entry of `formats` to be one of {list(FORMATS)}, but got {f!r}."
            )
    if not formats:
        raise ValueError("`formats` cannot be empty; choose from ['onnx', 'pt2', 'tvm'].")
    for r in runtimes:
        if r not in RUNTIMES:
            raise ValueError(
                f"Expected every entry of `runtimes` to be one of {list(RUNTIMES)}, but got {r!r}."
            )
    if "tvm" in formats and not tvm_available():
        raise MLCycleError(
            "`formats` includes 'tvm' but TVM is not installed: `pip install 'lightning-mlcycle[tvm]'`."
        )
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"`batch_sizes` must be positive integers, but got {list(batch_sizes)!r}.")
    if device not in ("cpu", "cuda"):
        raise ValueError(
            f"Expected argument `device` to be one of ['cpu', 'cuda'], but got {device!r}."
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise MLCycleError("`device='cuda'` but torch sees no CUDA GPU; use device='cpu'.")
    if max_parity_samples < 1:
        raise ValueError(f"`max_parity_samples` must be positive, but got {max_parity_samples!r}.")
    tol = merge_tolerances(tolerances)
    variants = dict(variants or {})
    for vname, v in variants.items():
        if not isinstance(v, nn.Module):
            raise TypeError(
                f"`variants[{vname!r}]` must be a torch.nn.Module, but got {type(v).__name__}."
            )
    extra_onnx = {k: Path(v) for k, v in (onnx_files or {}).items()}
    for k, p in extra_onnx.items():
        if not p.is_file():
            raise MLCycleError(f"`onnx_files[{k!r}]` is not a file: {str(p)!r}.")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = model.backbone if isinstance(getattr(model, "backbone", None), nn.Module) else model

    # inputs: real test samples when given, else standard-normal ones (inputs are normalized)
    labels: np.ndarray | None = None
    if test_data is not None:
        if isinstance(test_data, (tuple, list)):
            x_np = _as_numpy(test_data[0]).astype(np.float32)
            labels = _as_numpy(test_data[1]).astype(np.int64) if len(test_data) > 1 else None
        else:
            x_np = _as_numpy(test_data).astype(np.float32)
    else:
        shape = tuple(_as_numpy(example).shape[1:]) if example is not None else None
        if shape is None:
            hp_shape = (getattr(model, "hparams", {}) or {}).get("input_shape")
            if interface is None and not hp_shape:
                raise MLCycleError("Pass `example` or `test_data`: the input shape is unknown.")
            shape = interface.input_shape if interface is not None else tuple(hp_shape)
        rng = np.random.default_rng(0)
        x_np = rng.standard_normal((min(_SYNTHETIC_SAMPLES, max_parity_samples), *shape)).astype(
            np.float32
        )
    x_np, labels = (
        x_np[:max_parity_samples],
        None if labels is None else labels[:max_parity_samples],
    )
    if x_np.shape[0] == 0:
        raise MLCycleError("`test_data` holds no samples.")
    ex = torch.from_numpy(
        _as_numpy(example).astype(np.float32) if example is not None else x_np[:2].copy()
    )

    result = ExportResult(directory=out, hardware=hardware_info())
    runners: dict[str, tuple[str, int, Callable[[np.ndarray], np.ndarray], float | None]] = {}

    def accuracy(logits: np.ndarray) -> float | None:
        return None if labels is None else float(np.mean(logits.argmax(-1) == labels))

    with contextlib.ExitStack() as stack:
        stack.enter_context(_on_cpu_eval(net))
        for v in variants.values():
            stack.enter_context(_on_cpu_eval(v))
        dense_ref = EagerRunner(net)(x_np)
        if interface is None:
            interface = ModelInterface.infer(
                module=model, example=ex, num_classes=int(dense_ref.shape[-1])
            )
        if interface.num_classes != dense_ref.shape[-1]:
            raise MLCycleError(
                f"The model has {dense_ref.shape[-1]} outputs but the interface names "
                f"{interface.num_classes} classes: {interface.class_names}."
            )
        for vname, module in [("dense", net), *variants.items()]:
            ref = dense_ref if vname == "dense" else EagerRunner(module)(x_np)
            # a GPU copy for timing, so the module itself stays on the CPU for the exporters
            eager = EagerRunner(
                copy.deepcopy(module) if device == "cuda" else module, device=device
            )
            label = "model (eager)" if vname == "dense" else f"model_{vname} (eager)"
            runners[label] = ("eager", _module_bytes(module), eager, accuracy(ref))
            precision = module_precision(module)
            try:
                made = _export_module(vname, module, ex, out, formats, opset, interface, device)
            except MLCycleError as err:
                if vname == "dense":
                    raise
                log.warning("Export: variant %r not exported: %s", vname, err)
                result.skipped[vname] = str(err)
                continue
            for fmt, runtime, path, runner in made:
                prec = onnx_precision(path) if fmt == "onnx" else precision
                par = check_parity(
                    runner,
                    ref,
                    x_np,
                    precision=prec,
                    tolerance=tol[prec],
                    artifact=path.name,
                    runtime=runtime,
                )
                result.parity.append(par)
                _record(result, path, vname, fmt, prec, [par])
                runners[path.name] = (runtime, path.stat().st_size, runner, accuracy(runner(x_np)))
        for oname, src in extra_onnx.items():
            dst = out / f"model_{oname}.onnx"
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            prec = onnx_precision(dst)
            ort_runner = OnnxRuntimeRunner(dst, device=device)
            par = check_parity(
                ort_runner,
                dense_ref,
                x_np,
                precision=prec,
                tolerance=tol[prec],
                artifact=dst.name,
                runtime="onnxruntime",
            )
            result.parity.append(par)
            checks = [par]
            runners[dst.name] = (
                "onnxruntime",
                dst.stat().st_size,
                ort_runner,
                accuracy(ort_runner(x_np)),
            )
            if "tvm" in formats:
                so = out / f"model_{oname}_tvm.so"
                try:
                    compile_tvm(dst, so, target="llvm")
                    tvm_runner = TvmRunner(so)
                except MLCycleError as err:  # e.g. a quantized op TVM's ONNX importer lacks
                    log.warning("Export: TVM cannot compile %s: %s", dst.name, err)
                    result.skipped[f"{dst.name} (tvm)"] = str(err)
                else:
                    tpar = check_parity(
                        tvm_runner,
                        dense_ref,
                        x_np,
                        precision=prec,
                        tolerance=tol[prec],
                        artifact=so.name,
                        runtime="tvm",
                    )
                    result.parity.append(tpar)
                    _record(result, so, oname, "tvm", prec, [tpar])
                    runners[so.name] = (
                        "tvm",
                        so.stat().st_size,
                        tvm_runner,
                        accuracy(tvm_runner(x_np)),
                    )
            _record(result, dst, oname, "onnx", prec, checks)

        # the latency report: every artifact on its runtime, at every batch size
        for label, (runtime, size, runner, acc) in runners.items():
            if runtime not in runtimes:
                continue
            for b in batch_sizes:
                t = measure_latency(
                    runner,
                    tile_batch(x_np, b),
                    warmup=warmup,
                    repeats=repeats,
                    max_seconds=max_seconds_per_cell,
                )
                result.latency.append(
                    LatencyRow(
                        label,
                        runtime,
                        b,
                        t["median_ms"],
                        t["p95_ms"],
                        t["throughput"],
                        int(t["runs"]),
                        size,
                        acc,
                    )
                )

    latency_md = latency_markdown(result.latency, result.hardware)
    (out / "latency.json").write_text(
        json.dumps(
            {
                "hardware": result.hardware,
                "rows": [r.to_dict() for r in result.latency],
                "warmup": warmup,
                "repeats": repeats,
            },
            indent=2,
        )
    )
    (out / "latency.md").write_text("# Latency\n\n" + latency_md + "\n")
    all_metrics = dict(metrics or {})
    dense_acc = runners["model (eager)"][3]
    if dense_acc is not None:
        all_metrics.setdefault("parity_set/acc", dense_acc)
    result.card = build_model_card(
        name=name,
        interface=interface,
        artifacts=result.artifacts,
        metrics=all_metrics,
        latency=result.latency,
        hardware=result.hardware,
        training_config=training_config,
    )
    write_model_card(result.card, out)
    if tensorboard is not None:
        tensorboard.add_text("export/latency", latency_md, global_step=global_step)
        tensorboard.add_text(
            "export/model_card", (out / "model_card.md").read_text(), global_step=global_step
        )
        flush = getattr(tensorboard, "flush", None)
        if callable(flush):
            flush()
    log.info(
        "Export: %d artifacts in %s, %d parity checks passed.",
        len(result.artifacts),
        out,
        len(result.parity),
    )
    return result


def _record(
    result: ExportResult,
    path: Path,
    variant: str,
    fmt: str,
    precision: str,
    parity: Sequence[ParityResult],
) -> None:
    result.artifacts.append(
        {
            "file": path.name,
            "variant": variant,
            "format": fmt,
            "precision": precision,
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
            "parity": [dataclasses.asdict(p) for p in parity],
        }
    )
