"""``OptunaPruning``: stop unpromising Optuna trials from inside Lightning, as real PRUNED trials."""

from __future__ import annotations

import logging
import math
from enum import Enum
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice
from lightning_mlcycle.tuning._sweep_env import SweepTrial, trial_from_environment

log = logging.getLogger(__name__)

#: what the step a value is reported at counts (see :class:`OptunaPruning`'s ``step_unit``)
STEP_UNITS = ("global_step", "samples", "epoch")


class PruningOutcome(Enum):
    """What one validation's report decided."""

    CONTINUE = "continue"
    PRUNE = "prune"


def report_and_decide(trial: Any, value: float, step: int) -> PruningOutcome:
    """Report ``value`` at ``step`` to ``trial`` and ask its study's pruner (pure Optuna, no Lightning).

    A step reported before (e.g. after resuming from a checkpoint) keeps its first value; the
    pruner decides on what the storage holds. A NaN/inf value is reported as is: Optuna's
    pruners prune it.

    Example:
        >>> import optuna
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
        >>> report_and_decide(study.ask(), 0.5, step=0), report_and_decide(study.ask(), 2.0, step=0)
        (<PruningOutcome.CONTINUE: 'continue'>, <PruningOutcome.PRUNE: 'prune'>)
    """
    import warnings

    with warnings.catch_warnings():
        # a step reported before a resume is kept as it was; Optuna warns and ignores the repeat
        warnings.filterwarnings("ignore", message=".*is already reported.*")
        trial.report(float(value), step)
    return PruningOutcome.PRUNE if trial.should_prune() else PruningOutcome.CONTINUE


