"""Unstructured magnitude pruning whose masks persist: in checkpoints, on resume, after fit.

Lightning's ``ModelPruning`` wraps ``torch.nn.utils.prune``: it reparametrizes every pruned
weight (``weight_orig`` * ``weight_mask``), prunes once per epoch, rewinds to the lottery ticket by
default and drops the masks when it makes them permanent, so zeros regrow on resume (Lightning
#13595, #13643, #8542). Here the weights stay plain ``nn.Parameter`` objects at all times: the
callback keeps boolean masks in its own state (saved in checkpoints), multiplies them into the
weights after every optimizer step, and never adds hooks or buffers to the model. The model's
``state_dict`` therefore loads strictly into a plain instance, ``torch.export`` sees an ordinary
module, and module-swapping callbacks such as quantization-aware training (Lightning #11047) can
run in the same fit: masks are looked up by parameter name each time they are applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice, check_fraction, check_positive

log = logging.getLogger(__name__)

#: layer types pruned when no ``layers`` are named
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Schedule(str, Enum):
    """When the sparsity grows."""

    ONE_SHOT = "one_shot"  # the target at once, at ``start_epoch``
    ITERATIVE = "iterative"  # every ``every_n_epochs`` epochs, a fixed share of the survivors
    GRADUAL = "gradual"  # every ``every_n_steps`` steps, Zhu & Gupta's cubic ramp


# -- pure functions --------------------------------------------------------------------------------
def prunable_parameters(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    param_name: str = "weight",
    layer_types: tuple[type[nn.Module], ...] = DEFAULT_LAYER_TYPES,
) -> dict[str, nn.Parameter]:
    """The weights to prune: ``{"<module>.weight": parameter}``.

    Args:
        model: any module.
        layers: module names (as in ``model.named_modules()``); None takes every module of
            ``layer_types``.
        param_name: the parameter of each module to prune.
        layer_types: module types pruned when ``layers`` is None.

    Raises:
        MLCycleError: for a name that is not a module of ``model`` or has no ``param_name``;
            the message lists the valid names.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> list(prunable_parameters(net))
        ['0.weight', '2.weight']
    """
    modules = dict(model.named_modules())
    valid = [n for n, m in modules.items() if isinstance(getattr(m, param_name, None), nn.Parameter)]
    if layers is None:
        names = [n for n in valid if isinstance(modules[n], layer_types)]
        if not names:
            # a traced graph (torch.export, PT2E quantization-aware training) keeps the parameter
            # names but not the layer modules: take every 2+-dimensional `weight` (Linear/Conv
            # kernels; norm weights are 1-D)
            graph = {n: p for n, p in model.named_parameters()
                     if n.rsplit(".", 1)[-1] == param_name and p.ndim >= 2}
            if graph:
                return graph
    else:
        unknown = [n for n in layers if n not in valid]
        if unknown:
            raise MLCycleError(
                f"`layers`: {unknown} are not modules with a `{param_name}` parameter; "
                f"valid names: {valid}."
            )
        names = list(layers)
    if not names:
        raise MLCycleError(
            f"Nothing to prune: the model has no {[t.__name__ for t in layer_types]} layers; "
            f"name them with `layers` (valid names: {valid})."
        )
    return {f"{n}.{param_name}" if n else param_name: getattr(modules[n], param_name) for n in names}


def compute_masks(
    weights: Mapping[str, torch.Tensor],
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    scope: str = "global",
    previous: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = kept) that prune the smallest weights by absolute value.

    With ``threshold``, every weight with ``|w| < threshold`` goes. With ``sparsity``, exactly
    ``round(sparsity * n)`` weights go, over all layers at once (``scope="global"``) or per layer
    (``scope="layer"``); ties are broken by position, so the count is exact. Weights already
    pruned in ``previous`` stay pruned (they are removed first), so zeros never regrow.

    Example:
        >>> w = {"a": torch.tensor([0.1, -0.5, 0.2, 0.9])}
        >>> compute_masks(w, sparsity=0.5)["a"].tolist()
        [False, True, False, True]
        >>> compute_masks(w, threshold=0.3)["a"].tolist()
        [False, True, False, True]
    """
    if (sparsity is None) == (threshold is None):
        raise MLCycleError("Give exactly one of `sparsity` and `threshold`.")
    check_choice("scope", scope, ("global", "layer"))
    previous = previous or {}
    masks: dict[str, torch.Tensor] = {}
    if threshold is not None:
        check_positive("threshold", threshold, allow_zero=True)
        for name, w in weights.items():
            keep = w.detach().abs() >= threshold
            if name in previous:
                keep &= previous[name].to(keep.device)
            masks[name] = keep
        return masks
    assert sparsity is not None
    check_fraction("sparsity", sparsity)

    def scores(name: str, w: torch.Tensor) -> torch.Tensor:
        s = w.detach().abs().flatten().float()
        if name in previous:  # already pruned: below every live weight, so removed first
            s = torch.where(previous[name].flatten().to(s.device), s, torch.full_like(s, -1.0))
        return s

    if scope == "layer":
        for name, w in weights.items():
            masks[name] = _keep_largest(scores(name, w), sparsity).view_as(w)
        return masks
    flat = [scores(n, w).cpu() for n, w in weights.items()]
    keep = _keep_largest(torch.cat(flat), sparsity)
    offset = 0
    for (name, w), s in zip(weights.items(), flat, strict=True):
        masks[name] = keep[offset : offset + s.numel()].view_as(w).to(w.device)
        offset += s.numel()
    return masks


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_prune = int(round(sparsity * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        # a stable sort breaks ties by position, so exactly n_prune entries go
        idx = torch.sort(scores, stable=True).indices[:n_prune]
        keep[idx] = False
    return keep


def polynomial_sparsity(progress: float, final: float, initial: float = 0.0, power: int = 3) -> float:
    """Zhu & Gupta (2017), "To prune, or not to prune", eq. 1: s = s_f + (s_i - s_f)(1 - p)^3.

    Prunes fast while many redundant weights remain and slowly near the target.

    Example:
        >>> polynomial_sparsity(0.0, 0.9), polynomial_sparsity(1.0, 0.9)
        (0.0, 0.9)
        >>> round(polynomial_sparsity(0.5, 0.8), 3)
        0.7
    """
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** power


def iterative_sparsity(round_index: int, rounds: int, final: float) -> float:
    """Sparsity after round ``round_index`` (1-based) of ``rounds``.

    Each round prunes the same share of the surviving weights (Han et al. 2015; Frankle & Carbin
    2019 prune 20% per round).

    Example:
        >>> round(iterative_sparsity(1, 2, 0.75), 3), iterative_sparsity(2, 2, 0.75)
        (0.5, 0.75)
    """
    if round_index >= rounds:
        return final
    return 1.0 - (1.0 - final) ** (round_index / rounds)


def sparsity_stats(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Share of pruned weights per mask and ``"overall"``.

    Example:
        >>> sparsity_stats({"a": torch.tensor([True, False]), "b": torch.tensor([False, False])})
        {'a': 0.5, 'b': 1.0, 'overall': 0.75}
    """
    out: dict[str, float] = {}
    pruned = total = 0
    for name, m in masks.items():
        p = int(m.numel() - int(m.sum()))
        out[name] = p / max(m.numel(), 1)
        pruned += p
        total += m.numel()
    out["overall"] = pruned / max(total, 1)
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Multiply each mask into the parameter of the same name (in place); missing names are skipped."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params.get(name)
        if p is not None and p.shape == mask.shape:
            p.mul_(mask.to(device=p.device, dtype=p.dtype))


def magnitude_prune(
    model: nn.Module,
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    scope: str = "global",
    layers: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Prune ``model`` once, in place, and return the keep-masks (no training).

    Example:
        >>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        >>> masks = magnitude_prune(net, sparsity=0.5)
        >>> round(sparsity_stats(masks)["overall"], 2)
        0.5
        >>> int((net[0].weight == 0).sum() + (net[2].weight == 0).sum())
        60
    """
    params = prunable_parameters(model, layers)
    masks = compute_masks(params, sparsity=sparsity, threshold=threshold, scope=scope)
    apply_masks(model, masks)
    return masks


# -- the callback ----------------------------------------------------------------------------------
class MagnitudePruning(Callback):
    """Prune the smallest weights during training and keep them pruned, for good.

    Give the target either as ``sparsity`` (share of weights removed, exact) or as ``threshold``
    (remove ``|w| < threshold``). Schedules: ``"one_shot"`` (all at ``start_epoch``),
    ``"iterative"`` (every ``every_n_epochs`` epochs, the same share of the survivors, reaching
    the target ``fine_tune_epochs`` before the end), ``"gradual"`` (every ``every_n_steps``
    optimizer steps along Zhu & Gupta's cubic ramp). Epochs after the last pruning round train
    the surviving weights only (the fine-tuning phase).

    Masks live in this callback's state, so they are saved in checkpoints and restored on resume;
    they are multiplied into the weights after every optimizer step, so pruned weights stay
    exactly zero. The model keeps plain parameters: its ``state_dict`` loads strictly into an
    unpruned instance of the same class. Sparsity per layer and overall is logged under
    ``prune/`` (TensorBoard or any logger) at every epoch end.

    Args:
        sparsity: target share of pruned weights, in [0, 1).
        threshold: prune weights with ``|w|`` below it (instead of ``sparsity``).
        scope: ``"global"`` (one ranking over all layers) or ``"layer"`` (each layer alike).
        schedule: ``"one_shot"``, ``"iterative"`` or ``"gradual"``.
        layers: module names to prune (relative to the LightningModule, e.g.
            ``"backbone.features.0"``); None prunes every Linear/Conv layer.
        start_epoch: first epoch that prunes.
        every_n_epochs: epochs between rounds of the iterative schedule.
        every_n_steps: optimizer steps between updates of the gradual schedule.
        fine_tune_epochs: final epochs without new pruning (iterative and gradual schedules).
        rewind: lottery-ticket rewind (Frankle & Carbin 2019): after each round, reset the
            surviving weights to their values at fit start. Off by default, unlike Lightning's
            ``ModelPruning``.
        log_per_layer: also log each layer's sparsity (``prune/sparsity/<weight>``).

    Example:
        >>> cb = MagnitudePruning(sparsity=0.8, schedule="gradual", every_n_steps=5)
        >>> cb.schedule.value, cb.sparsity
        ('gradual', 0.8)
    """

    def __init__(
        self,
        sparsity: float | None = 0.5,
        *,
        threshold: float | None = None,
        scope: str = "global",
        schedule: str = "one_shot",
        layers: Sequence[str] | None = None,
        start_epoch: int = 0,
        every_n_epochs: int = 1,
        every_n_steps: int = 10,
        fine_tune_epochs: int = 0,
        rewind: bool = False,
        log_per_layer: bool = True,
    ) -> None:
        if threshold is not None:
            sparsity = None
            check_positive("threshold", threshold, allow_zero=True)
        elif sparsity is None:
            raise MLCycleError("Give `sparsity` (a share in [0, 1)) or `threshold` (>= 0).")
        else:
            check_fraction("sparsity", sparsity)
        check_choice("scope", scope, ("global", "layer"))
        check_choice("schedule", schedule, [s.value for s in Schedule])
        for name, value in (("start_epoch", start_epoch), ("fine_tune_epochs", fine_tune_epochs)):
            if not isinstance(value, int) or value < 0:
                raise MLCycleError(f"`{name}` must be an integer >= 0, but got {name}={value!r}.")
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if not isinstance(value, int) or value < 1:
                raise MLCycleError(f"`{name}` must be an integer >= 1, but got {name}={value!r}.")
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise MLCycleError(f"`layers` must be a list of module names, but got {layers!r}.")
        self.sparsity = sparsity
        self.threshold = threshold
        self.scope = scope
        self.schedule = Schedule(schedule)
        self.layers = list(layers) if layers is not None else None
        self.start_epoch = start_epoch
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.fine_tune_epochs = fine_tune_epochs
        self.rewind = rewind
        self.log_per_layer = log_per_layer
        self.masks: dict[str, torch.Tensor] = {}
        self.current_level = 0.0  # the sparsity (or threshold) of the last round
        self.rounds_done = 0
        self._rewind_state: dict[str, torch.Tensor] = {}
        self._names: list[str] = []

    @property
    def state_key(self) -> str:
        """One checkpoint entry per distinct configuration."""
        return self._generate_state_key(
            sparsity=self.sparsity, threshold=self.threshold, scope=self.scope, layers=self.layers
        )

    # -- decisions (plain numbers in, plain numbers out) ------------------------------------------
    @property
    def target(self) -> float:
        """The final sparsity or threshold."""
        return float(self.sparsity if self.sparsity is not None else self.threshold)  # type: ignore[arg-type]

    def _prune_end_epoch(self, max_epochs: int) -> int:
        """First epoch at which the target must hold (later epochs only fine-tune)."""
        return max(self.start_epoch + 1, max_epochs - self.fine_tune_epochs)

    def level_at_epoch(self, epoch: int, max_epochs: int) -> float | None:
        """The level the one-shot/iterative schedule prunes to at the start of ``epoch`` (or None)."""
        if epoch < self.start_epoch:
            return None
        if self.schedule is Schedule.ONE_SHOT:
            return self.target if self.rounds_done == 0 else None
        if self.schedule is Schedule.ITERATIVE:
            end = self._prune_end_epoch(max_epochs)
            rounds = max(1, math.ceil((end - self.start_epoch) / self.every_n_epochs))
            if (epoch - self.start_epoch) % self.every_n_epochs != 0 and epoch < end:
                return None
            k = min(rounds, (epoch - self.start_epoch) // self.every_n_epochs + 1)
            if k <= self.rounds_done:
                return None
            if self.sparsity is None:  # a threshold grows linearly
                return self.target * k / rounds
            return iterative_sparsity(k, rounds, self.target)
        return None

    def level_at_step(self, step: int, start_step: int, end_step: int) -> float | None:
        """The level of the gradual schedule at optimizer step ``step`` (or None between updates)."""
        if step < start_step or (step - start_step) % self.every_n_steps != 0 and step < end_step:
            return None
        progress = (step - start_step) / max(end_step - start_step, 1)
        return polynomial_sparsity(progress, self.target)

    # -- mechanics -----------------------------------------------------------------------------
    def _params(self, pl_module: pl.LightningModule) -> dict[str, nn.Parameter]:
        if not self._names:
            self._names = list(prunable_parameters(pl_module, self.layers))
        params = dict(pl_module.named_parameters())
        missing = [n for n in self._names if n not in params]
        if missing:
            raise MLCycleError(f"MagnitudePruning: parameters {missing} disappeared from the model.")
        return {n: params[n] for n in self._names}

    def prune_to(self, trainer: pl.Trainer, pl_module: pl.LightningModule, level: float) -> None:
        """Prune to ``level`` (a sparsity or a threshold) now; decided on rank 0 and broadcast."""
        params = self._params(pl_module)
        kwargs = {"sparsity": level} if self.sparsity is not None else {"threshold": level}
        masks = compute_masks(params, scope=self.scope, previous=self.masks, **kwargs)
        masks = {k: v.cpu() for k, v in masks.items()}
        masks = trainer.strategy.broadcast(masks, src=0)  # every rank applies rank 0's masks
        self.masks = masks
        self.current_level = level
        self.rounds_done += 1
        if self.rewind and self._rewind_state:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self._rewind_state[name].to(p.device, p.dtype))
        apply_masks(pl_module, self.masks)
        stats = sparsity_stats(self.masks)
        log.info("MagnitudePruning round %d: level %.4g, overall sparsity %.4f",
                 self.rounds_done, level, stats["overall"])

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # resolve the layer names now, before other callbacks' setup may trace the model
        # (e.g. quantization-aware training); fails early on unknown names
        if stage == "fit":
            self._params(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self._params(pl_module)
        if self.rewind and not self._rewind_state:
            self._rewind_state = {n: p.detach().cpu().clone() for n, p in params.items()}
        if self.masks:  # resumed: the checkpoint's masks hold again, before any step
            apply_masks(pl_module, self.masks)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule is Schedule.GRADUAL:
            return
        level = self.level_at_epoch(trainer.current_epoch, trainer.max_epochs or trainer.current_epoch + 1)
        if level is not None:
            self.prune_to(trainer, pl_module, level)

    def _step_bounds(self, trainer: pl.Trainer) -> tuple[int, int]:
        total = int(trainer.estimated_stepping_batches)
        epochs = max(trainer.max_epochs or 1, 1)
        per_epoch = max(total // epochs, 1)
        start = self.start_epoch * per_epoch
        end = self._prune_end_epoch(epochs) * per_epoch
        return start, max(end, start + 1)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # no gradient through a pruned weight: keeps optimizer moments of pruned weights at zero
        if not self.masks:
            return
        params = dict(pl_module.named_parameters())
        for name, mask in self.masks.items():
            p = params.get(name)
            if p is not None and p.grad is not None and p.grad.shape == mask.shape:
                p.grad.mul_(mask.to(p.grad.device, p.grad.dtype))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule is Schedule.GRADUAL:
            start, end = self._step_bounds(trainer)
            level = self.level_at_step(trainer.global_step, start, end)
            if level is not None and (level > self.current_level or not self.masks):
                self.prune_to(trainer, pl_module, level)
                return
        # weight decay and momentum move pruned weights off zero: put them back after every step
        if self.masks:
            apply_masks(pl_module, self.masks)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.masks:
            return
        stats = sparsity_stats(self.masks)
        metrics = {"prune/sparsity": stats.pop("overall")}
        if self.log_per_layer:
            metrics.update({f"prune/sparsity/{k}": v for k, v in stats.items()})
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a fit stopped early may end before the schedule's last round: the promised level holds
        if self.current_level < self.target or not self.masks:
            log.warning("MagnitudePruning: training ended before the last round; pruning to %s now "
                        "(without fine-tuning).", self.target)
            self.prune_to(trainer, pl_module, self.target)
        self.make_permanent(pl_module)

    def make_permanent(self, model: nn.Module) -> None:
        """Write the masks into the weights one last time (they are plain parameters already)."""
        apply_masks(model, self.masks)

    def sparsity_report(self) -> dict[str, float]:
        """Sparsity per pruned weight and ``"overall"`` (empty before the first round)."""
        return sparsity_stats(self.masks) if self.masks else {}

    # -- checkpointing -------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": {k: v.cpu() for k, v in self.masks.items()},
            "current_level": self.current_level,
            "rounds_done": self.rounds_done,
            "rewind_state": dict(self._rewind_state),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = {k: v.bool() for k, v in state_dict.get("masks", {}).items()}
        self.current_level = float(state_dict.get("current_level", 0.0))
        self.rounds_done = int(state_dict.get("rounds_done", 0))
        self._rewind_state = dict(state_dict.get("rewind_state", {}))
        if self.masks:
            self._names = list(self.masks)
