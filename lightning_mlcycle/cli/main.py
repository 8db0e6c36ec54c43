"""``mlcycle``: the whole cycle as a Hydra app (``mlcycle --help`` lists the config groups)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.cli.context import RunContext

log = logging.getLogger("lightning_mlcycle.cli")


def config_dir() -> str:
    """Absolute path of the shipped configs (the checkout's ``conf/`` or the installed copy)."""
    return str(Path(__file__).resolve().parents[1] / "conf")


def validate_config(cfg: DictConfig) -> None:
    """Reject bad values before anything is trained, naming the config key."""
    trainer = cfg.get("trainer") or {}
    max_epochs = trainer.get("max_epochs")
    max_steps = trainer.get("max_steps", -1)
    if max_epochs is None:
        if max_steps is None or max_steps < 1:
            raise MLCycleError(
                "`trainer.max_epochs` is null and `trainer.max_steps` is not set: "
                "give a positive number of epochs (e.g. trainer.max_epochs=10)."
            )
    elif not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
        raise MLCycleError(
            f"`trainer.max_epochs` must be a positive integer, but got {max_epochs!r}."
        )
    for key in ("data", "model", "trainer"):
        if key not in cfg or cfg[key] is None:
            raise MLCycleError(
                f"The config has no `{key}` group; choose one with `{key}=<option>`."
            )
    if "backbone" not in cfg.model:
        raise MLCycleError(
            "`model.backbone` is missing: the model config must say which network to train."
        )


def run(cfg: DictConfig) -> RunContext:
    """Run every enabled stage of the cycle on ``cfg`` and return what they produced.

    Writes ``summary.json`` in ``cfg.run_dir``. Use this from Python (or tests) with a config
    composed by ``hydra.compose``; ``mlcycle`` calls it from the command line.
    """
    from lightning_mlcycle.cli.stages import STAGES

    validate_config(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg=cfg, run_dir=run_dir)
    ctx.artifacts["run_dir"] = str(run_dir)
    start = time.perf_counter()
    for name, stage, node in STAGES:
        if node is not None:
            section = OmegaConf.select(cfg, node)
            if section is None or not section.get("enabled", True):
                continue
        t0 = time.perf_counter()
        stage(ctx)
        ctx.summary[f"time/{name}_s"] = round(time.perf_counter() - t0, 2)
        if ctx.extras.get("distributed/rank_done"):
            break  # a DDP rank other than zero after fit/test: rank zero does the rest
    ctx.summary["time/total_s"] = round(time.perf_counter() - start, 2)
    _write_summary(ctx)
    return ctx


def _write_summary(ctx: RunContext) -> None:
    from lightning_mlcycle._utils import rank_zero

    if not rank_zero():
        return
    payload = {"summary": ctx.summary, "artifacts": ctx.artifacts}
    (ctx.run_dir / "summary.json").write_text(json.dumps(payload, indent=2, default=str))


def print_summary(ctx: RunContext) -> None:
    """The short rich table ``mlcycle`` ends with."""
    from rich.console import Console
    from rich.table import Table

    s, a = ctx.summary, ctx.artifacts
    table = Table(title="mlcycle summary", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for label, key in (
        ("test accuracy", "test/acc"),
        ("test macro F1", "test/f1"),
        ("test loss", "test/loss"),
    ):
        if key in s:
            table.add_row(label, f"{s[key]:.4f}")
    for key, value in s.items():
        if key.startswith(("test/", "time/", "data/", "fit/")) or not isinstance(
            value, (int, float, str)
        ):
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    if "time/total_s" in s:
        table.add_row("wall time", f"{s['time/total_s']:.1f} s")
    if "tensorboard" in a:
        table.add_row("TensorBoard", f"tensorboard --logdir {a['tensorboard']}")
    for key, path in a.items():
        if key != "tensorboard":
            table.add_row(key, str(path))
    table.add_row("summary", str(ctx.run_dir / "summary.json"))
    Console().print(table)
    for block in ctx.extras.get("printouts", []):
        Console().print(block)


def _objective(cfg: DictConfig, ctx: RunContext) -> Any:
    """What a sweep optimizes: ``cfg.optimized_metric`` (a name or a list) read from the summary."""
    metric = cfg.get("optimized_metric")
    if metric is None:
        return None
    names = [metric] if isinstance(metric, str) else list(metric)
    missing = [m for m in names if m not in ctx.summary]
    if missing:
        raise MLCycleError(
            f"`optimized_metric`: {missing} not in the run's results; available: {sorted(ctx.summary)}."
        )
    values = [float(ctx.summary[m]) for m in names]
    return values[0] if isinstance(metric, str) else values


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="mlcycle")
def _app(cfg: DictConfig) -> Any:
    import sys

    from lightning_mlcycle._utils import rank_zero
    from lightning_mlcycle.cli._ddp import ddp_job, is_relaunched_worker

    with ddp_job(sys.argv):
        try:
            ctx = run(cfg)
        except Exception as err:
            # a pruned trial stops every rank; a DDP worker that exits non-zero would make
            # Lightning's process observer kill the sweep, so workers leave quietly
            if is_relaunched_worker() and type(err).__name__ == "TrialPruned":
                return None
            raise
    if not rank_zero():
        return None  # other DDP ranks: rank zero prints and reports the objective
    print_summary(ctx)
    return _objective(cfg, ctx)


def main() -> None:
    """Console entry point of ``mlcycle``."""
    import sys

    from lightning_mlcycle.cli._ddp import prepare_argv

    logging.getLogger("lightning_mlcycle").setLevel(logging.INFO)
    # DDP workers re-launched by Lightning run their launching job, in its folder (see _ddp)
    sys.argv = prepare_argv(sys.argv)
    _app()


if __name__ == "__main__":
    main()
