"""Quantization-aware training on torchao's PT2E path, exported as a standard int8 QDQ ONNX graph.

Lightning's ``QuantizationAwareTraining`` was removed in 2.0 with its bugs: it broke
``trainer.test(ckpt_path=...)`` (Lightning #12896), could not ``fit`` twice (#7427) and could not be
combined with pruning (#11047). Here the model part (``module_name``, by default ``backbone``) is
captured with ``torch.export`` and prepared with ``prepare_qat_pt2e`` in ``setup``, before the
optimizer is built; a checkpoint of the prepared model is recognised in ``setup`` of a later
``fit``/``test`` and the same graph is prepared again before its weights are loaded; a model that is
already prepared is left alone. Parameter names do not change (``backbone.features.0.weight``
stays), so callbacks that address weights by name (``MagnitudePruning``) keep working.

After training, :meth:`QuantizationAwareTraining.convert` gives the ``convert_pt2e`` model and
:meth:`QuantizationAwareTraining.export_onnx` writes it as QuantizeLinear/DequantizeLinear ONNX,
which ONNX Runtime fuses into integer kernels (``QLinearConv`` ...). The fake-quantized model itself
cannot go through the dynamo ONNX exporter (pytorch/pytorch #167063): export only after convert.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice, rank_zero
from lightning_mlcycle.compression import _pt2e

log = logging.getLogger(__name__)

BATCH_NORM_MODES = ("fold", "train")
BACKENDS = ("onnxruntime", "x86")


def make_quantizer(backend: str = "onnxruntime", *, reduce_range: bool | None = None) -> Any:
    """The torchao PT2E quantizer for ``backend``, configured for QAT (per-channel int8 weights).

    Both use the x86 recipe (``X86InductorQuantizer``): symmetric per-channel int8 weights and
    asymmetric uint8 activations, the combination ONNX Runtime's x86 integer kernels run.

    * ``"onnxruntime"`` (default, for the exported ONNX model): additionally quantizes the output
      of a convolution / linear layer that feeds a residual ``add``. The x86 recipe leaves it in
      fp32 because Inductor fuses conv + add into one int8 kernel; ONNX Runtime only fuses
      ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv``, so without it every
      residual block's second convolution ran in fp32 (ResNet-18: 8 of 20 convolutions, 1.4x
      instead of 2.7x faster than fp32 at batch 16 on an AVX2 CPU).
    * ``"x86"``: the recipe as is, for ``torch.compile`` (Inductor) deployment of the converted model.

    ``reduce_range`` (7-bit weights, so u8 x s8 products cannot saturate on x86 CPUs without VNNI)
    defaults to what this CPU needs (``ptq.needs_reduce_range``).

    Example:
        >>> type(make_quantizer("x86")).__name__
        'X86InductorQuantizer'
        >>> type(make_quantizer()).__name__
        'OnnxRuntimeQuantizer'
    """
    check_choice("backend", backend, BACKENDS)
    _pt2e.require_torchao()
    import dataclasses

    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    from lightning_mlcycle.compression.ptq import needs_reduce_range

    config = get_default_x86_inductor_quantization_config(is_qat=True)
    if needs_reduce_range() if reduce_range is None else bool(reduce_range):
        # 7-bit weights, as ONNX Runtime's own `reduce_range`: the int8 weights in the QDQ graph are
        # constants, so ONNX computes exactly what the converted model does (torchao's own
        # `reduce_range` narrows the activations instead, which a uint8 QuantizeLinear cannot express)
        weight = dataclasses.replace(config.weight, quant_min=-63, quant_max=63)
        config = dataclasses.replace(config, weight=weight)
    if backend == "x86":
        return X86InductorQuantizer().set_global(config)
    return _onnxruntime_quantizer_class()().set_global(config)


@functools.cache
def _onnxruntime_quantizer_class() -> type:
    """``OnnxRuntimeQuantizer``, defined on first use so torchao is imported only when needed."""
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY as key
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    adds = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)

    class OnnxRuntimeQuantizer(X86InductorQuantizer):
        """The x86 recipe with every input of an annotated residual ``add`` quantized.

        The x86 recipe annotates ``conv -> add (-> relu)`` as one fused pattern that observes only
        the add's *other* input. Observing both makes the exported graph
        ``DQ -> Conv -> Q -> DQ -> Add -> (Relu) -> Q``, which ONNX Runtime turns into
        ``QLinearConv`` + ``QLinearAdd`` instead of an fp32 ``FusedConv``.
        """

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            for node in model.graph.nodes:
                ann = node.meta.get(key)
                if node.target not in adds or not isinstance(ann, QuantizationAnnotation):
                    continue
                specs = list(ann.input_qspec_map.values())
                if not specs:
                    continue  # annotated "do not quantize"
                for arg in node.args[:2]:
                    if isinstance(arg, Node) and arg not in ann.input_qspec_map:
                        ann.input_qspec_map[arg] = specs[0]
            return model

    return OnnxRuntimeQuantizer


def prepare_qat(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    backend: str = "onnxruntime",
    quantizer: Any = None,
    batch_norm: str = "fold",
) -> torch.fx.GraphModule:
    """Capture ``model`` and insert fake quantization for training (``prepare_qat_pt2e``).

    Args:
        model: any ``torch.export``-able module of convolution / linear layers.
        example_input: one input batch (any batch size; the batch dimension stays dynamic).
        backend: which quantizer to build when ``quantizer`` is None (see :func:`make_quantizer`).
        quantizer: a torchao ``Quantizer`` to use instead of ``backend``.
        batch_norm: ``"fold"`` folds batch norm into the preceding layers first (running
            statistics frozen during QAT; fast conversion); ``"train"`` keeps torchao's simulated
            conv-BN with batch statistics (freeze them with :func:`freeze_batch_norm`; conversion
            then takes minutes on a small CPU).

    Returns:
        The prepared graph; ``.train()`` / ``.eval()`` work on it (fast, see ``_pt2e``).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        ...                     nn.Linear(4 * 6 * 6, 3))
        >>> qat = prepare_qat(net, torch.randn(2, 1, 8, 8))
        >>> qat(torch.randn(5, 1, 8, 8)).shape
        torch.Size([5, 3])
    """
    check_choice("batch_norm", batch_norm, BATCH_NORM_MODES)
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"Expected argument `example_input` to be a torch.Tensor, but got {type(example_input).__name__}.")
    _pt2e.require_torchao()
    _pt2e.check_quantizable(model)
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    quantizer = quantizer if quantizer is not None else make_quantizer(backend)
    was_training = model.training
    model.train()
    try:
        gm = _pt2e.capture(model, example_input.detach())
    finally:
        model.train(was_training)
    folded = _pt2e.fold_batch_norm(gm) if batch_norm == "fold" else 0
    prepared = prepare_qat_pt2e(gm, quantizer)
    prepared.meta[_pt2e.META_KEY] = {
        "batch_norm": batch_norm,
        "folded": folded,
        "bn_frozen": batch_norm == "fold",
        "observers_frozen": False,
    }
    _pt2e.install_mode_switch(prepared)
    _pt2e.set_mode(prepared, True)
    return prepared


def freeze_observers(prepared: torch.fx.GraphModule) -> None:
    """Stop updating the quantization ranges (scales / zero points stay as they are)."""
    prepared.meta.setdefault(_pt2e.META_KEY, {})["observers_frozen"] = True
    for fq in _pt2e.fake_quantizers(prepared):
        fq.disable_observer()


def freeze_batch_norm(prepared: torch.fx.GraphModule) -> None:
    """Normalize with the running statistics from now on, and stop updating them."""
    state = prepared.meta.setdefault(_pt2e.META_KEY, {})
    state["bn_frozen"] = True
    _pt2e.set_mode(prepared, bool(state.get("training", prepared.training)))


def convert_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 model of a prepared graph (``convert_pt2e`` on a copy; ``prepared`` is unchanged).

    Weights are stored as int8 with their scales; activations are quantized and dequantized
    around every quantized layer, so the result computes what the int8 deployment computes and
    exports to a QDQ ONNX graph.
    """
    if not _pt2e.is_prepared(prepared):
        raise MLCycleError(
            f"`prepared` must be a model from `prepare_qat` / the QuantizationAwareTraining callback, "
            f"but got {type(prepared).__name__}."
        )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    work = copy.deepcopy(prepared)
    _pt2e.set_mode(work, False)
    converted = convert_pt2e(work)
    converted.meta[_pt2e.META_KEY] = {**prepared.meta[_pt2e.META_KEY], "converted": True, "observers_frozen": True}
    _pt2e.install_mode_switch(converted)
    _pt2e.set_mode(converted, False)
    return converted


