"""The ``compress.prune``, ``compress.lowrank`` and ``compress.compact`` stages.

Each takes the tested model's backbone, applies its transform with the same callback a user
would add to their own Trainer (``MagnitudePruning``/``StructuredPruning``,
``LowRankFactorization``, ``CompactConvolutions``) during a short fine-tuning fit on the run's
data, measures the result against the dense model on the test split (parameters, MACs, file
size, eager CPU latency, accuracy) and writes ``<run>/compressed/<name>.pt`` and
``compressed/report.json|md`` (and TensorBoard scalars and text). The model goes to
``ctx.extras["models"][name]`` for the export stage. It trains on one device, on rank zero.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import rank_zero, tensorboard_writer
from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.cli.stages.train import _instantiate
from lightning_mlcycle.compression import (
    CompactConvolutions,
    LowRankFactorization,
    MagnitudePruning,
    StructuredPruning,
    save_factorized,
    save_pruned,
)
from lightning_mlcycle.compression._report import (
    interleaved_latency,
    markdown_table,
    model_report,
    write_report,
)
from lightning_mlcycle.compression.structured_pruning import output_layer
from lightning_mlcycle.models import ClassificationModule

log = logging.getLogger(__name__)


def _fine_tune(ctx: RunContext, node: str, callback: pl.Callback) -> ClassificationModule:
    """Fit a copy of the tested backbone for ``<node>.fine_tune_epochs`` with ``callback``."""
    cfg = OmegaConf.select(ctx.cfg, node)
    dm = ctx.datamodule
    # train mode: Lightning (>= 2.2) keeps the modes it is given, and the tested backbone may be in
    # eval mode (test stage, reports); fine-tuning it so would freeze BatchNorm's statistics at
    # the dense model's while channels are removed or layers replaced, and switch dropout off
    backbone = copy.deepcopy(ctx.model.backbone).cpu().train()
    lr = float(cfg.get("lr", 1e-3))
    epochs = int(cfg.get("fine_tune_epochs", 1))
    if epochs < 1:
        raise MLCycleError(f"`{node}.fine_tune_epochs` must be >= 1 (the transform runs in the first "
                           f"epoch), but got {epochs}.")
    module = ClassificationModule(
        backbone,
        num_classes=dm.num_classes,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr),
        class_names=list(dm.class_names),
        input_shape=list(dm.input_shape),
    )
    logger: Any = False
    tb_dir = ctx.artifacts.get("tensorboard")
    if tb_dir:
        from lightning.pytorch.loggers import TensorBoardLogger

        # a sub-run next to the training curves: sparsity, params and the fine-tuning losses
        logger = TensorBoardLogger(save_dir=tb_dir, name="", version=node.replace(".", "_"),
                                   default_hp_metric=False)
    tcfg = ctx.cfg.trainer
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=str(tcfg.get("accelerator", "auto")),
        devices=1,
        precision=tcfg.get("precision", "32-true"),
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=bool(tcfg.get("enable_progress_bar", True)),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=int(tcfg.get("log_every_n_steps", 10)),
        default_root_dir=str(ctx.run_dir / "compressed"),
    )
    trainer.fit(module, datamodule=dm)
    return module


def _report(ctx: RunContext, node: str, name: str, model: torch.nn.Module, extra: dict[str, Any]) -> None:
    """Measure dense vs ``model``; write the report, the summary keys and the printout."""
    cfg = OmegaConf.select(ctx.cfg, node)
    dm = ctx.datamodule
    test = dm.test_dataloader()
    example = next(iter(test))[0][: int(cfg.get("latency_batch_size", 1))].cpu()
    repeats = int(cfg.get("latency_repeats", 30))
    rows: dict[str, dict[str, Any]] = {}
    if "compress_dense_row" not in ctx.extras:
        dense = ctx.model.backbone.cpu().eval()
        ctx.extras["compress_dense_row"] = model_report(dense, example, test, repeats=1)
    rows["dense"] = dict(ctx.extras["compress_dense_row"])
    rows[name] = {**model_report(model, example, test, repeats=1), **extra}
    # dense and variant timed side by side, so a load spike does not skew one of them
    dense_model = ctx.model.backbone.cpu().eval()
    lat = interleaved_latency({"dense": dense_model, name: model}, example, rounds=5,
                              repeats=max(repeats // 5, 1))
    rows["dense"]["latency_ms"], rows[name]["latency_ms"] = lat["dense"], lat[name]
    writer = tensorboard_writer(ctx.trainer) if ctx.trainer is not None else None
    step = int(getattr(ctx.trainer, "global_step", 0) or 0)
    write_report(rows, ctx.run_dir / "compressed", writer=writer, step=step)
    for key, value in rows[name].items():
        if isinstance(value, (int, float)):
            ctx.summary[f"compress/{name}/{key}"] = value
    ctx.summary[f"compress/{name}/accuracy_delta"] = round(rows[name]["accuracy"] - rows["dense"]["accuracy"], 4)
    ctx.artifacts["compressed"] = str(ctx.run_dir / "compressed")
    ctx.extras.setdefault("models", {})[name] = model
    ctx.extras.setdefault("printouts", []).append(f"compress ({name}):\n" + markdown_table(rows))


def _builder(ctx: RunContext) -> dict[str, Any] | None:
    cfg = getattr(ctx.model, "hparams", {}).get("backbone_config")
    return dict(cfg) if cfg else None


def _check_callback(cb: Any, node: str, expected: tuple[type, ...]) -> None:
    if not isinstance(cb, expected):
        names = [t.__name__ for t in expected]
        raise MLCycleError(f"`{node}.callback` must build one of {names}, but got {type(cb).__name__}.")


_NODES = {
    "compress.prune": (MagnitudePruning, StructuredPruning),
    "compress.lowrank": (LowRankFactorization,),
    "compress.compact": (CompactConvolutions,),
}


def compress_check_stage(ctx: RunContext) -> None:
    """Build the enabled compress callbacks right after ``build``: a bad config fails before fit."""
    for node, expected in _NODES.items():
        section = OmegaConf.select(ctx.cfg, node)
        if section is None or not section.get("enabled", True):
            continue
        cb = _instantiate(OmegaConf.select(ctx.cfg, f"{node}.callback"), f"{node}.callback")
        _check_callback(cb, node, expected)
        epochs = section.get("fine_tune_epochs", 1)
        if not isinstance(epochs, int) or epochs < 1:
            raise MLCycleError(f"`{node}.fine_tune_epochs` must be an integer >= 1 (the transform runs in "
                               f"the first epoch), but got {epochs!r}.")
        if isinstance(cb, StructuredPruning):
            last = cb.round_epoch(cb.rounds)
            if last >= epochs:  # the fine-tune would end before the target ratio is reached
                raise MLCycleError(f"`{node}.fine_tune_epochs` must exceed the epoch of the last pruning "
                                   f"round: the last of {cb.rounds} rounds is at epoch {last} (start_epoch + "
                                   f"(rounds - 1) * every_n_epochs), but fine_tune_epochs={epochs}.")
        if node != "compress.prune" or isinstance(cb, StructuredPruning):
            if getattr(cb, "module", None) != "backbone":
                raise MLCycleError(f"`{node}.callback.module` must be 'backbone' in mlcycle, "
                                   f"but got {getattr(cb, 'module', None)!r}.")


def prune_stage(ctx: RunContext) -> None:
    """Prune the tested model (magnitude or structured) with a short fine-tune; measure and save."""
    if not rank_zero():
        return
    node = "compress.prune"
    cb = _instantiate(OmegaConf.select(ctx.cfg, f"{node}.callback"), f"{node}.callback")
    _check_callback(cb, node, (MagnitudePruning, StructuredPruning))
    module = _fine_tune(ctx, node, cb)
    model = module.backbone.cpu().eval()
    out = ctx.run_dir / "compressed"
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(cb, MagnitudePruning):
        name = "pruned"
        # plain weights: this state_dict loads strictly into the unpruned backbone
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "pruned.pt")
        extra = {"sparsity": round(cb.sparsity_report().get("overall", 0.0), 4)}
    else:
        name = "structured"
        if cb.module != "backbone":
            raise MLCycleError(f"`{node}.callback.module` must be 'backbone' in mlcycle, but got {cb.module!r}.")
        save_pruned(model, out / "structured.pt", history=cb.history, input_shape=list(ctx.datamodule.input_shape),
                    builder=_builder(ctx))
        extra = {}
    ctx.artifacts[f"compressed_{name}"] = str(out / f"{name}.pt")
    _report(ctx, node, name, model, extra)


def _exclude_output(ctx: RunContext, cb: Any, node: str) -> None:
    """Keep the classifier layer whole unless the config says otherwise."""
    if not OmegaConf.select(ctx.cfg, node).get("keep_output_layer", True):
        return
    backbone = ctx.model.backbone.cpu().eval()
    example = torch.zeros(1, *ctx.datamodule.input_shape)
    head = output_layer(backbone, example)
    names = {m: n for n, m in backbone.named_modules()}
    if head is not None and names.get(head) and names[head] not in cb.exclude:
        cb.exclude.append(names[head])


def _surgery_stage(ctx: RunContext, node: str, name: str, expected: type) -> None:
    if not rank_zero():
        return
    cb = _instantiate(OmegaConf.select(ctx.cfg, f"{node}.callback"), f"{node}.callback")
    _check_callback(cb, node, (expected,))
    if cb.module != "backbone":
        raise MLCycleError(f"`{node}.callback.module` must be 'backbone' in mlcycle, but got {cb.module!r}.")
    _exclude_output(ctx, cb, node)
    module = _fine_tune(ctx, node, cb)
    model = module.backbone.cpu().eval()
    path = save_factorized(model, ctx.run_dir / "compressed" / f"{name}.pt", kind=name, recipe=cb.recipe,
                           builder=_builder(ctx))
    ctx.artifacts[f"compressed_{name}"] = str(path)
    _report(ctx, node, name, model, {"layers_replaced": len(cb.recipe)})


def lowrank_stage(ctx: RunContext) -> None:
    """Factorize Linear/Conv2d layers by truncated SVD, fine-tune; measure and save."""
    _surgery_stage(ctx, "compress.lowrank", "lowrank", LowRankFactorization)


def compact_stage(ctx: RunContext) -> None:
    """Make k x k convolutions depthwise-separable, fine-tune; measure and save."""
    _surgery_stage(ctx, "compress.compact", "compact", CompactConvolutions)
