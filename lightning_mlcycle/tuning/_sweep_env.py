"""How a sweep job learns which Optuna trial it is (private contract sweeper <-> job).

The sweeper puts one JSON value in the job's environment (through Hydra's
``hydra.job.env_set``, so it works in-process, in joblib workers and in DDP re-launches); the job
reads it back and reopens the trial on the shared storage. The storage URL in it is masked; the
password travels only in the process environment (``MLCYCLE_OPTUNA_STORAGE_PASSWORD``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_mlcycle._errors import MLCycleError

#: the environment variable holding the trial handle of a sweep job
TRIAL_ENV = "MLCYCLE_OPTUNA_TRIAL"


@dataclass(frozen=True)
class SweepTrial:
    """Where a sweep job's trial lives.

    Attributes:
        storage: the Optuna storage URL (password masked).
        study_name: the study.
        number: the trial's number in the study (also the Hydra job number).
        monitor: the metric the pruning callback reports (None: no pruning).
        pruner: the sweeper's pruner config (``_target_`` mapping) or None.
        step_unit: what the pruning callback's steps count (``OptunaPruning``'s ``step_unit``).

    Example:
        >>> t = SweepTrial("sqlite:///s/optuna.db", "digits", 3, "val/acc", None)
        >>> SweepTrial.decode(t.encode()) == t
        True
    """

    storage: str
    study_name: str
    number: int
    monitor: str | None = None
    pruner: dict[str, Any] | None = field(default=None, hash=False)
    step_unit: str = "global_step"

    def encode(self) -> str:
        """One-line JSON for the environment."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, text: str) -> SweepTrial:
        """Parse :meth:`encode`'s output; a bad value names the variable."""
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as err:
            raise MLCycleError(f"${TRIAL_ENV} is not a valid sweep trial handle: {err}") from None

    def open(self) -> Any:
        """Reopen the live :class:`optuna.trial.Trial` on the storage (with the sweep's pruner)."""
        import optuna
        from hydra.utils import instantiate

        from lightning_mlcycle.tuning._storage import open_storage

        storage = open_storage(self.storage, key=f"${TRIAL_ENV}.storage")
        pruner = instantiate(self.pruner) if self.pruner else optuna.pruners.NopPruner()
        # the sampler is not needed here (parameters were drawn by the sweeper); RandomSampler has
        # no relative search space, so reopening the trial costs no sampler work
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.RandomSampler())
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        return optuna.trial.Trial(study, trial_id)


def trial_from_environment() -> SweepTrial | None:
    """The trial handle of this process when it runs as a sweep job, else None."""
    text = os.environ.get(TRIAL_ENV)
    return SweepTrial.decode(text) if text else None
