"""Build the data, model and Trainer from the config; fit; test."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.cli.context import RunContext

log = logging.getLogger(__name__)


def _instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """Instantiate a config node; an error names the config key it came from."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise MLCycleError(f"Config `{key}`: {cause}") from cause


def _fill_backbone(backbone_cfg: DictConfig, dm: Any) -> DictConfig:
    """Fill ``num_classes`` / ``input_shape`` left ``null`` in the backbone config from the data."""
    node = OmegaConf.to_container(backbone_cfg, resolve=True)
    assert isinstance(node, dict)
    if "num_classes" in node and node["num_classes"] is None:
        node["num_classes"] = dm.num_classes
    if "input_shape" in node and node["input_shape"] is None:
        node["input_shape"] = list(dm.input_shape)
    return OmegaConf.create(node)


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as ``{"a.b.c": scalar}``, for TensorBoard's HParams tab."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not str(k).startswith("_"):
                    walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(node, (list, tuple)):
            out[prefix] = str(node)
        elif isinstance(node, (int, float, str, bool)):
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def build_stage(ctx: RunContext) -> None:
    """Seed, then instantiate the data module, model, callbacks, loggers and Trainer."""
    cfg = ctx.cfg
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    dm = _instantiate(cfg.data, "data")
    dm.prepare_data()
    dm.setup("fit")
    backbone_cfg = _fill_backbone(cfg.model.backbone, dm)
    backbone = _instantiate(backbone_cfg, "model.backbone")
    hparams = {k: v for k, v in flat_config(cfg).items() if not k.startswith(("hydra", "run_dir"))}
    # instantiate the optimizer/scheduler partials from the config, then pass our objects directly
    # (through Hydra they would be converted, and a config holding `_target_` instantiated)
    model_factory = _instantiate(cfg.model, "model", backbone=None, _partial_=True, _convert_="all")
    model_kwargs = {k: v for k, v in model_factory.keywords.items() if k != "backbone"}
    model = model_factory.func(
        backbone=backbone,
        **{
            **model_kwargs,
            "num_classes": dm.num_classes,
            "class_names": list(dm.class_names),
            "backbone_config": OmegaConf.to_container(backbone_cfg, resolve=True),
            "input_shape": list(dm.input_shape),
            "normalization": dm.normalization,
            "extra_hparams": hparams,
        },
    )
    callbacks = [
        _instantiate(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None and "_target_" in node
    ]
    if OmegaConf.select(cfg, "tuning.throughput", default=False):
        from lightning_mlcycle.tuning import ThroughputTuner

        callbacks.append(ThroughputTuner())
    # in an `mlcycle -m` sweep with a pruner: report to the sweeper's Optuna trial (via storage)
    from lightning_mlcycle.tuning.optuna_pruning import OptunaPruning

    pruning = OptunaPruning.from_environment()
    if pruning is not None:
        callbacks.append(pruning)
    loggers = [
        _instantiate(node, f"logger.{name}")
        for name, node in (cfg.get("logger") or {}).items()
        if node is not None and "_target_" in node
    ]
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    ctx.datamodule, ctx.model, ctx.trainer = dm, model, trainer
    for lg in loggers:
        log_dir = getattr(lg, "log_dir", None)
        if log_dir:
            ctx.artifacts.setdefault("tensorboard", str(log_dir))
    ctx.summary["data/train_samples"] = int(len(dm.indices["train"]))
    ctx.summary["data/leaked_samples"] = int(dm.leakage_report.total) if dm.leakage_report else 0
    ctx.summary["model/parameters"] = int(sum(p.numel() for p in model.parameters()))


def fit_stage(ctx: RunContext) -> None:
    """Train with ``trainer.fit``."""
    ctx.trainer.fit(ctx.model, datamodule=ctx.datamodule)
    ckpt = _checkpoint_callback(ctx.trainer)
    if ckpt is not None and ckpt.best_model_path:
        ctx.artifacts["best_checkpoint"] = ckpt.best_model_path
        ctx.summary["fit/best_val"] = _float(ckpt.best_model_score)
    ctx.summary["fit/epochs"] = int(ctx.trainer.current_epoch)


def test_stage(ctx: RunContext) -> None:
    """Evaluate on the held-out test split with the best checkpoint (if one was kept)."""
    ckpt = _checkpoint_callback(ctx.trainer)
    ckpt_path = "best" if ckpt is not None and ckpt.best_model_path else None
    results = ctx.trainer.test(ctx.model, datamodule=ctx.datamodule, ckpt_path=ckpt_path)
    for k, v in (results[0] if results else {}).items():
        ctx.summary[k] = float(v)


def _checkpoint_callback(trainer: pl.Trainer) -> Any:
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            return cb
    return None


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
