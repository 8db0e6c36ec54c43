"""Find the fastest DataLoader / thread settings by timing real training steps.

``num_workers`` is the most common speed knob users get wrong in both directions: zero workers
starve a GPU behind a costly ``__getitem__``, while workers and intra-op threads that outnumber the
cores make a small model on a small CPU several times slower. Rather than guess, measure: run a
few real optimizer steps (model included) per candidate, estimate samples/s over the run, keep the
fastest, and put the model, optimizer and RNGs back so training is the one it would have been.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.data import extract_batch_size
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_mlcycle._utils import rank_zero, tensorboard_writer
from lightning_mlcycle.tuning._throughput import (
    LoaderSettings,
    ThroughputResult,
    candidate_grid,
    loader_length,
    preserved_training_state,
    rebuild_dataloader,
    search,
    settings_of,
)

log = logging.getLogger(__name__)

#: attributes a data module (or LightningModule) may expose for its loaders; the tuner sets them
_ATTRS = ("num_workers", "persistent_workers", "pin_memory", "prefetch_factor")


def _check_search_args(
    steps: int, warmup_steps: int, max_time: float, min_speedup: float, epochs: int
) -> None:
    for name, value, low in (
        ("steps", steps, 1),
        ("warmup_steps", warmup_steps, 1),
        ("epochs", epochs, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, but got {name}={value!r}.")
    if not isinstance(max_time, (int, float)) or not max_time > 0:
        raise ValueError(
            f"`max_time` must be a positive number of seconds, but got max_time={max_time!r}."
        )
    if not isinstance(min_speedup, (int, float)) or not min_speedup >= 1.0:
        raise ValueError(f"`min_speedup` must be >= 1.0, but got min_speedup={min_speedup!r}.")


def tune_throughput(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader | Callable[[LoaderSettings], Iterable[Any]],
    *,
    step: Callable[[Any], int] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    device: torch.device | str | None = None,
    num_workers: Sequence[int] | None = None,
    num_threads: Sequence[int] | None = None,
    prefetch_factor: Sequence[int | None] | None = None,
    pin_memory: Sequence[bool] | None = None,
    persistent_workers: bool = True,
    start: LoaderSettings | None = None,
    steps: int = 10,
    warmup_steps: int = 2,
    max_time: float = 30.0,
    epochs: int = 1,
    min_speedup: float = 1.05,
) -> ThroughputResult:
    """Time real training steps of a plain PyTorch model for each loader/thread candidate.

    The model, optimizer and RNG states are restored afterwards. Apply the result yourself:
    ``torch.set_num_threads(r.best.num_threads)`` and ``rebuild_dataloader(loader, r.best)``
    (the :class:`ThroughputTuner` callback does both inside a Lightning ``Trainer``).

    Args:
        model: the network (trained in ``train()`` mode for the measurement).
        optimizer: its optimizer (stepped for real, then restored).
        loader: a ``DataLoader`` (rebuilt per candidate by :func:`rebuild_dataloader`) or a
            function ``settings -> iterable of batches``.
        step: ``step(batch) -> number of samples``; default: ``x, y = batch[:2]``,
            ``loss_fn(model(x), y)``, backward, ``optimizer.step()``.
        loss_fn: loss of the default step.
        device: where the default step moves batches (default: the model's device).
        num_workers: worker counts to try (default ``{0, 1, n_cpus}``).
        num_threads: intra-op thread counts to try (default ``{1, n_cpus}``).
        prefetch_factor: prefetch factors to try (default: the starting one).
        pin_memory: pin-memory choices (default: ``(False, True)`` when ``device`` is CUDA).
        persistent_workers: also consider persistent workers (scored from the measured start-up).
        start: the settings used now (default: read from ``loader`` and ``torch``).
        steps: timed steps per candidate.
        warmup_steps: untimed steps first (fills the workers' queues; the first gives start-up).
        max_time: seconds after which no new candidate is started.
        epochs: epochs of the planned run (how often a non-persistent start-up is paid).
        min_speedup: a candidate must beat ``start`` by this factor to be chosen.

    Returns:
        the :class:`ThroughputResult` (``.best``, ``.speedup``, ``.table()``).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> net = nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> dl = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=8)
        >>> before = net.weight.clone()
        >>> r = tune_throughput(net, opt, dl, num_workers=[0], num_threads=[1], steps=2)
        >>> r.best.num_workers, torch.equal(before, net.weight)
        (0, True)
    """
    _check_search_args(steps, warmup_steps, max_time, min_speedup, epochs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    if isinstance(loader, DataLoader):
        base_loader = loader

        def make_loader(s: LoaderSettings) -> Iterable[Any]:
            return rebuild_dataloader(base_loader, s)

        start = start or settings_of(loader)
        batches = loader_length(loader)
        generators = [
            g
            for g in (loader.generator, getattr(loader.sampler, "generator", None))
            if g is not None
        ]
    elif callable(loader):
        make_loader, batches, generators = loader, None, []  # type: ignore[assignment]
        start = start or LoaderSettings(num_threads=torch.get_num_threads())
    else:
        raise TypeError(
            f"Expected argument `loader` to be a DataLoader or a function of LoaderSettings, "
            f"but got {type(loader).__name__}."
        )
    dev = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    if pin_memory is None:
        pin_memory = (False, True) if dev.type == "cuda" else (start.pin_memory,)
    candidates = candidate_grid(
        start,
        num_workers=num_workers,
        num_threads=num_threads,
        prefetch_factor=prefetch_factor,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
    )

    def default_step(batch: Any) -> int:
        x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return int(y.shape[0])

    with preserved_training_state(model, [optimizer], generators):
        model.train()
        return search(
            step or default_step,
            make_loader,
            candidates,
            start=start,
            steps=steps,
            warmup_steps=warmup_steps,
            max_time=max_time,
            epochs=epochs,
            min_speedup=min_speedup,
            allow_persistent=persistent_workers,
            batches_per_epoch=batches,
        )


class _Source:
    """Where the Trainer gets its training loader, and how to change its settings.

    * ``"attributes"``: the data module (or LightningModule) builds loaders from attributes such
      as ``num_workers`` (our ``SplitDataModule``); the tuner sets them, and every later
      (re)load, validation and test loader included, uses them.
    * ``"direct"``: a ``DataLoader`` was passed to ``fit``; the tuner rebuilds it.
    * ``"fixed"``: a hook builds loaders we cannot influence: only threads are tuned.
    """

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainer = trainer
        dm = trainer.datamodule
        if dm is not None and is_overridden("train_dataloader", dm):
            self.holder: Any = dm
        elif is_overridden("train_dataloader", pl_module):
            self.holder = pl_module
        else:
            self.holder = None
        if self.holder is not None:
            self.loader = self.holder.train_dataloader()
            self.attrs = [a for a in _ATTRS if hasattr(self.holder, a)]
            self.mode = "attributes" if "num_workers" in self.attrs else "fixed"
            self.saved = {a: getattr(self.holder, a) for a in self.attrs}
        else:
            # loaders passed to `fit(train_dataloaders=...)` live only in the fit loop's data
            # source; Lightning has no public accessor for it before the loop starts
            self.loader = trainer.fit_loop._data_source.instance
            self.attrs, self.saved = [], {}
            self.mode = "direct" if isinstance(self.loader, DataLoader) else "fixed"

    def start(self) -> LoaderSettings:
        return settings_of(self.loader)

    def tunable(self) -> set[str]:
        """Which loader options this source lets the tuner change."""
        if self.mode == "direct":
            return set(_ATTRS)
        if self.mode == "attributes":
            return set(self.attrs)
        return set()

    def make(self, s: LoaderSettings) -> Iterable[Any]:
        if self.mode == "direct":
            return rebuild_dataloader(self.loader, s)
        if self.mode == "attributes":
            self._set(s)
            return self.holder.train_dataloader()
        return self.loader

    def _set(self, s: LoaderSettings) -> None:
        values = {
            "num_workers": s.num_workers,
            "persistent_workers": s.persistent_workers,
            "pin_memory": s.pin_memory,
            "prefetch_factor": s.prefetch_factor,
        }
        for a in self.attrs:
            setattr(self.holder, a, values[a])

    def restore(self) -> None:
        for a, v in self.saved.items():
            setattr(self.holder, a, v)

    def apply(self, s: LoaderSettings) -> None:
        if self.mode == "attributes":
            self._set(s)
        elif self.mode == "direct":
            self.trainer.fit_loop._data_source.instance = rebuild_dataloader(self.loader, s)

    def generators(self) -> list[torch.Generator]:
        loader = self.loader
        gens = [
            getattr(loader, "generator", None),
            getattr(getattr(loader, "sampler", None), "generator", None),
        ]
        return [g for g in gens if isinstance(g, torch.Generator)]


@contextmanager
def _quiet(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
    """No callbacks and no ``self.log`` while measuring: the steps must leave no trace."""
    callbacks = trainer.callbacks
    trainer.callbacks = []

    def _noop(*args: Any, **kwargs: Any) -> None:
        return None

    pl_module.log = _noop  # type: ignore[method-assign]
    pl_module.log_dict = _noop  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log
        del pl_module.log_dict
        trainer.callbacks = callbacks


class ThroughputTuner(Callback):
    """Measure training throughput at fit start and switch to the fastest loader/thread settings.

    Like Lightning's ``BatchSizeFinder`` it runs at ``on_fit_start``, but it measures speed, not
    memory: for each candidate (``num_workers`` x intra-op threads x ``prefetch_factor`` x
    ``pin_memory`` on a GPU) it runs ``warmup_steps + steps`` real optimizer steps of the
    Trainer's own training step on the real training loader, estimates samples/s over the run
    (counting worker start-up once per epoch, or once per run with ``persistent_workers``), then
    restores model, optimizer and RNG states, applies the fastest settings and logs the table and
    the speed-up (log and TensorBoard text ``tuning/throughput``).

    Settings are applied to a data module (or LightningModule) that exposes ``num_workers``
    (and optionally ``persistent_workers``, ``pin_memory``, ``prefetch_factor``) attributes used
    by its ``*_dataloader`` hooks, or to a ``DataLoader`` passed to ``fit``; with other hooks
    only the thread count is tuned. Under DDP every rank measures in step, rank zero's clock
    bounds the search and the rate is averaged over ranks, so all ranks choose the same.

    Args:
        num_workers: worker counts to try (default ``{0, 1, n_cpus}``).
        num_threads: intra-op thread counts to try (default ``{1, n_cpus}``).
        prefetch_factor: prefetch factors to try (default: keep the current one).
        pin_memory: pin-memory choices (default: both on a CUDA device, the current one otherwise).
        persistent_workers: allow choosing persistent workers.
        steps: timed steps per candidate.
        warmup_steps: untimed steps before them (the first one measures the start-up cost).
        max_time: seconds after which no new candidate is started (the running one finishes).
        min_speedup: a candidate must beat the starting settings by this factor to be chosen
            (a guard against timing noise).

    Example:
        >>> from lightning_mlcycle import ArrayDataModule, ClassificationModule
        >>> from lightning_mlcycle.models import MLP
        >>> import numpy as np
        >>> dm = ArrayDataModule(np.random.rand(120, 4), np.arange(120) % 2, batch_size=8)
        >>> tuner = ThroughputTuner(num_workers=[0], num_threads=[1, 2], steps=3, max_time=5)
        >>> trainer = pl.Trainer(max_epochs=1, callbacks=[tuner], logger=False, limit_val_batches=0,
        ...                      enable_checkpointing=False, enable_progress_bar=False,
        ...                      enable_model_summary=False)
        >>> trainer.fit(ClassificationModule(MLP(2, (4,)), num_classes=2), datamodule=dm)
        >>> tuner.result.best.num_threads in (1, 2)
        True
        >>> ThroughputTuner(num_workers=[-1])
        Traceback (most recent call last):
        ...
        ValueError: `num_workers` cannot be negative, but got num_workers=-1.
    """

    def __init__(
        self,
        *,
        num_workers: Sequence[int] | None = None,
        num_threads: Sequence[int] | None = None,
        prefetch_factor: Sequence[int | None] | None = None,
        pin_memory: Sequence[bool] | None = None,
        persistent_workers: bool = True,
        steps: int = 10,
        warmup_steps: int = 2,
        max_time: float = 30.0,
        min_speedup: float = 1.05,
    ) -> None:
        _check_search_args(steps, warmup_steps, max_time, min_speedup, 1)
        # validate the candidates now (negative workers, zero threads...), not at fit start
        candidate_grid(
            LoaderSettings(),
            num_workers=num_workers,
            num_threads=num_threads,
            prefetch_factor=prefetch_factor,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
        )
        self.num_workers = None if num_workers is None else list(num_workers)
        self.num_threads = None if num_threads is None else list(num_threads)
        self.prefetch_factor = None if prefetch_factor is None else list(prefetch_factor)
        self.pin_memory = None if pin_memory is None else list(pin_memory)
        self.persistent_workers = persistent_workers
        self.steps = steps
        self.warmup_steps = warmup_steps
        self.max_time = float(max_time)
        self.min_speedup = float(min_speedup)
        self.result: ThroughputResult | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(steps=self.steps, max_time=self.max_time)

    # -- hooks ---------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.result is not None:
            # resumed (or a second fit): apply what was measured instead of measuring again
            self._apply(trainer, pl_module, self.result.best)
            return
        if trainer.fast_dev_run:
            log.info("ThroughputTuner: skipped under fast_dev_run.")
            return
        self.result = self.tune(trainer, pl_module)
        self._report(trainer, self.result)

    def tune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ThroughputResult:
        """Measure the candidates on ``trainer``'s training step and loader, apply the best."""
        source = _Source(trainer, pl_module)
        start = replace(source.start(), num_threads=torch.get_num_threads())
        candidates = self._candidates(trainer, source, start)
        strategy = trainer.strategy
        world = max(1, trainer.world_size)
        n = loader_length(source.loader)
        batches = None if n is None else self._limit(trainer, math.ceil(n / world))
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 1000

        def keep_going(ok: bool) -> bool:
            return bool(strategy.broadcast(ok, src=0))

        def reduce_rate(rate: float) -> float:
            if world == 1:
                return rate
            t = torch.tensor(float(rate), device=strategy.root_device)
            return float(strategy.reduce(t, reduce_op="mean"))

        with (
            _quiet(trainer, pl_module),
            preserved_training_state(pl_module, trainer.optimizers, source.generators()),
        ):
            pl_module.train()
            try:
                result = search(
                    _trainer_step(trainer, pl_module),
                    source.make,
                    candidates,
                    start=start,
                    steps=self.steps,
                    warmup_steps=self.warmup_steps,
                    max_time=self.max_time,
                    epochs=epochs,
                    min_speedup=self.min_speedup,
                    allow_persistent=self.persistent_workers
                    and "persistent_workers" in source.tunable(),
                    batches_per_epoch=batches,
                    keep_going=keep_going,
                    reduce_rate=reduce_rate,
                )
            finally:
                source.restore()
        source.apply(result.best)
        torch.set_num_threads(result.best.num_threads)
        return result

    def _apply(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, best: LoaderSettings
    ) -> None:
        source = _Source(trainer, pl_module)
        source.apply(best)
        torch.set_num_threads(best.num_threads)

    def _candidates(
        self, trainer: pl.Trainer, source: _Source, start: LoaderSettings
    ) -> list[LoaderSettings]:
        tunable = source.tunable()
        on_gpu = trainer.strategy.root_device.type == "cuda"
        pins = self.pin_memory
        if pins is None:
            pins = [False, True] if on_gpu else [start.pin_memory]
        elif not on_gpu and True in pins:
            # page-locked memory only speeds up host-to-GPU copies
            pins = [p for p in pins if not p] or [start.pin_memory]
        workers, prefetch = self.num_workers, self.prefetch_factor
        if "num_workers" not in tunable:
            workers = [start.num_workers]
        if "prefetch_factor" not in tunable:
            prefetch = [start.prefetch_factor]
        if "pin_memory" not in tunable:
            pins = [start.pin_memory]
        if not tunable:
            log.warning(
                "ThroughputTuner: the training loader comes from a hook without `num_workers` "
                "attributes, so only the thread count is tuned. Give your data module "
                "`num_workers`/`persistent_workers`/`pin_memory` attributes used by its loaders."
            )
        return candidate_grid(
            start,
            num_workers=workers,
            num_threads=self.num_threads,
            prefetch_factor=prefetch,
            pin_memory=pins,
            persistent_workers=self.persistent_workers,
        )

    @staticmethod
    def _limit(trainer: pl.Trainer, n: int) -> float:
        limit = trainer.limit_train_batches
        if limit is None:
            return float(n)
        if isinstance(limit, int):
            return float(min(n, limit))
        return max(1.0, n * float(limit))

    def _report(self, trainer: pl.Trainer, result: ThroughputResult) -> None:
        if not rank_zero():
            return
        table = result.table()
        log.info("Throughput tuning (samples/s, model included):\n%s", table)
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        step = trainer.global_step
        writer.add_text("tuning/throughput", table, global_step=step)
        writer.add_scalar("tuning/throughput_start", result.start_rate, global_step=step)
        writer.add_scalar("tuning/throughput_best", result.best_rate, global_step=step)
        writer.add_scalar("tuning/throughput_speedup", result.speedup, global_step=step)
        writer.flush()

    # -- checkpointing -------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"result": self.result.to_dict()} if self.result is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        data = state_dict.get("result")
        self.result = ThroughputResult.from_dict(data) if data else None


def _trainer_step(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Callable[[Any], int]:
    """One real training step through the Trainer's strategy (device, precision, DDP)."""
    strategy = trainer.strategy
    device = strategy.root_device
    automatic = pl_module.automatic_optimization
    optimizer = trainer.optimizers[0] if automatic and trainer.optimizers else None
    counter = [0]

    def step(batch: Any) -> int:
        n = extract_batch_size(batch)
        batch = strategy.batch_to_device(batch)
        idx = counter[0]
        counter[0] += 1
        if optimizer is None:
            strategy.training_step(batch, idx)
        else:

            def closure() -> torch.Tensor | None:
                optimizer.zero_grad()
                out = strategy.training_step(batch, idx)
                loss = out.get("loss") if isinstance(out, Mapping) else out
                if loss is None:
                    return None
                strategy.backward(loss, optimizer)
                return loss

            strategy.optimizer_step(optimizer, closure, model=pl_module)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return n

    return step


__all__ = [
    "LoaderSettings",
    "ThroughputResult",
    "ThroughputTuner",
    "rebuild_dataloader",
    "tune_throughput",
]
