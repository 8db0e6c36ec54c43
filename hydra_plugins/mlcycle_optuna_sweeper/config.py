"""Config of the ``mlcycle_optuna`` sweeper, registered as ``hydra/sweeper=mlcycle_optuna``.

Kept free of heavy imports: Hydra imports every public module of ``hydra_plugins`` at start-up.
No ``from __future__ import annotations`` here: Hydra's plugin scan runs this module before it is
in ``sys.modules``, where dataclasses cannot resolve string annotations, and OmegaConf needs the
real types.
"""

from dataclasses import dataclass, field
from typing import Any, Dict  # noqa: UP035 - OmegaConf reads these annotations

from hydra.core.config_store import ConfigStore


@dataclass
class MLCycleOptunaSweeperConf:
    """Keys of ``hydra.sweeper`` (the same names as Hydra's Optuna sweeper, plus pruning).

    Attributes:
        sampler: an Optuna sampler (``_target_`` config); seed it for reproducible sweeps.
        pruner: an Optuna pruner (``_target_`` config) or null for no pruning.
        monitor: the logged metric the job reports to the pruner at every validation; it must be
            optimized in the study's direction (e.g. ``val/acc`` with ``maximize``).
        step_unit: what the reported step counts: ``global_step`` (optimizer steps), ``samples``
            (training samples seen: use it when the batch size is searched, so trials are
            compared after the same amount of data) or ``epoch``. The pruner's warm-up /
            ``min_resource`` is in this unit.
        direction: ``minimize`` / ``maximize``, or a list of them for a multi-objective study.
        study_name: the study's name in the storage (resume and parallel workers share it).
        storage: an Optuna storage URL (``sqlite:///...``, ``postgresql://...``,
            ``journal:<path>``); null: ``sqlite:///<sweep dir>/optuna.db``.
        n_trials: trials in the study in total (a re-run finishes the rest).
        n_jobs: trials handed to the launcher at once (run in parallel by e.g. joblib).
        max_failure_rate: the sweep stops when more than this share of ``n_trials`` has failed.
        params: ``config.path: grammar`` (``choice(a,b)``, ``range(a,b,step=s)``,
            ``interval(a,b)``, ``tag(log, interval(a,b))``) or a fixed value.
        custom_search_space: dotted path of ``fn(cfg, trial)`` that suggests more (conditional)
            parameters with ``trial.suggest_*``; may return a dict of extra fixed overrides.
    """

    _target_: str = "hydra_plugins.mlcycle_optuna_sweeper.sweeper.MLCycleOptunaSweeper"
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 42}
    )
    pruner: Any = None
    monitor: str | None = None
    step_unit: str = "global_step"
    direction: Any = "minimize"
    study_name: str = "mlcycle"
    storage: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.25
    params: Dict[str, Any] | None = None  # noqa: UP006
    custom_search_space: str | None = None


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="mlcycle_optuna",
    node=MLCycleOptunaSweeperConf,
    provider="lightning_mlcycle",
)
