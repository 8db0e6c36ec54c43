"""``DeploymentExport``: export, check and time the model from a Lightning Trainer."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import tensorboard_writer, trainer_log_dir
from lightning_mlcycle.export.exporters import tvm_available
from lightning_mlcycle.export.interface import ModelInterface
from lightning_mlcycle.export.parity import merge_tolerances
from lightning_mlcycle.export.pipeline import FORMATS, ExportResult, export_model

log = logging.getLogger(__name__)


def collect_samples(loader: Any, max_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to ``max_samples`` inputs (and integer labels, if the batches have them) from a loader.

    Batches may be ``x``, ``(x, y, ...)`` or ``{"x"/"input": ..., "y"/"label": ...}``.

    Example:
        >>> x, y = collect_samples([(torch.zeros(4, 2), torch.arange(4))] * 3, max_samples=6)
        >>> tuple(x.shape), y.tolist()
        ((6, 2), [0, 1, 2, 3, 0, 1])
    """
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n = 0
    for batch in loader:
        if isinstance(batch, Mapping):
            x = next(
                (batch[k] for k in ("x", "input", "inputs", "image", "images") if k in batch), None
            )
            y = next(
                (batch[k] for k in ("y", "label", "labels", "target", "targets") if k in batch),
                None,
            )
        elif isinstance(batch, (list, tuple)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        if not isinstance(x, torch.Tensor):
            raise MLCycleError(
                f"Cannot find the input tensor in a batch of type {type(batch).__name__}."
            )
        xs.append(x.detach().cpu())
        if isinstance(y, torch.Tensor) and y.ndim == 1 and not torch.is_floating_point(y):
            ys.append(y.detach().cpu())
        n += x.shape[0]
        if n >= max_samples:
            break
    if not xs:
        raise MLCycleError("The data loader yielded no batches to check the export on.")
    x_all = torch.cat(xs)[:max_samples]
    y_all = torch.cat(ys)[:max_samples] if len(ys) == len(xs) else None
    return x_all, y_all


class DeploymentExport(pl.Callback):
    """Export the trained model (ONNX, ``torch.export``, optionally TVM), check and time it.

    At the end of ``fit`` (and/or on demand with :meth:`export`) it calls
    :func:`~lightning_mlcycle.export.export_model` on real batches from the data module's test
    split (or the validation loader), writing the artifacts, ``latency.json|md`` and
    ``model_card.json|md`` into ``dirpath`` and the latency table and card to TensorBoard's text
    tab. Works with any LightningModule whose ``forward`` maps a batch's inputs to logits. Files
    are written on rank zero; a failed export or parity check is raised on every rank.

    Args:
        dirpath: the export folder; default ``<logger dir>/export``.
        formats: any of ``onnx``, ``pt2``, ``tvm``.
        on_fit_end: export when ``fit`` ends (else only when :meth:`export` is called).
        max_samples: samples used for parity and accuracy.
        batch_sizes: batch sizes of the latency report.
        warmup: untimed calls per latency cell.
        repeats: timed calls per latency cell.
        opset: ONNX opset (>= 18).
        tolerances: per-precision parity tolerance overrides (see ``DEFAULT_TOLERANCES``).
        device: ``cpu`` or ``cuda`` for the latency report.

    Example:
        >>> cb = DeploymentExport(formats=["onnx"], batch_sizes=[1, 8])
        >>> cb.formats, cb.state_dict()["exports"]
        (['onnx'], 0)
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        *,
        formats: Sequence[str] = ("onnx", "pt2"),
        on_fit_end: bool = True,
        max_samples: int = 512,
        batch_sizes: Sequence[int] = (1, 8, 64),
        warmup: int = 3,
        repeats: int = 20,
        opset: int = 18,
        tolerances: Mapping[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__()
        formats = list(formats)
        for f in formats:
            if f not in FORMATS:
                raise ValueError(
                    f"Expected every entry of `formats` to be one of {list(FORMATS)}, but got {f!r}."
                )
        if not formats:
            raise ValueError("`formats` cannot be empty; choose from ['onnx', 'pt2', 'tvm'].")
        if "tvm" in formats and not tvm_available():
            raise MLCycleError(
                "`formats` includes 'tvm' but TVM is not installed: "
                "`pip install 'lightning-mlcycle[tvm]'`."
            )
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"`max_samples` must be a positive integer, but got {max_samples!r}.")
        batch_sizes = list(batch_sizes)
        if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
            raise ValueError(f"`batch_sizes` must be positive integers, but got {batch_sizes!r}.")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"`warmup` cannot be negative, but got {warmup!r}.")
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"`repeats` must be a positive integer, but got {repeats!r}.")
        if not isinstance(opset, int) or opset < 18:
            raise ValueError(f"`opset` must be an integer >= 18, but got {opset!r}.")
        if device not in ("cpu", "cuda"):
            raise ValueError(
                f"Expected argument `device` to be one of ['cpu', 'cuda'], but got {device!r}."
            )
        merge_tolerances(tolerances)  # validates the keys now, not at the end of training
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.formats = formats
        self.export_on_fit_end = on_fit_end
        self.max_samples = max_samples
        self.batch_sizes = batch_sizes
        self.warmup = warmup
        self.repeats = repeats
        self.opset = opset
        self.tolerances = dict(tolerances or {})
        self.device = device
        self.exports = 0
        self.last_dir: str | None = None
        self.last_summary: dict[str, Any] = {}
        self.result: ExportResult | None = None

    @property
    def state_key(self) -> str:
        """Two instances with different folders/formats keep separate state in a checkpoint."""
        return self._generate_state_key(dirpath=str(self.dirpath), formats=tuple(self.formats))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.export_on_fit_end:
            self.export(trainer, pl_module)

    def _samples(self, trainer: pl.Trainer) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        dm = getattr(trainer, "datamodule", None)
        loader, split = None, "test"
        if dm is not None:
            try:
                loader = dm.test_dataloader()
            except Exception:  # a data module without a test split (or not set up for it)
                loader = None
        if loader is None:
            loader, split = trainer.val_dataloaders, "val"
            if isinstance(loader, (list, tuple)):
                loader = loader[0] if loader else None
        if loader is None:
            raise MLCycleError(
                "DeploymentExport needs real batches to check the export: give the Trainer a "
                "datamodule with test_dataloader() or validation data."
            )
        x, y = collect_samples(loader, self.max_samples)
        return x, y, split

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ExportResult | None:
        """Export now (on demand); returns the result on rank zero, None on other ranks."""
        result: ExportResult | None = None
        error: Exception | None = None
        if trainer.is_global_zero:
            try:
                result = self._export(trainer, pl_module)
            except Exception as err:  # re-raised below, after every rank knows
                error = err
        failed = bool(trainer.strategy.broadcast(error is not None, src=0))
        if error is not None:
            raise error
        if failed:
            raise MLCycleError("DeploymentExport failed on rank zero (see its log).")
        self.exports += 1
        return result

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ExportResult:
        x, y, split = self._samples(trainer)
        dm = getattr(trainer, "datamodule", None)
        with torch.no_grad():
            was_training = pl_module.training
            pl_module.eval()
            out_dim = int(pl_module(x[:2].to(pl_module.device)).shape[-1])
            pl_module.train(was_training)
        interface = ModelInterface.infer(
            module=pl_module, datamodule=dm, example=x, num_classes=out_dim
        )
        out_dir = self.dirpath or trainer_log_dir(trainer) / "export"
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("test/", "val/")) and getattr(v, "numel", lambda: 1)() == 1
        }
        hparams = dict(getattr(pl_module, "hparams", {}) or {})
        result = export_model(
            pl_module,
            out_dir,
            test_data=(x, y) if y is not None else x,
            interface=interface,
            formats=self.formats,
            opset=self.opset,
            tolerances=self.tolerances,
            batch_sizes=self.batch_sizes,
            warmup=self.warmup,
            repeats=self.repeats,
            max_parity_samples=self.max_samples,
            device=self.device,
            name=type(pl_module).__name__,
            metrics=metrics,
            training_config={
                k: v
                for k, v in hparams.items()
                if isinstance(v, (int, float, str, bool, list, dict))
            },
            tensorboard=tensorboard_writer(trainer),
            global_step=trainer.global_step,
        )
        self.result = result
        self.last_dir = str(result.directory)
        self.last_summary = result.summary()
        log.info(
            "DeploymentExport: parity checked on %d %s samples; wrote %s.",
            int(x.shape[0]),
            split,
            out_dir,
        )
        for logger in trainer.loggers:
            numbers = {k: v for k, v in self.last_summary.items() if isinstance(v, (int, float))}
            logger.log_metrics(numbers, step=trainer.global_step)
        return result

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "exports": self.exports,
            "last_dir": self.last_dir,
            "last_summary": dict(self.last_summary),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.exports = int(state_dict.get("exports", 0))
        self.last_dir = state_dict.get("last_dir")
        self.last_summary = dict(state_dict.get("last_summary", {}))
