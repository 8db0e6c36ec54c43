"""Structured pruning that removes whole channels, so the model really gets smaller and faster.

Built on Torch-Pruning's DepGraph (Fang et al., CVPR 2023): it traces the model, groups the
layers whose channels depend on each other (a conv, its BatchNorm, the next conv's inputs, the
residual additions) and removes the least important channels of each group together. Unlike
masks, the result is a plain, smaller ``nn.Module``.

A pruned model no longer matches its class's constructor, so it is saved as a **rebuild
recipe**: the Torch-Pruning pruning history (module names and channel indices, plain lists),
the weights, the input shape and, when known, the Hydra config of the original model. Loading
builds the original model, replays the history and loads the weights strictly, all with
``torch.load(weights_only=True)``: no pickled code is executed (VainF/Torch-Pruning #428).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F  # noqa: N812
from typing_extensions import override

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_choice, check_fraction
from lightning_mlcycle.compression._report import count_macs_params
from lightning_mlcycle.compression._surgery import load_recipe_file, submodule

log = logging.getLogger(__name__)

_FORMAT = "lightning_mlcycle.structured_pruning/1"
_IMPORTANCE = ("magnitude", "taylor")
_LR_SCHEDULES = ("cosine", None)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
History = list  # [(module name, is_out_channel_pruning, [channel indices])]


def _importance(name: str) -> Any:
    import torch_pruning as tp

    check_choice("importance", name, _IMPORTANCE)
    if name == "taylor":  # Molchanov et al. 2019: |w * dL/dw| summed over a channel group
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)  # group L2 norm (Li et al. 2017)


def output_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module | None:
    """The last Linear/Conv whose output width equals the model's.

    Pruning it would change the number of classes, so it is never pruned.
    """
    with torch.no_grad():
        out = model(example_inputs)
    width = out.shape[1] if out.ndim > 1 else None
    last = None
    for m in model.modules():
        size = getattr(m, "out_features", None) if isinstance(m, nn.Linear) else (
            getattr(m, "out_channels", None) if isinstance(m, nn.modules.conv._ConvNd) else None)
        if size is not None and size == width:
            last = m
    return last


def _resolve(model: nn.Module, names: Sequence[str] | None) -> list[nn.Module]:
    if not names:
        return []
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        valid = [n for n, m in modules.items() if n and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        raise MLCycleError(f"`ignored_layers`: {unknown} are not modules of the model; valid names: {valid}.")
    return [modules[n] for n in names]


def _plain_history(history: Iterable[Any]) -> History:
    return [[str(n), bool(out), [int(i) for i in idx]] for n, out, idx in history]


@dataclass
class PruningResult:
    """What :func:`structured_prune` did.

    Attributes:
        model: the pruned model (the same object, changed in place).
        history: the Torch-Pruning pruning history (module name, out-channel pruning?, indices).
        macs_before: MACs of one forward pass before.
        macs_after: and after.
        params_before: parameters before.
        params_after: and after.
    """

    model: nn.Module
    history: History = field(default_factory=list)
    macs_before: int = 0
    macs_after: int = 0
    params_before: int = 0
    params_after: int = 0


def _build_pruner(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    ratio: float,
    importance: str,
    iterative_steps: int,
    ignored: list[nn.Module],
    global_pruning: bool,
    round_to: int | None,
    ratio_dict: dict[nn.Module, float] | None = None,
) -> Any:
    import torch_pruning as tp

    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example_inputs,
            importance=_importance(importance),
            pruning_ratio=ratio,
            pruning_ratio_dict=ratio_dict or None,
            iterative_steps=iterative_steps,
            ignored_layers=ignored,
            global_pruning=global_pruning,
            round_to=round_to,
        )
    except Exception as err:  # tracing runs the user's forward: name the model in the error
        raise MLCycleError(
            f"Torch-Pruning could not trace {type(model).__name__} with an input of shape "
            f"{tuple(example_inputs.shape)}: {type(err).__name__}: {err}"
        ) from err
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                           root_module_types=pruner.root_module_types))
    if not groups:
        raise MLCycleError(
            f"Torch-Pruning found no prunable channel groups in {type(model).__name__}: its "
            f"forward could not be traced through autograd (detached tensors, no_grad, non-torch "
            f"ops?) or every Linear/Conv is ignored. Use MagnitudePruning for such models."
        )
    return pruner


def _taylor_grads(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]] | None,
                  loss_fn: LossFn, max_batches: int) -> None:
    if batches is None:
        raise MLCycleError("`importance='taylor'` needs gradients: pass `batches` of (inputs, targets).")
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    for i, batch in enumerate(batches):
        if i >= max_batches:
            break
        x, y = batch[0].to(device), batch[1].to(device)
        loss_fn(model(x), y).backward()


def _out_channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    return None


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Linear/Conv layer, by module name."""
    widths = {name: _out_channels(m) for name, m in model.named_modules()}
    return {name: w for name, w in widths.items() if name and w is not None}


