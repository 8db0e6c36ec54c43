"""``FitDiagnosis``: tells under-fitting, over-fitting and training faults apart, during ``fit``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_mlcycle._utils import tensorboard_writer, trainer_log_dir
from lightning_mlcycle.diagnosis.finding import Finding, FitState, Severity, Symptom
from lightning_mlcycle.diagnosis.remedies import derived_context, remedies_for
from lightning_mlcycle.diagnosis.report import DiagnosisReport
from lightning_mlcycle.diagnosis.rules import (
    RuleHit,
    TrainingSnapshot,
    check_diverging_loss,
    check_exploding_gradients,
    diagnose,
)
from lightning_mlcycle.diagnosis.thresholds import DiagnosisThresholds

log = logging.getLogger(__name__)

OnFinding = Callable[[Finding, "pl.Trainer"], Any]

_POLICIES = ("warn", "stop")
_RELU_TYPES = (nn.ReLU, nn.ReLU6)
_SATURATING = {nn.Sigmoid: 1.0, nn.Tanh: 0.5}  # tanh(x) = 2 sigmoid(2x) - 1: half the cut-off
_ROW_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DEFAULT_VAL_KEYS = ("val/loss", "val_loss", "valid_loss", "validation_loss", "val/loss_epoch")
_CORE_KEYS = ("train_loss", "train_present", "val_loss", "monitor", "nonfinite_loss",
              "nonfinite_grads")
_STATE_CODE = {FitState.UNKNOWN: -1, FitState.UNDERFITTING: 0, FitState.GOOD_FIT: 1,
               FitState.OVERFITTING: 2}


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def _first_float_tensor(batch: Any) -> torch.Tensor | None:
    """The input of a batch: the first floating tensor in a tensor / tuple / list / dict."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.is_floating_point() else None
    if isinstance(batch, Mapping):
        items: Sequence[Any] = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return None
    for item in items:
        if isinstance(item, torch.Tensor) and item.is_floating_point() and item.ndim >= 1:
            return item
    return None


