"""The ``mlcycle_optuna`` Hydra sweeper (thin: the work is in ``_impl``, imported on use)."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class MLCycleOptunaSweeper(Sweeper):
    """An Optuna sweeper for Hydra multirun that prunes, resumes and survives failed trials.

    Select it with ``hydra/sweeper=mlcycle_optuna`` (every ``conf/hparams_search/*.yaml`` does).
    The keys are documented on :class:`~hydra_plugins.mlcycle_optuna_sweeper.config.MLCycleOptunaSweeperConf`.

    Example:
        >>> s = MLCycleOptunaSweeper(sampler=None, pruner=None, monitor=None, direction="maximize",
        ...                          study_name="demo", storage=None, n_trials=3, n_jobs=1,
        ...                          max_failure_rate=0.0, params={"x": "interval(0, 1)"})
        >>> s.impl.directions
        ['maximize']
    """

    def __init__(self, **kwargs: Any) -> None:
        from hydra_plugins.mlcycle_optuna_sweeper._impl import SweeperImpl

        self.impl = SweeperImpl(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep Hydra's context and build the launcher."""
        self.config = config
        self.hydra_context = hydra_context
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self.impl.launcher

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study; ``arguments`` are the command-line overrides (sweeps or fixed)."""
        return self.impl.sweep(arguments)