def _ratio_dict(model: nn.Module, keep: Mapping[str, int]) -> dict[nn.Module, float]:
    # Torch-Pruning keeps int(channels * (1 - ratio)); aiming at keep + 0.5 makes that exactly `keep`
    out: dict[nn.Module, float] = {}
    for name, m in model.named_modules():
        width = _out_channels(m)
        if name in keep and width:
            out[m] = min(max(1.0 - (keep[name] + 0.5) / width, 0.0), 0.99)
    return out


def _check_round_to(round_to: Any) -> None:
    if round_to is not None and (not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1):
        raise MLCycleError(f"`round_to` must be a positive integer or None, but got round_to={round_to!r}.")


def target_widths(widths: Mapping[str, int], ratio: float, round_to: int | None = None) -> dict[str, int]:
    """Output channels each layer keeps when a share ``ratio`` of ``widths`` is removed.

    Without ``round_to`` a layer keeps ``int(width * (1 - ratio))`` (Torch-Pruning's count). With
    it, the count is the nearest multiple of ``round_to`` (ties up), at least ``round_to`` and at most the
    layer's width; a layer no wider than ``round_to`` keeps the plain count. (Torch-Pruning's own
    ``round_to`` rounds down: 32 channels at ratio 0.3 kept 16, and a small layer could vanish.)
    Vectorized CPU kernels want such counts: in ONNX Runtime on an AVX2 CPU the digits CNN at width
    27 ran 1.4x slower than at width 32 (benchmarks/compression.md).

    Example:
        >>> target_widths({"a": 32, "b": 64, "c": 6}, 0.3, round_to=8)
        {'a': 24, 'b': 48, 'c': 4}
        >>> target_widths({"a": 32}, 0.3)
        {'a': 22}
    """
    _check_round_to(round_to)
    out: dict[str, int] = {}
    for name, width in widths.items():
        keep = width * (1.0 - ratio)
        if round_to and width > round_to:
            out[name] = min(width, max(round_to, round_to * math.floor(keep / round_to + 0.5)))
        else:
            out[name] = max(int(keep + 1e-9), 1)
    return out


