"""``EarlyStopping`` that restores the best weights when training ends."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping as _LightningEarlyStopping
from typing_extensions import override

log = logging.getLogger(__name__)


class EarlyStopping(_LightningEarlyStopping):
    """Lightning's ``EarlyStopping`` that also puts the best weights back when training ends.

    Lightning's callback stops training but leaves the model with the weights of the *last*
    epoch (Lightning-AI/pytorch-lightning #1395, closed as won't-fix). This subclass keeps a CPU
    copy of the module's ``state_dict`` each time the monitored metric improves and loads it back
    at the end of ``fit`` (whether training stopped early or ran out of epochs), like Keras'
    ``restore_best_weights``. All of Lightning's arguments work unchanged; its stop reason
    (``stopping_reason``, ``stopping_reason_message``) and the restored epoch appear in the
    :class:`~lightning_mlcycle.diagnosis.FitDiagnosis` report.

    The copy is part of the callback's checkpoint state, so a resumed run still restores the best
    weights (it makes checkpoints about twice as large; pass ``restore_best_weights=False`` to
    avoid that).

    Args:
        monitor: quantity to monitor (e.g. ``"val/loss"``).
        restore_best_weights: load the best weights back at the end of ``fit``.
        **kwargs: any argument of :class:`lightning.pytorch.callbacks.EarlyStopping`
            (``min_delta``, ``patience``, ``mode``, ``check_finite``, ``stopping_threshold``, ...).

    Attributes:
        best_epoch: epoch of the best monitored value (None before the first check).
        restored_epoch: epoch whose weights were restored at the end of fit (None if none were).

    Example:
        >>> es = EarlyStopping(monitor="val/loss", patience=3)
        >>> es.restore_best_weights, es.patience, es.mode
        (True, 3, 'min')
    """

    def __init__(self, monitor: str, *, restore_best_weights: bool = True, **kwargs: Any) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be a metric name, but got monitor={monitor!r}.")
        if not isinstance(restore_best_weights, bool):
            raise TypeError(
                f"`restore_best_weights` must be a bool, but got {restore_best_weights!r}."
            )
        mode = kwargs.get("mode", "min")
        if mode not in self.mode_dict:
            raise ValueError(f"Expected argument `mode` to be one of ['min', 'max'], but got {mode!r}.")
        patience = kwargs.get("patience", 3)
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"`patience` cannot be negative, but got patience={patience!r}.")
        super().__init__(monitor=monitor, **kwargs)
        self.restore_best_weights = restore_best_weights
        self.best_epoch: int | None = None
        self.restored_epoch: int | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None

    def _track(self, trainer: pl.Trainer, pl_module: pl.LightningModule, before: torch.Tensor) -> None:
        """After Lightning's check: keep the weights if the best score changed."""
        if not torch.equal(torch.as_tensor(self.best_score).cpu(), before.cpu()):
            self.best_epoch = int(trainer.current_epoch)
            if self.restore_best_weights:
                self._best_weights = {
                    k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
                }

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = torch.as_tensor(self.best_score).clone()
        super().on_train_epoch_end(trainer, pl_module)
        self._track(trainer, pl_module, before)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        before = torch.as_tensor(self.best_score).clone()
        super().on_validation_end(trainer, pl_module)
        self._track(trainer, pl_module, before)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.restore_best_weights or self._best_weights is None:
            return
        try:
            pl_module.load_state_dict(self._best_weights)
        except RuntimeError as err:  # e.g. a callback changed layer shapes since (structured pruning)
            log.warning("EarlyStopping: could not restore the weights of epoch %s, keeping the last "
                        "ones: %s", self.best_epoch, str(err).splitlines()[0])
            return
        self.restored_epoch = self.best_epoch
        if trainer.is_global_zero:
            log.info("EarlyStopping: restored the weights of epoch %s (%s = %.4g).",
                     self.best_epoch, self.monitor, float(self.best_score))

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["best_epoch"] = self.best_epoch
        state["best_weights"] = self._best_weights if self.restore_best_weights else None
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self._best_weights = state_dict.get("best_weights")