def export_qat_onnx(
    prepared: torch.fx.GraphModule, example_input: torch.Tensor, path: str | os.PathLike[str]
) -> Path:
    """Convert ``prepared`` and write it as one int8 QDQ ONNX file (dynamic batch)."""
    from lightning_mlcycle._onnx import to_onnx

    converted = convert_qat(prepared).cpu()
    return to_onnx(converted, example_input.detach().cpu(), path)  # compacted (no zero zero-points)


def freeze_epoch(at: float | int | None, max_epochs: int | None) -> int | None:
    """The epoch from which something is frozen: ``at`` is an epoch (int) or a share of training.

    Example:
        >>> freeze_epoch(0.75, 8), freeze_epoch(3, 8), freeze_epoch(None, 8), freeze_epoch(0.5, None)
        (6, 3, None, None)
    """
    if at is None:
        return None
    if isinstance(at, int):
        return at
    if max_epochs is None or max_epochs < 1:
        return None
    return int(math.ceil(float(at) * max_epochs))


def _check_at(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MLCycleError(f"`{name}` must be an epoch (int), a share of training (float) or None, but got {value!r}.")
    if isinstance(value, int) and value < 0:
        raise MLCycleError(f"`{name}` cannot be a negative epoch, but got {name}={value!r}.")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise MLCycleError(f"`{name}` as a share of training must be in [0, 1], but got {name}={value!r}.")


class QuantizationAwareTraining(Callback):
    """Train with fake int8 quantization (torchao PT2E) and export an int8 QDQ ONNX model.

    The sub-module ``module_name`` of the LightningModule is replaced, in ``setup``, by its
    prepared graph; the rest of the LightningModule (loss, metrics, logging) is untouched. Use it
    to fine-tune a trained model for a few epochs (the usual QAT recipe), or to train from scratch.

    Args:
        module_name: dotted attribute path of the sub-module to quantize; ``None`` picks
            ``backbone`` if the LightningModule has one, else its only child module with parameters.
        example_input: one input batch used to capture the graph; ``None`` takes the module's
            ``example_input_array`` or a batch of the datamodule's loader.
        backend: quantizer, see :func:`make_quantizer` (ignored when ``quantizer`` is given).
        quantizer: a torchao PT2E ``Quantizer`` to use instead.
        batch_norm: ``"fold"`` (default: BN folded with its running statistics, which stay frozen;
            fast conversion; meant for fine-tuning a trained model or after ``start_epoch`` fp32
            epochs) or ``"train"`` (torchao's simulated conv-BN with batch statistics, frozen at
            ``freeze_bn_at``; needed to train from scratch; conversion takes minutes on 2 cores).
        start_epoch: train in fp32 until this epoch, then prepare and rebuild the optimizer
            (``trainer.strategy.setup_optimizers``; schedulers restart).
        freeze_observers_at: epoch (int) or share of ``max_epochs`` (float) from which the
            quantization ranges stop moving; ``None`` never freezes them.
        freeze_bn_at: the same for batch-norm statistics (``batch_norm="train"`` only).
        export_path: if set, ``on_fit_end`` writes the int8 ONNX model there (rank zero).

    Example:
        >>> cb = QuantizationAwareTraining(freeze_observers_at=0.8)
        >>> cb.freeze_epochs(max_epochs=10)
        (8, None)
    """

    def __init__(
        self,
        *,
        module_name: str | None = None,
        example_input: torch.Tensor | None = None,
        backend: str = "onnxruntime",
        quantizer: Any = None,
        batch_norm: str = "fold",
        start_epoch: int = 0,
        freeze_observers_at: float | int | None = 0.75,
        freeze_bn_at: float | int | None = 0.5,
        export_path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise MLCycleError(f"`start_epoch` must be an integer >= 0, but got start_epoch={start_epoch!r}.")
        if module_name is not None and (not isinstance(module_name, str) or not module_name):
            raise MLCycleError(f"`module_name` must be a non-empty attribute path or None, but got {module_name!r}.")
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            raise TypeError(f"Expected argument `example_input` to be a torch.Tensor, but got {type(example_input).__name__}.")
        check_choice("backend", backend, BACKENDS)
        check_choice("batch_norm", batch_norm, BATCH_NORM_MODES)
        _check_at("freeze_observers_at", freeze_observers_at)
        _check_at("freeze_bn_at", freeze_bn_at)
        if quantizer is None:
            _pt2e.require_torchao()  # fail at construction, not after data loading
        self.module_name = module_name
        self.example_input = example_input
        self.backend = backend
        self.quantizer = quantizer
        self.batch_norm = batch_norm
        self.start_epoch = start_epoch
        self.freeze_observers_at = freeze_observers_at
        self.freeze_bn_at = freeze_bn_at
        self.export_path = Path(export_path) if export_path is not None else None
        self.prepared = False
        self.observers_frozen = False
        self.bn_frozen = batch_norm == "fold"
        self._resolved_name: str | None = module_name
        self._example: torch.Tensor | None = None
        self._hook_handle: Any = None

    @property
    def state_key(self) -> str:
        """One checkpoint entry per quantized sub-module."""
        return self._generate_state_key(module_name=self.module_name, backend=self.backend)

    # -- decisions ----------------------------------------------------------------------------------
    def freeze_epochs(self, max_epochs: int | None) -> tuple[int | None, int | None]:
        """(epoch observers freeze, epoch batch norm freezes); None = never."""
        bn = None if self.batch_norm == "fold" else freeze_epoch(self.freeze_bn_at, max_epochs)
        return freeze_epoch(self.freeze_observers_at, max_epochs), bn

    # -- mechanics ----------------------------------------------------------------------------------
    def _target_name(self, pl_module: nn.Module) -> str:
        if self._resolved_name is not None:
            return self._resolved_name
        if isinstance(getattr(pl_module, "backbone", None), nn.Module):
            self._resolved_name = "backbone"
            return "backbone"
        from torchmetrics import Metric

        candidates = [
            n for n, m in pl_module.named_children()
            if not isinstance(m, Metric) and any(True for _ in m.parameters())
        ]
        if len(candidates) != 1:
            raise MLCycleError(
                "QuantizationAwareTraining: cannot tell which sub-module to quantize; pass "
                f"`module_name` (child modules with parameters: {candidates})."
            )
        self._resolved_name = candidates[0]
        return candidates[0]

    def _get(self, pl_module: nn.Module) -> nn.Module:
        name = self._target_name(pl_module)
        obj: Any = pl_module
        for part in name.split("."):
            if not hasattr(obj, part):
                raise MLCycleError(f"`module_name`: {type(obj).__name__} has no attribute {part!r} (in {name!r}).")
            obj = getattr(obj, part)
        if not isinstance(obj, nn.Module):
            raise MLCycleError(f"`module_name`: {name!r} is a {type(obj).__name__}, not an nn.Module.")
        return obj

    def _set(self, pl_module: nn.Module, module: nn.Module) -> None:
        *path, leaf = self._target_name(pl_module).split(".")
        owner: Any = pl_module
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, leaf, module)

    def quantized_module(self, pl_module: nn.Module) -> torch.fx.GraphModule:
        """The prepared graph inside ``pl_module`` (after ``setup``)."""
        module = self._get(pl_module)
        if not _pt2e.is_prepared(module):
            raise MLCycleError(
                f"`{self._target_name(pl_module)}` is not prepared for QAT yet: run trainer.fit with this callback first."
            )
        return module  # type: ignore[return-value]

    def _find_example(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> torch.Tensor:
        if self.example_input is not None:
            return self.example_input
        if isinstance(getattr(pl_module, "example_input_array", None), torch.Tensor):
            return pl_module.example_input_array  # type: ignore[return-value]
        dm = getattr(trainer, "datamodule", None)
        loader_fns = ["train_dataloader", "val_dataloader", "test_dataloader"] if stage == "fit" else [
            f"{stage}_dataloader", "test_dataloader", "val_dataloader", "train_dataloader"]
        for fn in loader_fns:
            try:
                batch = next(iter(getattr(dm, fn)())) if dm is not None else None
            except Exception:  # noqa: BLE001 - a datamodule may not define every loader
                continue
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if isinstance(x, torch.Tensor):
                return x[:8]
        raise MLCycleError(
            "QuantizationAwareTraining needs an example input to capture the graph: pass "
            "`example_input=`, set `example_input_array` on the LightningModule, or use a datamodule."
        )

    def prepare(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule, stage: str = "fit") -> None:
        """Replace the target sub-module by its prepared graph (no-op when already prepared)."""
        module = self._get(pl_module)
        if _pt2e.is_prepared(module):
            _pt2e.install_mode_switch(module)  # lost by deepcopy/pickle; cheap to redo
            self.prepared = True
            return
        example = self._find_example(trainer, pl_module, stage) if trainer is not None else self.example_input
        if example is None:
            raise MLCycleError("QuantizationAwareTraining.prepare without a trainer needs `example_input=`.")
        device = next(module.parameters()).device
        prepared = prepare_qat(
            module, example.to(device), backend=self.backend, quantizer=self.quantizer, batch_norm=self.batch_norm
        )
        prepared.meta[_pt2e.META_KEY]["observers_frozen"] = self.observers_frozen
        prepared.meta[_pt2e.META_KEY]["bn_frozen"] = self.bn_frozen
        _pt2e.set_mode(prepared, pl_module.training)
        self._set(pl_module, prepared)
        self._example = example.detach().cpu()[:2]
        self.prepared = True
        log.info("QuantizationAwareTraining: prepared `%s` (%s, batch norm %s).",
                 self._target_name(pl_module), self.backend, self.batch_norm)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # fit: before the optimizer is built; the checkpoint of a resumed fit then loads as is
        if (stage == "fit" and self.start_epoch == 0) or _pt2e.is_prepared(self._get(pl_module)):
            self.prepare(trainer, pl_module, stage)
            return
        # test/validate/predict(ckpt_path=...) of a plain module, or a fit resumed after
        # `start_epoch`: the checkpoint path is not known yet in `setup`, so prepare when its
        # weights arrive, just before they are loaded (Lightning #12896)
        name = self._target_name(pl_module)

        def _pre_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
            marker = f"{prefix}{name}.activation_post_process_"
            if not _pt2e.is_prepared(self._get(pl_module)) and any(k.startswith(marker) for k in state_dict):
                self.prepare(trainer, pl_module, stage)

        self._hook_handle = pl_module.register_load_state_dict_pre_hook(_pre_hook)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._hook_handle is not None:
            self._hook_handle.remove()
            self._hook_handle = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _pt2e.is_prepared(self._get(pl_module)):
            if trainer.current_epoch < self.start_epoch:
                return
            self.prepare(trainer, pl_module, "fit")
            trainer.strategy.setup_optimizers(trainer)  # the old optimizer holds the fp32 weights
        gm = self.quantized_module(pl_module)
        obs_epoch, bn_epoch = self.freeze_epochs(trainer.max_epochs)
        epoch = trainer.current_epoch  # same on every rank: no reduction needed
        if obs_epoch is not None and epoch >= obs_epoch and not self.observers_frozen:
            freeze_observers(gm)
            self.observers_frozen = True
            log.info("QuantizationAwareTraining: observers frozen at epoch %d.", epoch)
        elif self.observers_frozen:
            freeze_observers(gm)  # resumed: the buffers say so already, the meta flag may not
        if bn_epoch is not None and epoch >= bn_epoch and not self.bn_frozen:
            self.bn_frozen = True
            log.info("QuantizationAwareTraining: batch-norm statistics frozen at epoch %d.", epoch)
        if self.bn_frozen and not gm.meta[_pt2e.META_KEY].get("bn_frozen", False):
            freeze_batch_norm(gm)
        _pt2e.set_mode(gm, True)
        pl_module.log_dict(
            {"qat/observers_frozen": float(self.observers_frozen), "qat/bn_frozen": float(self.bn_frozen)},
            on_step=False, on_epoch=True, sync_dist=False,
        )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.export_path is not None and rank_zero():
            path = self.export_onnx(pl_module, self.export_path)
            log.info("QuantizationAwareTraining: int8 ONNX model written to %s", path)

    # -- results ------------------------------------------------------------------------------------
    def convert(self, pl_module: nn.Module) -> torch.fx.GraphModule:
        """The int8 (``convert_pt2e``) model of the quantized sub-module; training is unaffected."""
        return convert_qat(self.quantized_module(pl_module)).cpu()

    def export_onnx(
        self, pl_module: nn.Module, path: str | os.PathLike[str], example_input: torch.Tensor | None = None
    ) -> Path:
        """Write the int8 QDQ ONNX model of the quantized sub-module (one file, dynamic batch)."""
        example = example_input if example_input is not None else self.example_input
        if example is None:
            example = self._example
        if example is None:
            raise MLCycleError("`example_input` is needed to export (none was seen during fit).")
        return export_qat_onnx(self.quantized_module(pl_module), example.detach().cpu()[:2], path)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "prepared": self.prepared,
            "observers_frozen": self.observers_frozen,
            "bn_frozen": self.bn_frozen,
            "module_name": self._resolved_name,
            "batch_norm": self.batch_norm,
            "start_epoch": self.start_epoch,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.prepared = bool(state_dict.get("prepared", self.prepared))
        self.observers_frozen = bool(state_dict.get("observers_frozen", self.observers_frozen))
        self.bn_frozen = bool(state_dict.get("bn_frozen", self.bn_frozen))
        self._resolved_name = state_dict.get("module_name", self._resolved_name) or self._resolved_name
