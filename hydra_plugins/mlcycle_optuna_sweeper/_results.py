"""What a sweep leaves in its folder: results YAML, trials CSV, HTML plots, TensorBoard HParams."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

REASON_ATTR = "fail_reason"


def _plain(value: Any) -> Any:
    """YAML/CSV-friendly scalars (NaN/inf as strings, numpy scalars as Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


def results_dict(impl: Any, study: optuna.Study) -> dict[str, Any]:
    """The content of ``optimization_results.yaml``: best (or Pareto front), counts, failures."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    out: dict[str, Any] = {
        "name": study.study_name,
        "storage": impl.masked_url,
        "directions": impl.directions,
        "metrics": impl.metric_names,
        "n_trials": impl.n_trials,
        "trials": {k: v for k, v in states.items() if v},
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete and len(impl.directions) == 1:
        best = study.best_trial
        out["best_trial"] = best.number
        out["best_params"] = {k: _plain(v) for k, v in best.params.items()}
        out["best_value"] = _plain(best.value)
    elif complete:
        out["pareto_front"] = [
            {"number": t.number, "values": [_plain(v) for v in t.values],
             "params": {k: _plain(v) for k, v in t.params.items()}}
            for t in sorted(study.best_trials, key=lambda t: t.number)
        ]
    out["failed"] = [
        {"number": t.number, "reason": str(t.user_attrs.get(REASON_ATTR, "unknown"))}
        for t in trials if t.state == TrialState.FAIL
    ]
    out["pruned"] = [t.number for t in trials if t.state == TrialState.PRUNED]
    return out


def write_csv(impl: Any, study: optuna.Study, path: Path) -> None:
    """One row per trial: number, state, values, duration, start/end, params, fail reason."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    param_names = sorted({k for t in trials for k in t.params})
    header = ["number", "state", *impl.metric_names, "duration_s", "datetime_start",
              "datetime_complete", *(f"params.{p}" for p in param_names), "fail_reason"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for t in trials:
            values = list(t.values) if t.values is not None else \
                [t.intermediate_values[max(t.intermediate_values)]] + [None] * (
                    len(impl.metric_names) - 1) if t.intermediate_values else \
                [None] * len(impl.metric_names)
            duration = t.duration.total_seconds() if t.duration is not None else None
            writer.writerow([t.number, t.state.name, *values,
                             None if duration is None else round(duration, 3),
                             t.datetime_start, t.datetime_complete,
                             *(t.params.get(p) for p in param_names),
                             t.user_attrs.get(REASON_ATTR, "")])


def write_plots(impl: Any, study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's HTML plots (one shared ``plotly.min.js`` next to them, so they work offline)."""
    from optuna import visualization as vis

    if not vis.is_available():
        log.warning("plotly is not installed: no HTML plots (pip install plotly)")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    multi = len(impl.directions) > 1
    plots: dict[str, Any] = {}
    names = impl.metric_names
    for i, name in enumerate(names if multi else names[:1]):
        suffix = f"_{i}" if multi else ""

        def target(t: FrozenTrial, i: int = i) -> float:
            return t.values[i]

        kwargs = {"target": target, "target_name": name} if multi else {"target_name": name}
        plots[f"history{suffix}"] = lambda kw=kwargs: vis.plot_optimization_history(study, **kw)
        plots[f"importances{suffix}"] = lambda kw=kwargs: vis.plot_param_importances(study, **kw)
        plots[f"parallel_coordinate{suffix}"] = \
            lambda kw=kwargs: vis.plot_parallel_coordinate(study, **kw)
    if multi:
        plots["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=names)
    if not multi and impl.pruner is not None:
        plots["intermediate_values"] = lambda: vis.plot_intermediate_values(study)
    written = []
    for name, make in plots.items():
        try:
            fig = make()
            path = folder / f"{name}.html"
            fig.write_html(str(path), include_plotlyjs="directory")
            written.append(path)
        except Exception as err:  # e.g. importances need two complete trials; keep the others
            log.info("No %s plot: %s", name, err)
    return written


def write_all(impl: Any, study: optuna.Study) -> dict[str, Path]:
    """Write every result file into the sweep folder and return their paths."""
    folder = impl.sweep_dir
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"results": folder / "optimization_results.yaml", "trials": folder / "trials.csv"}
    OmegaConf.save(OmegaConf.create(results_dict(impl, study)), paths["results"])
    write_csv(impl, study, paths["trials"])
    plots = write_plots(impl, study, folder / "plots")
    if plots:
        paths["plots"] = folder / "plots"
    return paths


def log_trial_hparams(impl: Any, trial: FrozenTrial) -> None:
    """One TensorBoard run per trial under ``<sweep>/tensorboard``: params, state, final metrics."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    hp: dict[str, Any] = {}
    for k, v in trial.params.items():
        hp[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    hp["state"] = trial.state.name
    metrics: dict[str, float] = {}
    if trial.values is not None:
        metrics = {f"hp/{n}": float(v) for n, v in zip(impl.metric_names, trial.values, strict=False)}
    elif trial.intermediate_values:
        last = trial.intermediate_values[max(trial.intermediate_values)]
        metrics = {f"hp/{impl.metric_names[0]}": float(last)}
    if trial.duration is not None:
        metrics["hp/duration_s"] = trial.duration.total_seconds()
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    writer = SummaryWriter(log_dir=str(impl.sweep_dir / "tensorboard" / f"trial_{trial.number:03d}"))
    try:
        exp, ssi, sei = hparams(hp, metrics)
        fw = writer._get_file_writer()  # noqa: SLF001 - add_hparams would add a sub-folder
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        for name, value in metrics.items():
            writer.add_scalar(name, value, global_step=0)
        for step, value in sorted(trial.intermediate_values.items()):
            if math.isfinite(value):
                writer.add_scalar(f"pruning/{impl.monitor or 'intermediate'}", value, step)
    finally:
        writer.close()


def print_summary(impl: Any, study: optuna.Study, stopped: str | None) -> None:
    """The sweep's console table: every trial, its state, values and why it failed."""
    from rich.console import Console
    from rich.table import Table

    res = results_dict(impl, study)
    table = Table(title=f"Optuna sweep {study.study_name!r}", header_style="bold")
    for col in ("trial", "state", *impl.metric_names, "params / reason"):
        table.add_column(col, overflow="fold")
    for t in sorted(_finished(study), key=lambda t: t.number):
        values = [f"{v:.4g}" for v in t.values] if t.values is not None else \
            [""] * len(impl.metric_names)
        detail = str(t.user_attrs.get(REASON_ATTR, "")) if t.state == TrialState.FAIL else \
            ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
        table.add_row(str(t.number), t.state.name, *values, detail)
    console = Console()
    console.print(table)
    if "best_params" in res:
        console.print(f"best trial {res['best_trial']}: {impl.metric_names[0]} = "
                      f"{_fmt(res['best_value'])}  {res['best_params']}")
    elif "pareto_front" in res:
        console.print(f"Pareto front: trials {[p['number'] for p in res['pareto_front']]}")
    if res["failed"]:
        console.print(f"failed trials: {[(f['number'], f['reason']) for f in res['failed']]}")
    if stopped:
        console.print(f"[red]stopped early: {stopped}[/red]")
    console.print(f"results: {impl.sweep_dir / 'optimization_results.yaml'}  (storage "
                  f"{impl.masked_url}, study {study.study_name!r}; "
                  f"tensorboard --logdir {impl.sweep_dir})")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
