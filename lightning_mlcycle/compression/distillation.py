"""Knowledge distillation inside Lightning: ``DistillationModule(teacher, student)``.

Losses:

- Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): ``alpha * CE(student, y) +
  (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))``. The ``T^2`` keeps the soft
  term's gradients on the scale of the hard term's when ``T`` changes (section 2 of the paper).
- Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015): a mean-squared error between a
  student layer's output, passed through a learned adapter (a 1x1 convolution or a linear layer)
  when its shape differs, and a teacher layer's output. Layers are named as in
  ``model.named_modules()`` and read through forward hooks, so any architecture works.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.compression._teacher import resolve_teacher
from lightning_mlcycle.compression._teacher_cache import CACHE_KEYS, TeacherCache
from lightning_mlcycle.models.classification import classification_metrics

log = logging.getLogger(__name__)

#: a constant or a function of the epoch (0-based)
Schedule = float | Callable[[int], float]


# -- pure functions ---------------------------------------------------------------------------------
class DistillationLoss(NamedTuple):
    """The parts of the Hinton loss: ``total = alpha * ce + (1 - alpha) * kd``."""

    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise MLCycleError(f"`{name}` must be in [0, 1], but got {name}={alpha!r}.")


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise MLCycleError(f"`{name}` must be a positive number, but got {name}={temperature!r}.")


def _check_weight(weight: float, name: str) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise MLCycleError(f"`{name}` cannot be negative, but got {name}={weight!r}.")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
) -> DistillationLoss:
    """Hinton's knowledge-distillation loss ``alpha * CE + (1 - alpha) * T^2 * KL``.

    The KL term is ``KL(p_teacher || p_student)`` of the softened distributions, averaged over the
    batch, computed in float32 (mixed precision logits are upcast).

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits (no gradient flows into them).
        target: ``(N,)`` class indices.
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        temperature: softening temperature ``T > 0``.
        label_smoothing: of the cross-entropy term.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, 0.0]])
        >>> t = torch.tensor([[2.0, 0.0, 0.0]])
        >>> loss = distillation_loss(s, t, torch.tensor([0]), alpha=0.5, temperature=2.0)
        >>> round(float(loss.kd), 6), round(float(loss.total), 4)
        (0.0, 0.1198)
    """
    _check_alpha(alpha)
    _check_temperature(temperature)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise MLCycleError(
            f"The teacher and the student must have the same number of outputs, but the teacher "
            f"gives {teacher_logits.shape[-1]} and the student {student_logits.shape[-1]}."
        )
    s = student_logits.float()
    t = teacher_logits.detach().float()
    ce = F.cross_entropy(s, target, label_smoothing=label_smoothing)
    kd = F.kl_div(
        F.log_softmax(s / temperature, dim=-1),
        F.log_softmax(t / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    return DistillationLoss(alpha * ce + (1.0 - alpha) * kd, ce, kd)


class LinearSchedule:
    """A value that moves linearly from ``start`` to ``end`` over ``epochs`` epochs, then stays.

    Pass it as ``alpha``, ``temperature`` or ``hint_weight`` of :class:`DistillationModule` (or any
    callable ``epoch -> value``), e.g. to lean on the teacher early and on the labels later.

    Args:
        start: the value at epoch 0.
        end: the value from epoch ``epochs`` on.
        epochs: how many epochs the change takes (>= 1).

    Example:
        >>> sched = LinearSchedule(0.2, 0.8, epochs=3)
        >>> [round(sched(e), 2) for e in range(5)]
        [0.2, 0.4, 0.6, 0.8, 0.8]
    """

    def __init__(self, start: float, end: float, epochs: int) -> None:
        for name, v in (("start", start), ("end", end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MLCycleError(f"`{name}` must be a finite number, but got {name}={v!r}.")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise MLCycleError(f"`epochs` must be a positive integer, but got epochs={epochs!r}.")
        self.start, self.end, self.epochs = float(start), float(end), epochs

    def __call__(self, epoch: int) -> float:
        """The value at ``epoch`` (0-based)."""
        frac = min(max(epoch, 0), self.epochs) / self.epochs
        return self.start + (self.end - self.start) * frac

    def __repr__(self) -> str:
        return f"LinearSchedule(start={self.start}, end={self.end}, epochs={self.epochs})"


def _value(schedule: Schedule, epoch: int) -> float:
    return float(schedule(epoch)) if callable(schedule) else float(schedule)


# -- hint layers ----------------------------------------------------------------------------------
def _module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _find_layer(model: nn.Module, name: str, which: str) -> nn.Module:
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise MLCycleError(
            f"`hints`: the {which} has no layer named {name!r}; valid names are "
            f"{_module_names(model)}."
        )
    return modules[name]


def _make_adapter(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """A learned map from a student feature's shape to a teacher feature's (FitNets' regressor).

    Same shape: identity. Feature maps ``(N, C, H, W)``: a 1x1 convolution for the channels, and an
    adaptive average pool when the spatial size differs. Anything else: flatten and a linear layer
    (then reshape to the teacher's shape).
    """
    s, t = tuple(student_shape[1:]), tuple(teacher_shape[1:])
    if s == t:
        return nn.Identity()
    if len(s) == 3 and len(t) == 3:
        layers: list[nn.Module] = [nn.Conv2d(s[0], t[0], kernel_size=1, bias=False)]
        if s[1:] != t[1:]:
            layers.append(nn.AdaptiveAvgPool2d(t[1:]))
        return nn.Sequential(*layers)
    if len(s) == 1 and len(t) == 1:
        return nn.Linear(s[0], t[0])
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(s), math.prod(t)), nn.Unflatten(1, t))


class _Taps:
    """Forward-hook targets: each tapped layer's output of the last forward pass."""

    def __init__(self) -> None:
        self.outputs: dict[str, torch.Tensor] = {}

    def hook(self, name: str) -> Callable[..., None]:
        outputs = self.outputs

        def _hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            outputs[name] = out

        return _hook


@contextmanager
def _tapped(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Hooks on ``names`` for one forward pass, removed afterwards (nothing lingers for export)."""
    taps = _Taps()
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(taps.hook(n)) for n in names]
    try:
        yield taps.outputs
    finally:
        for h in handles:
            h.remove()


# -- the module -----------------------------------------------------------------------------------
class DistillationModule(pl.LightningModule):
    """Train ``student`` to imitate a frozen ``teacher`` (soft targets and optional feature hints).

    The teacher is frozen (``requires_grad=False``) and kept in eval mode even when Lightning calls
    ``.train()``; only the student and the hint adapters are optimized. Validation and test measure
    the student alone, with the metrics of :class:`~lightning_mlcycle.models.ClassificationModule`
    under the same names (``val/acc``, ``test/f1``, ...), so checkpoints, early stopping and sweeps
    configured for it work unchanged. Training also logs ``train/loss_ce``, ``train/loss_kd``,
    ``train/loss_hint`` and the current ``distill/alpha``, ``distill/temperature``.

    Teacher-output cache (``cache_teacher=True``): on a fixed training set the teacher's outputs
    (logits and hint features) are computed in the first epoch and reused afterwards, keyed by each
    sample's content (``cache_key="content"``) or by the index the batch carries third
    (``cache_key="index"``, batches ``(x, y, index)``). It is invalidated (emptied and turned off)
    when the data are augmented: declared with ``augmented=True``, found on the datamodule (an
    ``augmentation`` attribute that is not None, as on our DataModules), or detected at run time (in
    index mode, a cached index whose content changed; in either mode, an epoch after the first with
    fewer than half of the samples in the cache, content keys only). The cache lives in memory, one
    per process, and is rebuilt after a resume; under DDP a shuffling ``DistributedSampler`` gives
    each rank other samples every epoch, so use ``cache_key="index"`` there.

    Args:
        teacher: an ``nn.Module`` (a ``ClassificationModule`` gives its backbone), a path to one of
            our checkpoints (``.ckpt``) or an ONNX file (``.onnx``, run with ONNX Runtime). The
            module is frozen in place.
        student: the ``nn.Module`` to train (logits out): a zoo model, a pruned or factorized
            model, or one prepared for quantization-aware training.
        num_classes: number of classes; inferred from a probe pass when ``input_shape`` is known.
        alpha: weight of the hard-label cross-entropy in [0, 1] (``1 - alpha`` goes to the soft
            term); a float or a callable ``epoch -> value`` such as :class:`LinearSchedule`.
        temperature: softening temperature ``T > 0``; a float or a schedule.
        hints: student layer name -> teacher layer name (as in ``named_modules()``) whose outputs
            are matched by mean-squared error; needs ``input_shape`` to size the adapters.
        hint_weight: weight of the summed hint losses (>= 0); a float or a schedule.
        input_shape: one sample's shape, for the probe pass that checks the outputs and sizes the
            adapters; taken from the teacher checkpoint when it has one.
        cache_teacher: cache the teacher's outputs for a fixed training set (see above).
        cache_key: ``"content"`` or ``"index"``.
        augmented: declare the training data augmented (turns the cache off); ``None`` asks the
            datamodule.
        optimizer: a factory ``optimizer(params)``; default AdamW(lr=1e-3).
        scheduler: a factory ``scheduler(optimizer)``, or None.
        label_smoothing: of the cross-entropy term.
        class_names: names of the classes (kept in the hyper-parameters).

    Example:
        >>> teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> student = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> module = DistillationModule(teacher, student, input_shape=(4,), alpha=0.3,
        ...                             hints={"2": "2"})
        >>> module.num_classes, type(module.adapters["hint_0"]).__name__
        (3, 'Linear')
        >>> module(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        teacher: nn.Module | str | os.PathLike[str],
        student: nn.Module,
        *,
        num_classes: int | None = None,
        alpha: Schedule = 0.5,
        temperature: Schedule = 4.0,
        hints: Mapping[str, str] | Sequence[Sequence[str]] | None = None,
        hint_weight: Schedule = 1.0,
        input_shape: Sequence[int] | None = None,
        cache_teacher: bool = False,
        cache_key: str = "content",
        augmented: bool | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise TypeError(f"Expected argument `student` to be an nn.Module, but got {type(student).__name__}.")
        teacher_module, meta = resolve_teacher(teacher)
        if teacher_module is student:
            raise MLCycleError("`teacher` and `student` are the same module; pass a separate student.")
        for name, sched, check in (
            ("alpha", alpha, _check_alpha),
            ("temperature", temperature, _check_temperature),
            ("hint_weight", hint_weight, lambda v, n: _check_weight(v, n)),
        ):
            value = sched(0) if callable(sched) else sched
            check(value, name)
        if cache_key not in CACHE_KEYS:
            raise MLCycleError(f"Expected argument `cache_key` to be one of {list(CACHE_KEYS)}, but got {cache_key!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise MLCycleError(f"`label_smoothing` must be in [0, 1), but got {label_smoothing!r}.")
        if input_shape is None:
            input_shape = meta.get("input_shape")
        input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None

        pairs = list(hints.items()) if isinstance(hints, Mapping) else [tuple(p) for p in (hints or [])]
        for pair in pairs:
            if len(pair) != 2:
                raise MLCycleError(f"`hints` must map student layer names to teacher layer names, but got {pair!r}.")
        if pairs and meta.get("onnx"):
            raise MLCycleError(
                "`hints` need the teacher's intermediate layers, which an ONNX teacher does not "
                "expose; pass the teacher as an nn.Module or a checkpoint."
            )
        for s_name, t_name in pairs:
            _find_layer(student, s_name, "student")
            _find_layer(teacher_module, t_name, "teacher")
        if pairs and input_shape is None:
            raise MLCycleError("`input_shape` is required with `hints`, to size the adapters (e.g. (1, 8, 8)).")

        teacher_module.requires_grad_(False)
        teacher_module.eval()
        self.teacher = teacher_module
        self.student = student
        self.hint_pairs: list[tuple[str, str]] = [(str(s), str(t)) for s, t in pairs]
        self.alpha_schedule, self.temperature_schedule, self.hint_weight_schedule = alpha, temperature, hint_weight
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.label_smoothing = label_smoothing
        self.input_shape = input_shape
        self.augmented = augmented
        self.cache_teacher = bool(cache_teacher)
        self.cache_key = cache_key
        self.cache: TeacherCache | None = TeacherCache(cache_key) if cache_teacher else None
        self.adapters = nn.ModuleDict()

        probed = self._probe(input_shape) if input_shape is not None else None
        if probed is not None:
            n_teacher, n_student, feats = probed
            if n_teacher != n_student:
                raise MLCycleError(
                    f"The teacher and the student must have the same number of outputs, but the "
                    f"teacher gives {n_teacher} and the student {n_student}."
                )
            if num_classes is not None and num_classes != n_teacher:
                raise MLCycleError(f"`num_classes`={num_classes} but the teacher gives {n_teacher} outputs.")
            num_classes = n_teacher
            for i, (s_shape, t_shape) in enumerate(feats):
                self.adapters[f"hint_{i}"] = _make_adapter(s_shape, t_shape)
        num_classes = num_classes if num_classes is not None else meta.get("num_classes")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise MLCycleError(
                f"`num_classes` must be an integer >= 2 (or give `input_shape` to infer it), "
                f"but got {num_classes!r}."
            )
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.save_hyperparameters(
            {
                "num_classes": num_classes,
                "alpha": alpha if not callable(alpha) else repr(alpha),
                "temperature": temperature if not callable(temperature) else repr(temperature),
                "hints": [list(p) for p in self.hint_pairs],
                "hint_weight": hint_weight if not callable(hint_weight) else repr(hint_weight),
                "input_shape": list(input_shape) if input_shape else None,
                "cache_teacher": self.cache_teacher,
                "cache_key": cache_key,
                "label_smoothing": label_smoothing,
                "class_names": self.class_names,
            }
        )
        metrics = classification_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.alpha, self.temperature, self.hint_weight = self._current(0)
        self._checked_outputs = probed is not None
        self.final_test_metrics: dict[str, float] = {}

    # -- set-up helpers --------------------------------------------------------------------------
    def _probe(self, input_shape: tuple[int, ...]) -> tuple[int, int, list[tuple[torch.Size, torch.Size]]]:
        """One forward pass of both nets on zeros: output sizes and the hint layers' shapes."""
        device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
        x = torch.zeros(2, *input_shape, device=device)
        s_names = [s for s, _ in self.hint_pairs]
        t_names = [t for _, t in self.hint_pairs]
        was_training = self.student.training
        self.student.eval()  # no BatchNorm statistics are updated by the probe
        try:
            with torch.no_grad(), _tapped(self.student, s_names) as s_out, _tapped(self.teacher, t_names) as t_out:
                s_logits = self.student(x)
                t_logits = self.teacher(x.to(_device(self.teacher, x.device)))
        except RuntimeError as err:
            raise MLCycleError(f"A forward pass with `input_shape`={input_shape} failed: {err}") from err
        finally:
            self.student.train(was_training)
        feats = [(s_out[s].shape, t_out[t].shape) for s, t in self.hint_pairs]
        return int(t_logits.shape[-1]), int(s_logits.shape[-1]), feats

    def _current(self, epoch: int) -> tuple[float, float, float]:
        alpha = _value(self.alpha_schedule, epoch)
        temperature = _value(self.temperature_schedule, epoch)
        hint_weight = _value(self.hint_weight_schedule, epoch)
        _check_alpha(alpha, f"alpha (epoch {epoch})")
        _check_temperature(temperature, f"temperature (epoch {epoch})")
        _check_weight(hint_weight, f"hint_weight (epoch {epoch})")
        return alpha, temperature, hint_weight

    # -- nn.Module -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DistillationModule:
        """Set the student's (and adapters') mode; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the student."""
        return self.student(x)

    # -- teacher outputs -------------------------------------------------------------------------
    def teacher_outputs(self, x: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The teacher's logits and hint features for a batch, from the cache when possible."""
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        keys = cache.keys(x, index) if cache is not None else None
        if cache is not None:
            hit = cache.lookup(keys, x)  # type: ignore[arg-type]
            if hit is not None:
                return tuple(h.to(x.device) for h in hit)
        t_names = [t for _, t in self.hint_pairs]
        with torch.no_grad(), _tapped(self.teacher, t_names) as feats:
            logits = self.teacher(x)
        outputs = (logits.detach(), *(feats[t].detach() for t in t_names))
        if cache is not None and cache.enabled:
            cache.insert(keys, x, outputs)  # type: ignore[arg-type]
        return outputs

    # -- Lightning hooks -------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """Turn the cache off when the training data are augmented."""
        if self.cache is None or not self.cache.enabled:
            return
        augmented = self.augmented
        if augmented is None:
            dm = getattr(self.trainer, "datamodule", None)
            augmented = getattr(dm, "augmentation", None) is not None
        if augmented:
            self.cache.disable("the training data are augmented")

    def on_train_epoch_start(self) -> None:
        """Move the scheduled weights and temperature to this epoch's values."""
        self.alpha, self.temperature, self.hint_weight = self._current(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        """Judge the cache's hit rate (disables it when inputs change between epochs)."""
        if self.cache is not None:
            rate = self.cache.end_epoch(self.current_epoch)
            if rate is not None:
                self.log("distill/cache_hit_rate", rate, on_step=False, on_epoch=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Hinton loss on the logits plus the weighted hint losses."""
        x, y = batch[0], batch[1]
        index = batch[2] if isinstance(batch, (list, tuple)) and len(batch) > 2 else None
        t_out = self.teacher_outputs(x, index)
        s_names = [s for s, _ in self.hint_pairs]
        with _tapped(self.student, s_names) as s_feats:
            s_logits = self.student(x)
        if not self._checked_outputs:
            if s_logits.shape[-1] != t_out[0].shape[-1] or s_logits.shape[-1] != self.num_classes:
                raise MLCycleError(
                    f"The teacher and the student must have the same number of outputs "
                    f"(num_classes={self.num_classes}), but the teacher gives "
                    f"{t_out[0].shape[-1]} and the student {s_logits.shape[-1]}."
                )
            self._checked_outputs = True
        parts = distillation_loss(
            s_logits, t_out[0], y, alpha=self.alpha, temperature=self.temperature,
            label_smoothing=self.label_smoothing,
        )
        hint = s_logits.new_zeros(())
        for i, (s_name, _) in enumerate(self.hint_pairs):
            hint = hint + F.mse_loss(self.adapters[f"hint_{i}"](s_feats[s_name]).float(), t_out[1 + i].float())
        loss = parts.total + self.hint_weight * hint
        n = y.shape[0]
        self.train_metrics.update(s_logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log_dict(
            {"train/loss_ce": parts.ce, "train/loss_kd": parts.kd, "train/loss_hint": hint},
            on_step=False, on_epoch=True, batch_size=n,
        )
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=n)
        self.log_dict(
            {"distill/alpha": self.alpha, "distill/temperature": self.temperature,
             "distill/hint_weight": self.hint_weight},
            on_step=False, on_epoch=True, batch_size=n,
        )
        return loss

    def _eval_step(self, batch: Any, metrics: torchmetrics.MetricCollection, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        metrics.update(logits.detach(), y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=y.shape[0], sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=y.shape[0])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The student's loss and metrics on a validation batch."""
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """The student's loss and metrics on a test batch."""
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        """Keep the final test metrics (as ``ClassificationModule`` does)."""
        self.final_test_metrics = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")
        }

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities of the student."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.student(x), dim=-1)

    def configure_optimizers(self) -> Any:
        """Optimizer over the student and the adapters (never the teacher)."""
        params = [p for p in self.parameters() if p.requires_grad]
        factory = self.optimizer_factory or (lambda p: torch.optim.AdamW(p, lr=1e-3))
        optimizer = factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch",
                             "monitor": "val/loss"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep whether the cache was turned off (so a resumed run does not re-enable it)."""
        checkpoint["distillation"] = {
            "cache_disabled_reason": self.cache.disabled_reason if self.cache is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the cache state; the cached outputs themselves are rebuilt in the next epoch."""
        state = checkpoint.get("distillation", {})
        if self.cache is not None:
            self.cache.clear()
            reason = state.get("cache_disabled_reason")
            if reason:
                self.cache.disable(reason)


def _device(module: nn.Module, default: torch.device) -> torch.device:
    return next((p.device for p in module.parameters()), default)