class OptunaPruning(Callback):
    """Report a monitored metric to an Optuna trial at every validation and prune it early.

    The value is reported at every validation run (not once per epoch), indexed by the global
    step by default, so ``val_check_interval < 1`` gives the pruner several points per epoch.
    Optuna's pruners compare trials at the same step (Median/Percentile: only trials that reported
    at exactly that step; SuccessiveHalving/Hyperband: the step is the resource spent), so when the
    search changes the batch size, optimizer steps are not comparable: epoch 1 of batch 32 is step
    40 on digits, epoch 1 of batch 64 is step 20. ``step_unit="samples"`` counts training samples
    seen instead (the batch's real size times the world size, so the count is global under DDP,
    where the distributed sampler gives every rank equal batches): all batch sizes reach the same
    step at every epoch end (unless the loader drops its last, incomplete batch), and validations
    within an epoch still get distinct steps. The count is saved in checkpoints. Express
    the pruner's warm-up / ``min_resource`` in the same unit. When the study's
    pruner says so, training stops gracefully (checkpoints and logs are finished) and ``fit`` ends
    by raising :class:`optuna.TrialPruned`, so ``study.optimize`` (or the ``mlcycle_optuna``
    sweeper) records the trial as **PRUNED**, not FAIL. Under DDP only global rank 0 talks to the
    storage; its decision is broadcast to every rank, so all stop at the same step.

    In an ``mlcycle -m`` sweep the callback is added automatically
    (:meth:`from_environment` finds the trial the sweeper started); with your own Trainer pass the
    trial yourself.

    Args:
        trial: the running :class:`optuna.trial.Trial` (single-objective study). May be None only
            when ``sweep_trial`` is given.
        monitor: the logged metric to report (e.g. ``"val/loss"``); it must be optimized in the
            study's direction.
        step_unit: what the reported step counts: ``"global_step"`` (optimizer steps; the
            default), ``"samples"`` (training samples seen, comparable across batch sizes) or
            ``"epoch"`` (the 0-based epoch, as Optuna's own Lightning callback; only for at most
            one validation per epoch).
        sweep_trial: where the trial lives (storage, study, number), to open it lazily on rank 0.

    Example:
        >>> import optuna, torch, lightning.pytorch as pl
        >>> from lightning_mlcycle import ClassificationModule, DigitsDataModule
        >>> from lightning_mlcycle.models import MLP
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> def objective(trial):
        ...     model = ClassificationModule(MLP(10, (1, 8, 8), (16,)), num_classes=10)
        ...     trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...                          enable_progress_bar=False, enable_model_summary=False,
        ...                          limit_train_batches=2, limit_val_batches=1,
        ...                          callbacks=[OptunaPruning(trial, monitor="val/acc")])
        ...     trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
        ...     return trainer.callback_metrics["val/acc"].item()
        >>> study = optuna.create_study(direction="maximize",
        ...                             pruner=optuna.pruners.ThresholdPruner(lower=2.0))
        >>> study.optimize(objective, n_trials=1)
        >>> study.trials[0].state.name
        'PRUNED'
        >>> OptunaPruning(study.ask(), monitor="val/acc", step_unit="samples").step_unit
        'samples'
    """

    def __init__(
        self,
        trial: Any = None,
        monitor: str = "val/loss",
        *,
        step_unit: str = "global_step",
        sweep_trial: SweepTrial | None = None,
    ) -> None:
        super().__init__()
        if trial is None and sweep_trial is None:
            raise ValueError(
                "Expected argument `trial` to be an optuna.trial.Trial (or `sweep_trial` to be "
                "given), but got trial=None."
            )
        if trial is not None and not (hasattr(trial, "report") and hasattr(trial, "should_prune")):
            raise TypeError(
                f"Expected argument `trial` to be an optuna.trial.Trial, but got "
                f"{type(trial).__name__}."
            )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"Expected argument `monitor` to be a metric name, but got {monitor!r}.")
        check_choice("step_unit", step_unit, STEP_UNITS)
        if trial is not None and len(trial.study.directions) > 1:
            raise ValueError(
                "`trial` belongs to a multi-objective study; Optuna cannot prune those "
                f"(directions={[d.name for d in trial.study.directions]})."
            )
        self.trial = trial
        self.monitor = monitor
        self.sweep_trial = sweep_trial
        self.step_unit = step_unit
        #: training samples seen by all ranks so far (counted only for ``step_unit="samples"``)
        self.samples_seen = 0
        self.pruned_step: int | None = None
        self.last_value: float | None = None
        self.last_step: int | None = None

    @classmethod
    def from_environment(cls) -> OptunaPruning | None:
        """The callback for the trial this process runs in an ``mlcycle -m`` sweep, else None.

        None also when the sweep does not prune (no pruner, no monitor, or multi-objective).
        """
        handle = trial_from_environment()
        if handle is None or not handle.monitor or not handle.pruner:
            return None
        return cls(monitor=handle.monitor, step_unit=handle.step_unit, sweep_trial=handle)

    @property
    def state_key(self) -> str:
        """Two instances with different monitors keep separate states in a checkpoint."""
        return self._generate_state_key(monitor=self.monitor)

    def _ensure_trial(self) -> Any:
        if self.trial is None:
            assert self.sweep_trial is not None
            self.trial = self.sweep_trial.open()
        return self.trial

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # only rank 0 opens the storage: one connection per job, not one per GPU
        if stage == "fit" and trainer.is_global_zero:
            self._ensure_trial()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.step_unit != "epoch":
            return
        per_epoch = trainer.num_training_batches
        every = trainer.val_check_batch
        if math.isfinite(per_epoch) and math.isfinite(every) and every < per_epoch:
            # two validations in one epoch would report at the same step: Optuna keeps the first
            raise MLCycleError(
                f"OptunaPruning: `step_unit`='epoch' reports once per epoch, but the Trainer "
                f"validates every {every} of {per_epoch} batches; use step_unit='samples' or "
                f"'global_step'."
            )

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.step_unit == "samples":
            self.samples_seen += _batch_size(batch) * trainer.world_size

    def reporting_step(self, trainer: pl.Trainer) -> int:
        """The step the current validation is reported at, in :attr:`step_unit`."""
        if self.step_unit == "samples":
            return self.samples_seen
        if self.step_unit == "epoch":
            return int(trainer.current_epoch)
        return int(trainer.global_step)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_step is not None:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise MLCycleError(
                f"OptunaPruning: `monitor`={self.monitor!r} was not logged; available: "
                f"{sorted(metrics)}."
            )
        value = float(metrics[self.monitor])
        step = self.reporting_step(trainer)
        outcome = PruningOutcome.CONTINUE
        if trainer.is_global_zero:
            outcome = report_and_decide(self._ensure_trial(), value, step)
        # the decision is made once (rank 0) and applied everywhere, so no rank trains alone
        prune = bool(trainer.strategy.broadcast(outcome is PruningOutcome.PRUNE, src=0))
        self.last_value, self.last_step = value, step
        if prune:
            self.pruned_step = step
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info("Optuna trial %s pruned at step %d (%s=%.4g)", self._number(), step,
                         self.monitor, value)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_step is not None:
            import optuna

            value = "nan" if self.last_value is None or not math.isfinite(self.last_value) \
                else f"{self.last_value:.4g}"
            raise optuna.TrialPruned(
                f"Trial {self._number()} pruned at step {self.pruned_step} "
                f"({self.monitor}={value})."
            )

    def _number(self) -> Any:
        if self.trial is not None:
            return self.trial.number
        return self.sweep_trial.number if self.sweep_trial is not None else "?"

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "step_unit": self.step_unit,
                "samples_seen": self.samples_seen, "pruned_step": self.pruned_step,
                "last_step": self.last_step, "last_value": self.last_value}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pruned_step = state_dict.get("pruned_step")
        self.last_step = state_dict.get("last_step")
        self.last_value = state_dict.get("last_value")
        # a resumed run keeps counting samples from where the checkpoint was taken
        self.samples_seen = int(state_dict.get("samples_seen", 0))


def _batch_size(batch: Any) -> int:
    """Samples in one training batch (the first dimension of its tensors, as Lightning infers it)."""
    from lightning.pytorch.utilities.data import extract_batch_size
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    try:
        return int(extract_batch_size(batch))
    except (MisconfigurationException, RecursionError) as err:
        raise MLCycleError(
            f"OptunaPruning: `step_unit`='samples' needs the batch size, but it cannot be read "
            f"from a batch of type {type(batch).__name__} ({err}); use step_unit='global_step'."
        ) from None