def prune_round(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    ratio: float | None = None,
    target_macs: int | None = None,
    importance: str = "magnitude",
    ignored_layers: Sequence[str] | None = None,
    global_pruning: bool = False,
    round_to: int | None = None,
    batches: Iterable[Sequence[torch.Tensor]] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    taylor_batches: int = 4,
    max_ratio: float = 0.95,
    keep_channels: Mapping[str, int] | None = None,
) -> History:
    """Remove channels once, in place, and return the pruning history.

    Removes a share ``ratio`` of each group's channels (of the model as it is now), or as many as
    needed to reach ``target_macs``. ``keep_channels`` (layer name -> output channels to keep)
    overrides ``ratio`` for the layers it names, so iterative rounds land exactly on the channel
    counts of one-shot pruning instead of compounding each round's rounding down.
    """
    if (ratio is None) == (target_macs is None):
        raise MLCycleError("Give exactly one of `ratio` and `target_macs`.")
    was = model.training
    model.eval()
    try:
        ignored = _resolve(model, ignored_layers)
        head = output_layer(model, example_inputs)
        if head is not None and head not in ignored:
            ignored.append(head)
        if ratio is not None:
            check_fraction("ratio", ratio)
            if ratio == 0:
                return []
            ratio_dict = None
            if not global_pruning:
                if keep_channels is None and round_to:
                    # our nearest-multiple rounding, not Torch-Pruning's rounding down
                    keep_channels = target_widths(layer_widths(model), ratio, round_to)
                if keep_channels:
                    ratio_dict = _ratio_dict(model, keep_channels)
            pruner = _build_pruner(model, example_inputs, ratio=ratio, importance=importance,
                                   iterative_steps=1, ignored=ignored, global_pruning=global_pruning,
                                   round_to=None if ratio_dict else round_to, ratio_dict=ratio_dict)
            if importance == "taylor":
                _taylor_grads(model, batches, loss_fn, taylor_batches)
            pruner.step()
            return _plain_history(pruner.pruning_history())
        # fine steps up to max_ratio, stopping as soon as the MACs fit (Torch-Pruning's recipe)
        steps = 50
        pruner = _build_pruner(model, example_inputs, ratio=max_ratio, importance=importance,
                               iterative_steps=steps, ignored=ignored, global_pruning=global_pruning,
                               round_to=round_to)
        macs, _ = count_macs_params(model, example_inputs)
        for _ in range(steps):
            if macs <= target_macs:  # type: ignore[operator]
                break
            if importance == "taylor":
                _taylor_grads(model, batches, loss_fn, taylor_batches)
            pruner.step()
            macs, _ = count_macs_params(model, example_inputs)
        if macs > target_macs:  # type: ignore[operator]
            log.warning("structured pruning: stopped at %d MACs (target %d) at max_ratio=%s.",
                        macs, target_macs, max_ratio)
        return _plain_history(pruner.pruning_history())
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)


def structured_prune(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    ratio: float | None = None,
    target_macs: int | float | None = None,
    importance: str = "magnitude",
    ignored_layers: Sequence[str] | None = None,
    global_pruning: bool = False,
    round_to: int | None = None,
    batches: Iterable[Sequence[torch.Tensor]] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    taylor_batches: int = 4,
) -> PruningResult:
    """Physically remove channels from ``model`` (in place) with Torch-Pruning's DepGraph.

    Args:
        model: any module Torch-Pruning can trace (CNNs, ResNets, MobileNets, MLPs...).
        example_inputs: one input batch (its values do not matter).
        ratio: share of channels removed from every prunable layer, in [0, 1).
        target_macs: prune until one forward pass costs at most this many MACs; a value <= 1 is
            read as a share of the current MACs.
        importance: ``"magnitude"`` (group L2 norm) or ``"taylor"`` (first-order Taylor, needs
            ``batches``).
        ignored_layers: module names never pruned (the output layer is always kept).
        global_pruning: rank channels across layers instead of the same share per layer.
        round_to: keep channel counts multiples of this (e.g. 8 for vectorized kernels): the
            nearest multiple of the ratio's count (see :func:`target_widths`); with
            ``global_pruning`` or ``target_macs``, Torch-Pruning's rounding down.
        batches: ``(inputs, targets)`` batches for Taylor importance.
        loss_fn: loss for Taylor importance.
        taylor_batches: how many batches the Taylor gradients average over.

    Returns:
        A :class:`PruningResult` with the history needed by :func:`save_pruned`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
        >>> res = structured_prune(net, torch.zeros(1, 1, 8, 8), ratio=0.5)
        >>> net[0].out_channels, net(torch.zeros(2, 1, 8, 8)).shape
        (4, torch.Size([2, 4]))
    """
    check_choice("importance", importance, _IMPORTANCE)
    _check_round_to(round_to)
    try:
        macs0, params0 = count_macs_params(model, example_inputs)
    except Exception as err:  # the forward itself fails: say so before any pruning
        raise MLCycleError(
            f"Torch-Pruning could not trace {type(model).__name__} with an input of shape "
            f"{tuple(example_inputs.shape)}: {type(err).__name__}: {err}"
        ) from err
    if target_macs is not None:
        if not target_macs > 0:
            raise MLCycleError(f"`target_macs` must be positive, but got target_macs={target_macs!r}.")
        target_macs = int(target_macs * macs0) if target_macs <= 1 else int(target_macs)
    history = prune_round(model, example_inputs, ratio=ratio, target_macs=target_macs,  # type: ignore[arg-type]
                          importance=importance, ignored_layers=ignored_layers,
                          global_pruning=global_pruning, round_to=round_to, batches=batches,
                          loss_fn=loss_fn, taylor_batches=taylor_batches)
    macs1, params1 = count_macs_params(model, example_inputs)
    return PruningResult(model, history, macs0, macs1, params0, params1)