def _loss_of(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


class FitDiagnosis(Callback):
    """Diagnose a training run as it goes: fit state, training faults, and what to do.

    Works with any LightningModule. It reads the training loss from what ``training_step``
    returns, the validation loss and monitored metric from ``trainer.callback_metrics``, gradient
    norms and weight updates per layer at sampled steps, and activations through forward hooks
    that exist only during sampled steps (every ``every_n_steps`` steps and once after each
    validation), so the overhead stays small. At each validation it runs the rules of
    :mod:`lightning_mlcycle.diagnosis.rules` and updates :attr:`report`.

    Outputs: scalars under ``diagnosis/`` in every logger (generalization gap, relative bias and
    gap, per-layer gradient norms, update/weight ratios, dead-unit and saturation fractions);
    at the end of fit, the markdown report in TensorBoard's Text tab, a learning-curve figure with
    the findings marked, and ``diagnosis.json``, ``diagnosis.md`` and ``learning_curve.png`` in
    the logger's directory (rank zero only).

    Args:
        val_loss_key: key (or keys, first found wins) of the validation loss in
            ``trainer.callback_metrics``.
        train_loss_key: read the training loss from ``callback_metrics`` under this key instead
            of from ``training_step``'s output (for manual optimization that returns nothing).
        monitor: the metric to report (e.g. ``"val/acc"``); None takes the one of the first
            ``EarlyStopping`` or ``ModelCheckpoint`` on the trainer.
        mode: ``"min"`` or ``"max"`` for ``monitor``; None infers it (``min`` for names with
            "loss" or "error", else ``max``).
        num_classes: number of classes, for the chance-level loss ``ln(num_classes)``; None reads
            ``pl_module.num_classes`` / ``hparams.num_classes`` or infers it from the logits.
        chance_loss: the loss of an uninformed model, when it is not ``ln(num_classes)``
            (e.g. binary cross-entropy on one logit: ``ln 2``; MSE: the target variance).
        every_n_steps: sample gradients, updates, activations and inputs every this many steps.
        on_finding: ``"warn"`` logs each new finding once; ``"stop"`` also stops training on
            critical ones (diverging loss, exploding gradients); a callable
            ``f(finding, trainer)`` is called for each new finding instead.
        thresholds: a :class:`DiagnosisThresholds` or a mapping of overrides.
        track_activations: sample ReLU / sigmoid / tanh modules with forward hooks.
        track_updates: measure per-layer update/weight ratios (copies the weights once per
            sampled step).
        check_leakage: compare validation inputs with first-epoch training inputs (exact copies,
            found by a random projection fingerprint; augmented training samples are not matched).
        leakage_max_samples: most training samples fingerprinted.
        log_figure: log the learning-curve figure at the end of fit.
        write_files: write ``diagnosis.json|md`` and ``learning_curve.png`` at the end of fit.

    Example:
        >>> import lightning.pytorch as pl
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_mlcycle import ClassificationModule
        >>> from lightning_mlcycle.models import MLP
        >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        >>> dl = DataLoader(TensorDataset(x, y), batch_size=16)
        >>> diag = FitDiagnosis(write_files=False)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[diag], logger=False,
        ...     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(ClassificationModule(MLP(3, (4,)), num_classes=3), dl, dl)
        >>> diag.report.fit_state.value  # two checks: too early to tell
        'unknown'
        >>> round(diag.report.meta["chance_loss"], 3)
        1.099
    """

    def __init__(
        self,
        *,
        val_loss_key: str | Sequence[str] = _DEFAULT_VAL_KEYS,
        train_loss_key: str | None = None,
        monitor: str | None = None,
        mode: str | None = None,
        num_classes: int | None = None,
        chance_loss: float | None = None,
        every_n_steps: int = 50,
        on_finding: str | OnFinding = "warn",
        thresholds: DiagnosisThresholds | Mapping[str, Any] | None = None,
        track_activations: bool = True,
        track_updates: bool = True,
        check_leakage: bool = True,
        leakage_max_samples: int = 200_000,
        log_figure: bool = True,
        write_files: bool = True,
    ) -> None:
        super().__init__()
        keys = [val_loss_key] if isinstance(val_loss_key, str) else list(val_loss_key)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(
                f"Expected argument `val_loss_key` to be a metric name or a list of names, "
                f"but got {val_loss_key!r}."
            )
        if mode is not None and mode not in ("min", "max"):
            raise ValueError(f"Expected argument `mode` to be one of ['min', 'max', None], but got {mode!r}.")
        if num_classes is not None and (
            not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2
        ):
            raise ValueError(f"`num_classes` must be an integer >= 2 or None, but got {num_classes!r}.")
        if chance_loss is not None and not (isinstance(chance_loss, (int, float)) and chance_loss > 0):
            raise ValueError(f"`chance_loss` must be positive or None, but got {chance_loss!r}.")
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be a positive integer, but got {every_n_steps!r}.")
        if not callable(on_finding) and on_finding not in _POLICIES:
            raise ValueError(
                f"Expected argument `on_finding` to be one of {list(_POLICIES)} or a callable "
                f"f(finding, trainer), but got {on_finding!r}."
            )
        if not isinstance(leakage_max_samples, int) or leakage_max_samples < 1:
            raise ValueError(
                f"`leakage_max_samples` must be a positive integer, but got {leakage_max_samples!r}."
            )
        self.val_loss_keys = keys
        self.train_loss_key = train_loss_key
        self.monitor = monitor
        self.mode = mode
        self.num_classes = num_classes
        self.chance_loss = float(chance_loss) if chance_loss is not None else None
        self.every_n_steps = every_n_steps
        self.on_finding = on_finding
        self.thresholds = DiagnosisThresholds.from_any(thresholds)
        self.track_activations = track_activations
        self.track_updates = track_updates
        self.check_leakage = check_leakage
        self.leakage_max_samples = leakage_max_samples
        self.log_figure = log_figure
        self.write_files = write_files

        self.report = DiagnosisReport()
        # persistent state (see state_dict)
        self._train_loss: list[float] = []
        self._val_loss: list[float | None] = []
        self._monitor: list[float | None] = []
        self._grad_norm_history: list[float] = []
        self._initial_loss: float | None = None
        self._notified: set[str] = set()
        self._leak: dict[str, int] = {"checked": 0, "repeated": 0, "done": 0}
        # per-check scratch (not saved: it is rebuilt within one check interval)
        self._layers: list[tuple[str, nn.Module, nn.Parameter]] = []
        self._act_modules: list[tuple[str, nn.Module]] = []
        self._reset_interval()
        self._sampling = False
        self._force_sample = True
        self._hooks: list[Any] = []
        self._act_stats: dict[str, list[torch.Tensor]] = {}
        self._weights_before: list[torch.Tensor] | None = None
        self._train_fp: list[torch.Tensor] = []
        self._train_fp_count = 0
        self._val_fp: list[torch.Tensor] = []
        self._val_fp_open = False
        self._epoch0_done = False
        self._projection: torch.Tensor | None = None
        self.files: dict[str, str] = {}

    # -- set-up --------------------------------------------------------------------------------
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(val_loss_key=self.val_loss_keys[0], monitor=self.monitor)

    def _reset_interval(self) -> None:
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._samples: list[dict[str, Any]] = []
        self._nonfinite_loss = False
        self._nonfinite_grads = False
        self._val_seen = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._layers = []
        for name, module in pl_module.named_modules():
            w = getattr(module, "weight", None)
            if isinstance(w, nn.Parameter) and w.ndim >= 2 and w.requires_grad:
                self._layers.append((name or "module", module, w))
        self._act_modules = [
            (name, m) for name, m in pl_module.named_modules()
            if isinstance(m, _RELU_TYPES) or type(m) in _SATURATING
        ]
        if self.monitor is None:
            from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

            for cb in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(cb, (EarlyStopping, ModelCheckpoint)) and getattr(cb, "monitor", None):
                    self.monitor, self.mode = cb.monitor, self.mode or getattr(cb, "mode", None)
                    break
        if self.monitor and self.mode is None:
            self.mode = "min" if any(w in self.monitor for w in ("loss", "error", "err")) else "max"
        if self.num_classes is None:
            k = getattr(pl_module, "num_classes", None)
            if k is None and hasattr(pl_module, "hparams"):
                k = pl_module.hparams.get("num_classes")
            if isinstance(k, int) and k >= 2:
                self.num_classes = k

    def _chance(self) -> float | None:
        if self.chance_loss is not None:
            return self.chance_loss
        return math.log(self.num_classes) if self.num_classes else None

    # -- sampling ------------------------------------------------------------------------------
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._sampling = self._force_sample or trainer.global_step % self.every_n_steps == 0
        x = _first_float_tensor(batch) if (self._sampling or self._collect_train_fp()) else None
        if self._collect_train_fp() and x is not None:
            self._train_fp.append(self._fingerprint(x))
            self._train_fp_count += int(x.shape[0])
        if not self._sampling:
            return
        self._force_sample = False
        sample: dict[str, Any] = {}
        if x is not None:
            sample.update(self._input_stats(x.detach()))
        self._samples.append(sample)
        if self.track_activations:
            self._register_hooks(pl_module)

    def _collect_train_fp(self) -> bool:
        return (self.check_leakage and not self._leak["done"] and not self._epoch0_done
                and self._train_fp_count < self.leakage_max_samples)

    def _register_hooks(self, pl_module: pl.LightningModule) -> None:
        self._act_stats = {}
        th = self.thresholds

        def relu_hook(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor) and out.ndim >= 2 and out.shape[0] > 0:
                    o = out.detach()
                    alive = (o > 0).transpose(0, 1).reshape(o.shape[1], -1).any(dim=1)
                    self._act_stats.setdefault("dead/" + name, []).append(1.0 - alive.float().mean())
            return hook

        def sat_hook(name: str, scale: float) -> Callable[..., None]:
            def hook(_m: nn.Module, inp: Any, _out: Any) -> None:
                x = inp[0] if isinstance(inp, tuple) and inp else None
                if isinstance(x, torch.Tensor) and x.numel():
                    frac = (x.detach().abs() > th.saturation_preact * scale).float().mean()
                    self._act_stats.setdefault("sat/" + name, []).append(frac)
            return hook

        for name, m in self._act_modules:
            if isinstance(m, _RELU_TYPES):
                self._hooks.append(m.register_forward_hook(relu_hook(name)))
            else:
                self._hooks.append(m.register_forward_hook(sat_hook(name, _SATURATING[type(m)])))
        if self.num_classes is None and self.chance_loss is None:
            def logits_hook(_m: nn.Module, _inp: Any, out: Any) -> None:
                if (isinstance(out, torch.Tensor) and out.ndim == 2 and out.is_floating_point()
                        and out.shape[-1] >= 2):
                    self.num_classes = int(out.shape[-1])
            self._hooks.append(pl_module.register_forward_hook(logits_hook))

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _input_stats(self, x: torch.Tensor) -> dict[str, float]:
        x = x.float()
        if x.ndim == 1:
            x = x[:, None]
        per = x.transpose(0, 1).reshape(x.shape[1], -1)  # channels (images) or features (tabular)
        out = {"input_rms": float(per.pow(2).mean(dim=1).sqrt().max())}
        if x.ndim == 2 and x.shape[0] > 1 and x.shape[1] > 1:
            std = x.std(dim=0)
            std = std[std > 0]
            if std.numel() > 1:
                out["input_scale_ratio"] = float(std.max() / std.min())
        return out

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._sampling or not self._samples:
            return
        with torch.no_grad():
            names, norms, rows = [], [], {}
            for name, module, w in self._layers:
                if w.grad is None:
                    continue
                g = w.grad.detach()
                names.append(name)
                norms.append(torch.linalg.vector_norm(g.float()))
                if isinstance(module, _ROW_TYPES) and g.ndim >= 2:
                    rows[name] = (g.flatten(1).abs().amax(dim=1) == 0).float().mean()
            if norms:
                stacked = torch.stack(norms)
                total = torch.linalg.vector_norm(stacked)
                values = torch.cat([stacked, total[None], torch.stack(list(rows.values()))
                                    if rows else stacked.new_zeros(0)]).tolist()
                n = len(names)
                sample = self._samples[-1]
                sample["grad_norms"] = dict(zip(names, values[:n], strict=False))
                sample["grad_total"] = values[n]
                sample["zero_rows"] = dict(zip(rows, values[n + 1:], strict=False))
                if not all(math.isfinite(v) for v in values[: n + 1]):
                    self._nonfinite_grads = True
            if self.track_updates:
                self._weights_before = [w.detach().clone() for _, _, w in self._layers]

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = _loss_of(outputs)
        if loss is not None:
            loss = loss.detach().float().reshape(-1).mean()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        if not self._sampling:
            return
        self._sampling = False
        self._remove_hooks()
        sample = self._samples[-1] if self._samples else {}
        with torch.no_grad():
            if self._weights_before is not None:
                ratios = {}
                for (name, _, w), before in zip(self._layers, self._weights_before, strict=False):
                    denom = torch.linalg.vector_norm(before.float())
                    ratios[name] = torch.linalg.vector_norm((w.detach() - before).float()) / (denom + 1e-12)
                self._weights_before = None
                if ratios:
                    sample["update_ratios"] = dict(zip(ratios, torch.stack(list(ratios.values())).tolist(), strict=False))
            if self._act_stats:
                keys = list(self._act_stats)
                vals = torch.stack([torch.stack(v).mean() for v in self._act_stats.values()]).tolist()
                sample["acts"] = dict(zip(keys, vals, strict=False))
                self._act_stats = {}
        if self._loss_sum is not None:
            current = float(self._loss_sum) / max(1, self._loss_count)
            if not math.isfinite(current):
                self._nonfinite_loss = True
            if self._initial_loss is None and loss is not None:
                first = float(loss)
                self._initial_loss = first if math.isfinite(first) else None
        if "grad_total" in sample:
            self._grad_norm_history.append(sample["grad_total"])
        self._fast_check(trainer)

    def _fast_check(self, trainer: pl.Trainer) -> None:
        """Fatal symptoms are acted on at the sampled step, not only at the next validation."""
        th = self.thresholds
        hits = [
            check_diverging_loss([], nonfinite=self._nonfinite_loss, reference=None, th=th)
            if self._nonfinite_loss else None,
            check_exploding_gradients({}, self._grad_norm_history,
                                      nonfinite=self._nonfinite_grads, th=th),
        ]
        found = [h for h in hits if h is not None]
        if found:
            self._record(trainer, found, active_symptoms=None)

    # -- leakage -------------------------------------------------------------------------------
    def _fingerprint(self, x: torch.Tensor) -> torch.Tensor:
        """One int64 per sample: identical samples give identical values.

        A random projection (in float64, so rounding cannot split identical rows) of at most
        1,024 fixed positions of the flattened sample, which keeps the cost negligible for large
        images.
        """
        flat = x.detach().reshape(x.shape[0], -1)
        d = flat.shape[1]
        if d > 1024:
            flat = flat[:, torch.linspace(0, d - 1, 1024, device=flat.device).long()]
        flat = flat.double()
        d = flat.shape[1]
        if self._projection is None or self._projection.shape[0] != d or (
            self._projection.device != flat.device
        ):
            gen = torch.Generator().manual_seed(1234)
            self._projection = torch.randn(d, 4, generator=gen, dtype=torch.float64).to(flat.device)
        q = torch.round(flat @ self._projection * 1e6).long()
        primes = torch.tensor([1, 1_000_003, 998_244_353, 1_000_000_007], device=q.device)
        return (q * primes).sum(dim=1)

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not self.check_leakage or self._leak["done"] or not self._train_fp:
            return
        if batch_idx == 0 and dataloader_idx == 0 and not self._val_fp_open:
            self._val_fp, self._val_fp_open = [], True
        if self._val_fp_open:
            x = _first_float_tensor(batch)
            if x is not None:
                self._val_fp.append(self._fingerprint(x))

    def _finish_leakage(self, trainer: pl.Trainer) -> None:
        if not self._val_fp or not self._train_fp:
            return
        train = torch.cat(self._train_fp)
        val = torch.cat(self._val_fp)
        repeated = int(torch.isin(val, train).sum())
        counts = torch.tensor([val.numel(), repeated], dtype=torch.float64, device=val.device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        self._leak = {"checked": int(counts[0]), "repeated": int(counts[1]), "done": 1}
        self._train_fp, self._val_fp, self._val_fp_open = [], [], False

    # -- checks --------------------------------------------------------------------------------
    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._val_fp_open = False
        if self._epoch0_done:
            self._finish_leakage(trainer)
        self._val_seen = True
        self._check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._epoch0_done:
            self._epoch0_done = True
            if self._val_fp:
                self._finish_leakage(trainer)
        if self._loss_count and not self._val_seen:
            self._check(trainer, pl_module)  # no validation this epoch: diagnose on train alone
        self._val_seen = False

    def _metric(self, trainer: pl.Trainer, keys: Sequence[str]) -> float | None:
        for k in keys:
            v = trainer.callback_metrics.get(k)
            if v is not None:
                return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
        return None

    def _collect(self, trainer: pl.Trainer) -> dict[str, float]:
        """This interval's numbers, as floats (NaN where missing), before the cross-rank mean."""
        out: dict[str, float] = {}
        t: float | None = None
        if self.train_loss_key is not None:
            t = self._metric(trainer, [self.train_loss_key])
        elif self._loss_count:
            t = float(self._loss_sum) / self._loss_count  # type: ignore[arg-type]
        out["train_present"] = float(t is not None)
        out["train_loss"] = math.nan if t is None else t
        v = self._metric(trainer, self.val_loss_keys)
        out["val_loss"] = math.nan if v is None else v
        m = self._metric(trainer, [self.monitor]) if self.monitor else None
        out["monitor"] = math.nan if m is None else m
        per: dict[str, list[float]] = {}
        for s in self._samples:
            for key in ("input_rms", "input_scale_ratio"):
                if key in s:
                    per.setdefault(key, []).append(s[key])
            for group, prefix in (("grad_norms", "grad/"), ("update_ratios", "update/"),
                                  ("zero_rows", "rows/"), ("acts", "")):
                for k, val in s.get(group, {}).items():
                    per.setdefault(prefix + k, []).append(val)
        out.update({k: _median(v) for k, v in per.items()})
        out["nonfinite_loss"] = float(self._nonfinite_loss)
        out["nonfinite_grads"] = float(self._nonfinite_grads)
        return out

    def _reduce(self, trainer: pl.Trainer, values: dict[str, float]) -> dict[str, float]:
        """Make every rank decide on the same numbers.

        The losses and the non-finite flags (keys every rank has) are averaged across ranks (a
        flag above 0 then means "on some rank"); the sampled per-layer statistics, whose keys
        could differ between ranks, are taken from rank 0.
        """
        if trainer.world_size <= 1:
            return values
        core = [k for k in _CORE_KEYS if k in values]
        t = torch.tensor([values[k] for k in core], dtype=torch.float64,
                         device=trainer.strategy.root_device)
        t = trainer.strategy.reduce(t, reduce_op="mean")
        rest = trainer.strategy.broadcast({k: v for k, v in values.items() if k not in core}, src=0)
        return {**rest, **dict(zip(core, t.tolist(), strict=True))}

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        v = self._reduce(trainer, self._collect(trainer))
        has_train = v["train_present"] > 0
        # NaN means "missing" for val/monitor, but a NaN training loss is the divergence itself
        self._train_loss.append(v["train_loss"] if has_train else None)
        self._val_loss.append(v["val_loss"] if math.isfinite(v["val_loss"]) else None)
        self._monitor.append(v["monitor"] if math.isfinite(v["monitor"]) else None)
        self.report.history.append({
            "epoch": int(trainer.current_epoch), "step": int(trainer.global_step),
            "train_loss": self._train_loss[-1], "val_loss": self._val_loss[-1],
            "monitor": self._monitor[-1],
        })
        # checks without a training loss (e.g. training_step returned None) are left out
        keep = [i for i, t in enumerate(self._train_loss) if t is not None]
        snap = TrainingSnapshot(
            epoch=int(trainer.current_epoch),
            step=int(trainer.global_step),
            train_loss=[self._train_loss[i] for i in keep],  # type: ignore[misc]
            val_loss=[self._val_loss[i] for i in keep],
            monitor=[self._monitor[i] for i in keep],
            monitor_mode=self.mode or "max",
            nonfinite_loss=bool(v["nonfinite_loss"]),
            chance_loss=self._chance(),
            initial_loss=self._initial_loss,
            grad_norms={k[5:]: x for k, x in v.items() if k.startswith("grad/")},
            grad_norm_history=list(self._grad_norm_history),
            nonfinite_grads=bool(v["nonfinite_grads"]),
            update_ratios={k[7:]: x for k, x in v.items() if k.startswith("update/")},
            dead_fraction={k[5:]: x for k, x in v.items() if k.startswith("dead/")},
            zero_grad_rows={k[5:]: x for k, x in v.items() if k.startswith("rows/")},
            saturation={k[4:]: x for k, x in v.items() if k.startswith("sat/")},
            input_rms=v.get("input_rms"),
            input_scale_ratio=v.get("input_scale_ratio"),
            leakage_checked=self._leak["checked"],
            leakage_repeated=self._leak["repeated"],
            lr=self._lr(trainer),
        )
        state, bv, hits = diagnose(snap, self.thresholds)
        self.report.fit_state = state
        self.report.fit_evidence = bv.to_dict()
        self.report.meta.update(self._meta())
        self._record(trainer, hits, active_symptoms={h.symptom for h in hits})
        self._log_scalars(trainer, v, bv.to_dict(), state)
        self._reset_interval()
        self._force_sample = True

    def _lr(self, trainer: pl.Trainer) -> float | None:
        try:
            return float(trainer.optimizers[0].param_groups[0]["lr"])
        except (IndexError, KeyError, AttributeError, TypeError):
            return None

    def _meta(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "chance_loss": self._chance(),
            "initial_loss": self._initial_loss,
            "val_loss_key": self.val_loss_keys,
            "monitor": self.monitor,
            "mode": self.mode,
            "every_n_steps": self.every_n_steps,
            "thresholds": self.thresholds.to_dict(),
            "leakage": {"val_checked": self._leak["checked"], "val_repeated": self._leak["repeated"]},
        }

    def _remedy_context(self, trainer: pl.Trainer) -> dict[str, Any]:
        values: dict[str, Any] = {"lr": self._lr(trainer), "max_epochs": trainer.max_epochs}
        try:
            values["weight_decay"] = float(trainer.optimizers[0].param_groups[0].get("weight_decay"))
        except (IndexError, AttributeError, TypeError, ValueError):
            pass
        module = trainer.lightning_module
        hp = dict(getattr(module, "hparams", {}) or {}) if module is not None else {}
        nested = hp.get("backbone_config") if isinstance(hp.get("backbone_config"), Mapping) else {}
        for key in ("width", "hidden", "dropout"):
            for source in (nested, hp):
                if key in source:
                    values[key] = source[key]
                    break
        dl = getattr(trainer, "train_dataloader", None)
        if getattr(dl, "batch_size", None):
            values["batch_size"] = dl.batch_size
        return derived_context(values)

    def _record(
        self, trainer: pl.Trainer, hits: list[RuleHit], active_symptoms: set[Symptom] | None
    ) -> None:
        """Merge the rule hits into the report and apply the ``on_finding`` policy to new ones."""
        context = self._remedy_context(trainer)
        if active_symptoms is not None:
            for f in self.report.findings:
                if f.symptom not in active_symptoms:
                    f.active = False
            # the bias/variance states describe the current fit: drop them once no longer true
            self.report.findings = [
                f for f in self.report.findings
                if f.active or f.symptom.is_fault
            ]
        new: list[Finding] = []
        for h in hits:
            finding = Finding(
                symptom=h.symptom, severity=h.severity, step=int(trainer.global_step),
                epoch=int(trainer.current_epoch), evidence=dict(h.evidence),
                remedies=remedies_for(h.symptom, context), message=h.message,
                confidence=float(h.confidence), active=True,
            )
            self.report.add(finding)
            if h.symptom.value not in self._notified:
                self._notified.add(h.symptom.value)
                new.append(finding)
        stop = False
        for f in new:
            if callable(self.on_finding):
                self.on_finding(f, trainer)
                continue
            if trainer.is_global_zero:
                top = f.remedies[0].action if f.remedies else "see the report"
                log.warning("Fit diagnosis: %s (%s) at epoch %d: %s. First remedy: %s.",
                            f.symptom.value, f.severity.value, f.epoch, f.message, top)
            if self.on_finding == "stop" and f.severity == Severity.CRITICAL:
                stop = True
                self.report.stop_reason = (
                    f"FitDiagnosis stopped training at epoch {f.epoch}, step {f.step}: "
                    f"{f.symptom.value} ({f.message})."
                )
        if self.on_finding == "stop":
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                trainer.should_stop = True

    # -- outputs -------------------------------------------------------------------------------
    def _log_scalars(
        self, trainer: pl.Trainer, v: Mapping[str, float], bv: Mapping[str, Any], state: FitState
    ) -> None:
        if not trainer.loggers:
            return
        metrics: dict[str, float] = {"diagnosis/fit_state": float(_STATE_CODE[state]),
                                     "diagnosis/findings": float(len(self.report.findings))}
        if bv.get("train_loss") is not None and bv.get("val_loss") is not None:
            metrics["diagnosis/generalization_gap"] = bv["val_loss"] - bv["train_loss"]
        for key in ("bias", "variance", "generalization_loss", "trend"):
            if bv.get(key) is not None:
                name = {"bias": "relative_bias", "variance": "relative_gap"}.get(key, key)
                metrics[f"diagnosis/{name}"] = float(bv[key])
        prefixes = {"grad/": "grad_norm/", "update/": "update_ratio/", "dead/": "dead_fraction/",
                    "sat/": "saturated_fraction/", "rows/": "zero_grad_rows/"}
        for k, x in v.items():
            for p, name in prefixes.items():
                if k.startswith(p) and math.isfinite(x):
                    metrics[f"diagnosis/{name}{k[len(p):]}"] = float(x)
            if k in ("input_rms", "input_scale_ratio") and math.isfinite(x):
                metrics[f"diagnosis/{k}"] = float(x)
        if self._grad_norm_history:
            metrics["diagnosis/grad_norm_total"] = float(self._grad_norm_history[-1])
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._note_early_stopping(trainer)
        self._publish(trainer)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()
        if self.report.history:
            self._publish(trainer)

    def _note_early_stopping(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.callbacks import EarlyStopping

        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(cb, EarlyStopping):
                continue
            reason = getattr(cb, "stopping_reason", None)
            name = getattr(reason, "name", "NOT_STOPPED")
            info = {"monitor": cb.monitor, "stopped_epoch": int(cb.stopped_epoch),
                    "reason": name.lower(), "message": cb.stopping_reason_message,
                    "best_score": float(cb.best_score) if torch.isfinite(cb.best_score) else None}
            restored = getattr(cb, "restored_epoch", None)
            if restored is not None:
                info["restored_best_weights_from_epoch"] = int(restored)
            self.report.meta["early_stopping"] = info
            if name != "NOT_STOPPED" and self.report.stop_reason is None:
                text = f"EarlyStopping ({name.lower()}) at epoch {cb.stopped_epoch}"
                if cb.stopping_reason_message:
                    text += f": {cb.stopping_reason_message}"
                if restored is not None:
                    text += f" Best weights (epoch {restored}) restored."
                self.report.stop_reason = text
            break

    def _publish(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        markdown = self.report.to_markdown()
        writer = tensorboard_writer(trainer)
        if writer is not None:
            writer.add_text("diagnosis/report", markdown, global_step=trainer.global_step)
        image = None
        if (self.log_figure and writer is not None) or self.write_files:
            try:
                image = self._render_figure()
            except Exception as err:  # a figure is never worth failing the run  # noqa: BLE001
                log.warning("Fit diagnosis: could not draw the learning curve: %s", err)
        if self.write_files:
            directory = trainer_log_dir(trainer)
            paths = self.report.save(directory)
            self.files = {k: str(p) for k, p in paths.items()}
            if image is not None:
                import matplotlib.pyplot as plt

                png = directory / "learning_curve.png"
                plt.imsave(png, image)
                self.files["learning_curve"] = str(png)
        if image is not None and self.log_figure and writer is not None:
            writer.add_image("diagnosis/learning_curve", image, global_step=trainer.global_step,
                             dataformats="HWC")
        if writer is not None:
            writer.flush()

    def _render_figure(self) -> Any:
        """The learning curve as an RGB array, drawn once for both TensorBoard and the PNG."""
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from lightning_mlcycle.diagnosis._plots import learning_curve_figure

        fig = learning_curve_figure(self.report)
        try:
            canvas = FigureCanvasAgg(fig)  # whatever the user's backend, render off-screen
            canvas.draw()
            return np.asarray(canvas.buffer_rgba())[..., :3].copy()
        finally:
            plt.close(fig)

    # -- checkpointing -------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "train_loss": list(self._train_loss),
            "val_loss": list(self._val_loss),
            "monitor": list(self._monitor),
            "grad_norm_history": list(self._grad_norm_history),
            "initial_loss": self._initial_loss,
            "num_classes": self.num_classes,
            "notified": sorted(self._notified),
            "leak": dict(self._leak),
            "epoch0_done": self._epoch0_done,
            "report": self.report.to_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._train_loss = list(state_dict.get("train_loss", []))
        self._val_loss = list(state_dict.get("val_loss", []))
        self._monitor = list(state_dict.get("monitor", []))
        self._grad_norm_history = list(state_dict.get("grad_norm_history", []))
        self._initial_loss = state_dict.get("initial_loss")
        if self.num_classes is None:
            self.num_classes = state_dict.get("num_classes")
        self._notified = set(state_dict.get("notified", []))
        self._leak = dict(state_dict.get("leak", {"checked": 0, "repeated": 0, "done": 0}))
        self._epoch0_done = bool(state_dict.get("epoch0_done", False))
        if "report" in state_dict:
            self.report = DiagnosisReport.from_dict(state_dict["report"])
            # history values are exact in the lists above; the report's were rounded for JSON
            for rec, t, vl, mo in zip(self.report.history, self._train_loss, self._val_loss,
                                      self._monitor, strict=False):
                rec.update(train_loss=t, val_loss=vl, monitor=mo)
