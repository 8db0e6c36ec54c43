"""``ClassificationModule``: any backbone, optimizer/scheduler from config, torchmetrics metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import tensorboard_writer

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


def classification_metrics(num_classes: int) -> torchmetrics.MetricCollection:
    """Accuracy (micro) and macro precision, recall and F1 for ``num_classes`` classes.

    Example:
        >>> m = classification_metrics(3)
        >>> m.update(torch.tensor([[2.0, 0, 0], [0, 2.0, 0]]), torch.tensor([0, 2]))
        >>> round(float(m.compute()["acc"]), 2)
        0.5
    """
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    return torchmetrics.MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "precision": MulticlassPrecision(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
    )


class ClassificationModule(pl.LightningModule):
    """A LightningModule that trains any ``nn.Module`` backbone as a classifier.

    Logs loss, accuracy and macro precision/recall/F1 under ``train/``, ``val/`` and ``test/``;
    at test time logs a confusion-matrix figure to TensorBoard and writes the hyper-parameters with
    the final test metrics to TensorBoard's HParams tab.

    Args:
        backbone: the network (logits out). May be omitted when ``backbone_config`` is given.
        num_classes: number of classes.
        optimizer: a factory ``optimizer(params)`` (e.g. a Hydra ``_partial_`` of
            ``torch.optim.AdamW``); default AdamW(lr=1e-3).
        scheduler: a factory ``scheduler(optimizer)`` (e.g. a ``_partial_`` of
            ``CosineAnnealingLR``), or None.
        label_smoothing: label smoothing of the cross-entropy loss.
        class_names: names of the classes, for the confusion matrix and model card.
        backbone_config: the Hydra config that builds the backbone (``_target_`` ...); saved in
            checkpoints so ``load_from_checkpoint(path)`` can rebuild the model on its own.
        input_shape: one sample's shape, saved for export and model cards.
        normalization: ``{"mean": [...], "std": [...]}`` the inputs were normalized with.
        extra_hparams: flat scalar hyper-parameters shown next to the final metrics in the HParams
            tab (the CLI passes the whole run config).

    Example:
        >>> from lightning_mlcycle.models import MLP
        >>> module = ClassificationModule(MLP(3, (4,)), num_classes=3)
        >>> module(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        num_classes: int | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        *,
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
        backbone_config: Mapping[str, Any] | None = None,
        input_shape: Sequence[int] | None = None,
        normalization: Mapping[str, Sequence[float]] | None = None,
        extra_hparams: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise MLCycleError(f"`num_classes` must be an integer >= 2, but got {num_classes!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise MLCycleError(f"`label_smoothing` must be in [0, 1), but got {label_smoothing!r}.")
        if backbone is None:
            if backbone_config is None:
                raise MLCycleError("Pass a `backbone` module or a `backbone_config` to build one.")
            from hydra.utils import instantiate

            backbone = instantiate(dict(backbone_config))
        if not isinstance(backbone, nn.Module):
            raise MLCycleError(
                f"`backbone` must be a torch.nn.Module, but got {type(backbone).__name__}."
            )
        # plain Python containers only, so checkpoints load with torch.load(weights_only=True)
        class_names = _plain(class_names)
        backbone_config = _plain(backbone_config)
        input_shape = _plain(input_shape)
        normalization = _plain(normalization)
        extra_hparams = _plain(extra_hparams)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.class_names = (
            list(class_names) if class_names else [str(i) for i in range(num_classes)]
        )
        metrics = classification_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        from torchmetrics.classification import MulticlassConfusionMatrix

        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.final_test_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the backbone."""
        return self.backbone(x)

    def _step(self, batch: Any, metrics: torchmetrics.MetricCollection, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        metrics.update(logits.detach(), y)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=y.shape[0],
            sync_dist=not on_step,
        )
        self.log_dict(
            metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=y.shape[0]
        )
        if stage == "test":
            self.test_confusion.update(logits.detach(), y)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy on a training batch."""
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Loss and metrics on a validation batch."""
        self._step(batch, self.val_metrics, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Loss, metrics and confusion matrix on a test batch."""
        self._step(batch, self.test_metrics, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(x), dim=-1)

    def on_test_epoch_end(self) -> None:
        """Keep the final test metrics, log the confusion matrix and the HParams summary."""
        cm = self.test_confusion.compute().cpu()
        self.test_confusion.reset()
        self.final_test_metrics = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")
        }
        self._log_test_summary(cm)

    @rank_zero_only
    def _log_test_summary(self, cm: torch.Tensor) -> None:
        writer = tensorboard_writer(self.trainer)
        if writer is None:
            return
        from lightning_mlcycle.models._plots import confusion_matrix_figure

        writer.add_figure(
            "test/confusion_matrix",
            confusion_matrix_figure(cm, self.class_names),
            global_step=self.global_step,
        )
        metrics = {f"hp/{k.split('/', 1)[1]}": v for k, v in self.final_test_metrics.items()}
        params = _flat_hparams(self.hparams)
        for logger in self.trainer.loggers:
            from lightning.pytorch.loggers import TensorBoardLogger

            if isinstance(logger, TensorBoardLogger) and metrics:
                logger.log_hyperparams(params, metrics=metrics)

    def configure_optimizers(self) -> Any:
        """Optimizer (and scheduler) from the factories given at construction."""
        factory = self.optimizer_factory or (lambda p: torch.optim.AdamW(p, lr=1e-3))
        optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "val/loss"},
        }


def _plain(obj: Any) -> Any:
    """OmegaConf containers (and tuples) to plain dicts/lists, recursively."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core
        pass
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _flat_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars only (TensorBoard's HParams tab accepts int, float, str, bool)."""
    out: dict[str, Any] = {}
    for k, v in hparams.items():
        if k == "extra_hparams" and isinstance(v, Mapping):
            out.update({kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))})
        elif isinstance(v, (int, float, str, bool)):
            out[k] = v
    return out