# -- save / load -----------------------------------------------------------------------------------
def save_pruned(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    history: History,
    input_shape: Sequence[int],
    builder: Mapping[str, Any] | None = None,
) -> Path:
    """Save a structurally pruned model as a rebuild recipe, loadable with ``weights_only=True``.

    The recipe is the pruning history, the weights, the input shape and the model's config.

    Args:
        model: the pruned model.
        path: file to write.
        history: the pruning history (``PruningResult.history`` or ``StructuredPruning.history``).
        input_shape: one sample's shape (without batch), to trace the rebuilt model.
        builder: a Hydra config (``{"_target_": ..., ...}``) that builds the *unpruned* model, so
            :func:`load_pruned` can rebuild it without code; or None (then pass ``model=`` to load).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "history": _plain_history(history),
        "input_shape": [int(s) for s in input_shape],
        "builder": dict(builder) if builder is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, out)
    return out


def load_pruned(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`, in eval mode.

    Builds (or takes) the unpruned model, replays the pruning history, loads the weights strictly.

    Args:
        path: the saved file.
        model: a fresh, unpruned instance of the original architecture; None builds it from the
            saved Hydra config.
    """
    import torch_pruning as tp

    payload, model = load_recipe_file(path, _FORMAT, "save_pruned", model)
    model.eval()
    example = torch.zeros(1, *payload["input_shape"])
    if payload["history"]:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        graph.load_pruning_history([(n, o, list(i)) for n, o, i in payload["history"]])
    model.load_state_dict(payload["state_dict"], strict=True)
    return model


# -- the callback ----------------------------------------------------------------------------------
def _cosine_factor(total: int, offset: int) -> Callable[[int], float]:
    """``k -> 0.5 (1 + cos(pi (k + offset) / total))``: the LambdaLR factor of one cosine segment."""

    def factor(k: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(k + offset, total) / total))

    return factor


