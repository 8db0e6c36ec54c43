"""During training: Optuna pruning callback and the throughput tuner."""

from lightning_mlcycle.tuning._throughput import LoaderSettings, ThroughputResult
from lightning_mlcycle.tuning.optuna_pruning import OptunaPruning, PruningOutcome
from lightning_mlcycle.tuning.throughput import ThroughputTuner, rebuild_dataloader, tune_throughput

__all__: list[str] = [
    "LoaderSettings",
    "OptunaPruning",
    "PruningOutcome",
    "ThroughputResult",
    "ThroughputTuner",
    "rebuild_dataloader",
    "tune_throughput",
]