class StructuredPruning(Callback):
    """Remove channels during training, in rounds, and fine-tune in between.

    At the start of epochs ``start_epoch``, ``start_epoch + every_n_epochs``, ... (``rounds``
    rounds) the callback prunes a share of the channels so that after the last round the model
    has lost ``ratio`` of its channels (or costs ``target_macs``); the optimizer is rebuilt with
    ``configure_optimizers`` after each round, since the parameters changed shape. The pruning
    history is kept in checkpoints and replayed on resume before the weights load.

    With ``lr_schedule="cosine"`` (the default) each round starts a cosine learning-rate segment
    (per optimizer step, from the optimizer's learning rate down to 0 at the next round or at
    ``max_epochs``), replacing the module's own scheduler from the first round on: a warm restart
    after each round (SGDR, Loshchilov & Hutter 2017), which is how iterative pruning is usually
    fine-tuned (e.g. Renda et al. 2020, "learning-rate rewinding"). The defaults (3 rounds, 2
    epochs apart, so ``max_epochs >= 6``; 8 in ``mlcycle``) halve the channels of the digits CNN
    at most 0.75 points below the dense accuracy on each of 18 seeds (mean -0.3), where one
    round at a constant rate lost up to 2.2 points and the former defaults (2 rounds 1 epoch
    apart, 4 epochs, constant rate) up to 1.9 (``benchmarks/compression.md``). ``lr_schedule=None`` keeps the
    module's scheduler (rebuilt with the optimizer after each round).

    Knowledge distillation from the dense model during the fine-tune: wrap both in a
    :class:`~lightning_mlcycle.compression.DistillationModule` (the dense model as the teacher,
    a copy as the student) and prune ``module="student"``.

    Args:
        ratio: final share of channels removed per layer, in [0, 1).
        target_macs: final MACs instead (<= 1: a share of the initial MACs).
        importance: ``"magnitude"`` or ``"taylor"``.
        rounds: number of pruning rounds (iterative pruning with fine-tuning).
        start_epoch: epoch of the first round.
        every_n_epochs: epochs between rounds.
        module: attribute of the LightningModule to prune (e.g. ``"backbone"``); None prunes the
            LightningModule's own forward.
        ignored_layers: module names (relative to ``module``) never pruned.
        global_pruning: rank channels across layers.
        round_to: keep channel counts multiples of this (the nearest multiple, see
            :func:`target_widths`); 8 suits AVX2 CPUs and GPU tensor cores.
        taylor_batches: training batches averaged for Taylor importance.
        loss_fn: loss on ``(module(x), y)`` for Taylor importance; cross-entropy by default.
        lr_schedule: ``"cosine"`` (a cosine segment after every round, see above) or None (the
            module's own scheduler).

    Example:
        >>> cb = StructuredPruning(ratio=0.5, module="backbone")
        >>> [cb.ratio_after_round(k) for k in (1, 2, 3)], [cb.round_at_epoch(e) for e in range(6)]
        ([0.16666666666666666, 0.3333333333333333, 0.5], [1, None, 2, None, 3, None])
    """

    def __init__(
        self,
        ratio: float | None = 0.5,
        *,
        target_macs: float | None = None,
        importance: str = "magnitude",
        rounds: int = 3,
        start_epoch: int = 0,
        every_n_epochs: int = 2,
        module: str | None = None,
        ignored_layers: Sequence[str] | None = None,
        global_pruning: bool = False,
        round_to: int | None = None,
        taylor_batches: int = 4,
        loss_fn: LossFn | None = None,
        lr_schedule: str | None = "cosine",
    ) -> None:
        if target_macs is not None:
            ratio = None
            if not target_macs > 0:
                raise MLCycleError(f"`target_macs` must be positive, but got target_macs={target_macs!r}.")
        elif ratio is None:
            raise MLCycleError("Give `ratio` (a share in [0, 1)) or `target_macs`.")
        else:
            check_fraction("ratio", ratio)
        check_choice("importance", importance, _IMPORTANCE)
        check_choice("lr_schedule", lr_schedule, _LR_SCHEDULES)
        for name, value in (("rounds", rounds), ("every_n_epochs", every_n_epochs),
                            ("taylor_batches", taylor_batches)):
            if not isinstance(value, int) or value < 1:
                raise MLCycleError(f"`{name}` must be an integer >= 1, but got {name}={value!r}.")
        if not isinstance(start_epoch, int) or start_epoch < 0:
            raise MLCycleError(f"`start_epoch` must be an integer >= 0, but got start_epoch={start_epoch!r}.")
        _check_round_to(round_to)
        self.ratio = ratio
        self.target_macs = target_macs
        self.importance = importance
        self.rounds = rounds
        self.start_epoch = start_epoch
        self.every_n_epochs = every_n_epochs
        self.module = module
        self.ignored_layers = list(ignored_layers) if ignored_layers else None
        self.global_pruning = global_pruning
        self.round_to = round_to
        self.taylor_batches = taylor_batches
        self.loss_fn = loss_fn or F.cross_entropy
        self.lr_schedule = lr_schedule
        self.history: History = []
        self.widths: dict[str, int] = {}
        self.rounds_done = 0
        self.macs_before: int | None = None
        self.macs_after: int | None = None

    @property
    def state_key(self) -> str:
        """One checkpoint entry per distinct configuration."""
        return self._generate_state_key(ratio=self.ratio, target_macs=self.target_macs, module=self.module)

    def ratio_after_round(self, k: int) -> float:
        """Share of the original channels removed after round ``k`` (linear, as Torch-Pruning)."""
        assert self.ratio is not None
        return self.ratio * min(k, self.rounds) / self.rounds

    def round_at_epoch(self, epoch: int) -> int | None:
        """The round (1-based) that runs at the start of ``epoch``, or None."""
        if epoch < self.start_epoch or (epoch - self.start_epoch) % self.every_n_epochs:
            return None
        k = (epoch - self.start_epoch) // self.every_n_epochs + 1
        return k if self.rounds_done < k <= self.rounds else None

    def round_epoch(self, k: int) -> int:
        """The epoch at whose start round ``k`` (1-based) prunes."""
        return self.start_epoch + (k - 1) * self.every_n_epochs

    def segment_epochs(self, k: int, max_epochs: int | None) -> tuple[int, int | None]:
        """First and end (exclusive) epoch of the fine-tuning segment after round ``k``.

        The segment ends at the next round, or at ``max_epochs`` after the last round (None when
        the fit has no epoch limit).
        """
        first = self.round_epoch(k)
        if k < self.rounds:
            return first, first + self.every_n_epochs
        return first, max_epochs if max_epochs is not None and max_epochs > 0 else None

    def _install_schedule(self, trainer: pl.Trainer, k: int) -> None:
        """Replace the schedulers by one cosine segment for round ``k`` (resumes mid-segment)."""
        if self.lr_schedule is None:
            return
        from lightning.pytorch.utilities.types import LRSchedulerConfig

        first, end = self.segment_epochs(k, trainer.max_epochs)
        batches = trainer.num_training_batches
        if end is None or not math.isfinite(batches):
            log.warning("StructuredPruning: no cosine learning-rate schedule (the fit has no epoch "
                        "limit or the training data no length); the module's scheduler is kept.")
            return
        per_epoch = max(math.ceil(batches / trainer.accumulate_grad_batches), 1)
        total = max((end - first) * per_epoch, 1)
        offset = min(max(trainer.current_epoch - first, 0) * per_epoch, total)
        configs = []
        for opt in trainer.optimizers:
            for group in opt.param_groups:  # the configured rate (a restored optimizer keeps it here)
                group["initial_lr"] = group.get("initial_lr", group["lr"])
            sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine_factor(total, offset))
            configs.append(LRSchedulerConfig(sched, interval="step", name="prune/lr"))
        trainer.strategy.lr_scheduler_configs = configs

    def target(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module that is pruned."""
        return submodule(pl_module, self.module)

    def _example(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        example = getattr(pl_module, "example_input_array", None)
        if not isinstance(example, torch.Tensor):
            batch = next(iter(trainer.train_dataloader))  # type: ignore[arg-type]
            example = batch[0] if isinstance(batch, (list, tuple)) else batch
        return example[:2].to(pl_module.device)

    @property
    def _history_key(self) -> str:
        return f"_structured_pruning.{self.module or ''}"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning restores the model's weights before any callback state, and a resumed
        # checkpoint holds pruned shapes. The history travels inside the checkpoint's state_dict
        # (see on_save_checkpoint); this pre-hook replays it before the weights load.
        if getattr(self, "_hook", None) is None:
            self._hook = pl_module.register_load_state_dict_pre_hook(self._replay_before_load)

    def _replay_before_load(self, module: nn.Module, state_dict: dict[str, Any], prefix: str,
                            *args: Any) -> None:
        entry = state_dict.pop(prefix + self._history_key, None)
        if not entry or self.rounds_done:
            return
        import torch_pruning as tp

        model = self.target(module)  # type: ignore[arg-type]
        was = model.training
        model.eval()
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *entry["input_shape"]))
        graph.load_pruning_history([(n, o, list(i)) for n, o, i in entry["history"]])
        model.train(was)
        self.load_state_dict(entry)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if self.history:
            checkpoint.setdefault("state_dict", {})[self._history_key] = self.state_dict()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
            self._hook = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = self.round_epoch(self.rounds)
        if trainer.max_epochs is not None and 0 < trainer.max_epochs <= last and self.rounds_done < self.rounds:
            log.warning("StructuredPruning: the last of %d rounds is at epoch %d but max_epochs=%d: the "
                        "model will not reach the target; raise max_epochs or lower rounds/every_n_epochs.",
                        self.rounds, last, trainer.max_epochs)
        if self.rounds_done and self.round_at_epoch(trainer.current_epoch) is None:
            self._install_schedule(trainer, self.rounds_done)  # resumed inside a segment

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        k = self.round_at_epoch(trainer.current_epoch)
        if k is None:
            return
        model = self.target(pl_module)
        example = self._example(trainer, pl_module)
        self._input_shape = list(example.shape[1:])
        macs, _ = count_macs_params(model, example)
        if self.macs_before is None:
            self.macs_before = macs
        if self.ratio is not None:
            done, goal = self.ratio_after_round(k - 1), self.ratio_after_round(k)
            if not self.widths:  # the unpruned widths: every round aims at a share of them
                self.widths = layer_widths(model)
            kwargs: dict[str, Any] = {
                "ratio": 1.0 - (1.0 - goal) / (1.0 - done),
                "keep_channels": target_widths(self.widths, goal, self.round_to),
            }
        else:
            final = self.target_macs * self.macs_before if self.target_macs <= 1 else self.target_macs  # type: ignore[operator]
            kwargs = {"target_macs": int(self.macs_before - (self.macs_before - final) * k / self.rounds)}
        batches = trainer.train_dataloader if self.importance == "taylor" else None
        history = prune_round(
            model, example, importance=self.importance, ignored_layers=self.ignored_layers,
            global_pruning=self.global_pruning, round_to=self.round_to, batches=batches,  # type: ignore[arg-type]
            loss_fn=self.loss_fn, taylor_batches=self.taylor_batches, **kwargs,
        )
        # decisions come from rank 0, so every rank removes the same channels
        history = trainer.strategy.broadcast(history, src=0)
        self.history.extend(history)
        self.rounds_done = k
        self.macs_after, params = count_macs_params(model, example)
        # the parameters were replaced by smaller ones: the optimizer must hold the new ones
        trainer.strategy.setup_optimizers(trainer)
        self._install_schedule(trainer, k)
        log.info("StructuredPruning round %d/%d: %d -> %d MACs, %d parameters",
                 k, self.rounds, macs, self.macs_after, params)
        pl_module.log_dict({"prune/macs": float(self.macs_after), "prune/params": float(params)},
                           on_step=False, on_epoch=True)

    def save(self, pl_module: pl.LightningModule, path: str | os.PathLike[str],
             builder: Mapping[str, Any] | None = None) -> Path:
        """Save the pruned module as a rebuild recipe (see :func:`save_pruned`)."""
        shape = getattr(self, "_input_shape", None)
        if shape is None:
            raise MLCycleError("StructuredPruning.save: nothing was pruned yet.")
        return save_pruned(self.target(pl_module), path, history=self.history, input_shape=shape,
                           builder=builder)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "rounds_done": self.rounds_done,
                "input_shape": getattr(self, "_input_shape", None), "macs_before": self.macs_before,
                "macs_after": self.macs_after, "widths": dict(self.widths)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = _plain_history(state_dict.get("history", []))
        self.rounds_done = int(state_dict.get("rounds_done", 0))
        if state_dict.get("input_shape"):
            self._input_shape = list(state_dict["input_shape"])
        self.macs_before = state_dict.get("macs_before")
        self.macs_after = state_dict.get("macs_after")
        self.widths = {str(k): int(v) for k, v in (state_dict.get("widths") or {}).items()}
