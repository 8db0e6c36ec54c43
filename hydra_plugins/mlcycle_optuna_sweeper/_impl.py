"""The work of the ``mlcycle_optuna`` sweeper (private; imported only when it is used).

How one study is shared by resumed runs and parallel workers without losing or repeating a trial:
the process that creates the study enqueues ``n_trials`` WAITING trials once; every worker then
*claims* WAITING trials (an atomic WAITING -> RUNNING transition: row lock on database servers, a
file lock for SQLite and journal files), draws their parameters, launches them and tells the
result. A re-run claims what is still WAITING (plus RUNNING trials whose process on this host is
gone), so it finishes the remaining trials with their original numbers, which are also the job
numbers and sub-folders.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.tuning._storage import (
    PASSWORD_ENV,
    local_file,
    mask_url,
    open_storage,
    scrub,
    storage_lock,
    url_password,
)
from lightning_mlcycle.tuning._sweep_env import TRIAL_ENV, SweepTrial

log = logging.getLogger(__name__)

#: study user attribute: how many trials the study was planned with (enqueued as WAITING)
PLANNED_ATTR = "mlcycle:n_trials"
#: trial system attributes: who runs it (host:pid) and why it failed
OWNER_ATTR = "mlcycle:owner"
REASON_ATTR = "fail_reason"
_DIRECTIONS = ("minimize", "maximize")


# ---------------------------------------------------------------- search space (pure functions)
def _override_prefix(override: Override) -> str:
    return {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(override.type, "")


def _range_last(start: float, stop: float, step: float) -> float:
    """The last value of Python's ``range(start, stop, step)`` (Hydra's ``range`` excludes stop)."""
    n = math.ceil((stop - start) / step)
    return start + (n - 1) * step


def distribution_from_override(override: Override, key: str) -> BaseDistribution | None:
    """The Optuna distribution of a sweep override, or None for a plain (fixed) value.

    ``choice(a,b)`` and ``a,b`` -> categorical; ``range(a,b,step=s)`` -> the values of Python's
    ``range`` (ints or floats, b excluded); ``interval(a,b)`` -> float uniform
    (``int(interval(a,b))`` -> int); ``tag(log, interval(a,b))`` -> log-uniform. ``key`` names the config key in errors.

    Example:
        >>> from hydra.core.override_parser.overrides_parser import OverridesParser
        >>> o = OverridesParser.create().parse_override("lr=tag(log, interval(1e-4, 1e-1))")
        >>> distribution_from_override(o, "lr")
        FloatDistribution(high=0.1, log=True, low=0.0001, step=None)
        >>> o = OverridesParser.create().parse_override("w=range(16, 80, step=16)")
        >>> distribution_from_override(o, "w")
        IntDistribution(high=64, log=False, low=16, step=16)
    """
    if not override.is_sweep_override():
        return None
    if override.is_choice_sweep():
        # lists/dicts (e.g. layer widths) become their override text: Optuna stores scalars only
        choices = [c if isinstance(c, (str, int, float, bool, type(None))) else _as_text(c)
                   for c in override.sweep_iterator(transformer=Transformer.encode)]
        if not choices:
            raise MLCycleError(f"`{key}`: `choice()` needs at least one value.")
        return CategoricalDistribution(choices)
    value = override.value()
    if override.is_range_sweep():
        start, stop, step = value.start, value.stop, value.step
        if step is None or step == 0 or (stop - start) / step <= 0:
            raise MLCycleError(
                f"`{key}`: range({start}, {stop}, step={step}) is empty (stop is excluded)."
            )
        if value.shuffle:
            return CategoricalDistribution(list(override.sweep_iterator()))
        last = _range_last(start, stop, step)
        if all(isinstance(v, int) for v in (start, stop, step)):
            low, high = (start, int(last)) if step > 0 else (int(last), start)
            return IntDistribution(low, high, step=abs(step))
        low, high = (start, last) if step > 0 else (last, start)
        return FloatDistribution(float(low), float(high), step=float(abs(step)))
    if override.is_interval_sweep():
        start, end = value.start, value.end
        log_scale = "log" in value.tags
        if not start < end:
            raise MLCycleError(f"`{key}`: interval({start}, {end}) needs start < end.")
        if log_scale and start <= 0:
            raise MLCycleError(
                f"`{key}`: a log interval needs positive ends, but got interval({start}, {end})."
            )
        unknown = set(value.tags) - {"log"}
        if unknown:
            raise MLCycleError(f"`{key}`: unknown tag(s) {sorted(unknown)}; allowed: ['log'].")
        if isinstance(start, int) and isinstance(end, int):
            return IntDistribution(start, end, log=log_scale)
        return FloatDistribution(float(start), float(end), log=log_scale)
    raise MLCycleError(f"`{key}`: {override.input_line!r} is not a sweep the sweeper understands.")


def parse_search_space(
    params: Mapping[str, Any] | None, arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], dict[str, str], list[str]]:
    """Split ``hydra.sweeper.params`` and command-line overrides into a search space.

    Returns ``(distributions, prefixes, fixed)``: the Optuna distribution of every swept key, the
    ``+``/``++`` prefix each swept key needs in an override, and the fixed overrides every trial
    gets. The command line wins over ``params`` for the same key. Errors name the key.

    Example:
        >>> space, prefixes, fixed = parse_search_space(
        ...     {"model.optimizer.lr": "tag(log, interval(1e-4, 1e-1))"},
        ...     ["model=mlp", "model.backbone.dropout=0.0,0.2"])
        >>> sorted(space), fixed
        (['model.backbone.dropout', 'model.optimizer.lr'], ['model=mlp'])
    """
    parser = OverridesParser.create()
    lines: list[tuple[str, str]] = []
    for name, value in _flatten(params or {}).items():
        text = value if isinstance(value, str) else OmegaConf.to_yaml(value).strip() \
            if isinstance(value, (DictConfig, ListConfig)) else str(value)
        if isinstance(value, bool):
            text = str(value).lower()
        elif value is None:
            text = "null"
        lines.append((f"hydra.sweeper.params.{name}", f"{name}={text}"))
    lines += [(f"command-line override {arg!r}", arg) for arg in arguments]
    space: dict[str, BaseDistribution] = {}
    prefixes: dict[str, str] = {}
    fixed: dict[str, str] = {}
    for where, line in lines:
        try:
            override = parser.parse_override(line)
        except Exception as err:
            raise MLCycleError(f"`{where}`: cannot parse {line!r}: {err}") from None
        key = override.get_key_element()
        name = override.key_or_group if override.package is None else key
        dist = distribution_from_override(override, where)
        space.pop(name, None)
        fixed.pop(name, None)
        if dist is None:
            fixed[name] = line
        else:
            space[name] = dist
            prefixes[name] = _override_prefix(override)
    return space, prefixes, list(fixed.values())


def _as_text(value: Any) -> str:
    """A (nested) list or dict as Hydra override text: ``[128,64]``, ``{a:1}``."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_as_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_as_text(v)}" for k, v in value.items()) + "}"
    return format_value(value)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params (e.g. from ``+hydra.sweeper.params.model.lr=...``) as dotted keys.

    ``{"model": {"lr": "interval(..)"}}`` becomes ``{"model.lr": "interval(..)"}``.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, DictConfig)):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def format_value(value: Any) -> str:
    """A sampled value as override text (choices were already encoded by Hydra).

    Example:
        >>> [format_value(v) for v in (True, None, 0.001, 3, "relu")]
        ['true', 'null', '0.001', '3', 'relu']
    """
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def failure_budget_exceeded(n_failed: int, n_trials: int, max_failure_rate: float) -> bool:
    """True when more than ``max_failure_rate`` of the planned trials failed.

    Counting against the planned ``n_trials`` (not the trials run so far) means one early failure
    does not end a sweep that allows some.

    Example:
        >>> failure_budget_exceeded(2, 10, 0.25), failure_budget_exceeded(3, 10, 0.25)
        (False, True)
    """
    return n_failed > max_failure_rate * n_trials


def objective_values(returned: Any, n_objectives: int) -> tuple[list[float] | None, str | None]:
    """The job's return value as objective values, or the reason it cannot be one.

    Example:
        >>> objective_values(0.9, 1)
        ([0.9], None)
        >>> objective_values(float("nan"), 1)[1]
        'objective is not finite: [nan]'
    """
    if returned is None:
        return None, "the job returned no objective (set `optimized_metric`)"
    raw = list(returned) if isinstance(returned, (list, tuple, ListConfig)) else [returned]
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        return None, f"objective must be a number or a list of numbers, but got {returned!r}"
    if len(values) != n_objectives:
        return None, f"expected {n_objectives} objective value(s) (one per direction), got {values}"
    if not all(math.isfinite(v) for v in values):
        return None, f"objective is not finite: {values}"
    return values, None


# ------------------------------------------------------------------------------------- sweeper
class SweeperImpl:
    """State and steps of one sweep; see the module docstring for the claim protocol."""

    def __init__(
        self,
        *,
        sampler: Any,
        pruner: Any,
        monitor: str | None,
        direction: Any,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: Mapping[str, Any] | None,
        custom_search_space: str | None = None,
        step_unit: str = "global_step",
    ) -> None:
        from lightning_mlcycle.tuning.optuna_pruning import STEP_UNITS

        directions = list(direction) if isinstance(direction, (list, tuple, ListConfig)) \
            else [direction]
        if not directions or any(d not in _DIRECTIONS for d in directions):
            raise MLCycleError(
                f"`hydra.sweeper.direction` must be one of {list(_DIRECTIONS)} or a list of them, "
                f"but got {direction!r}."
            )
        for name, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MLCycleError(
                    f"`hydra.sweeper.{name}` must be a positive integer, but got {value!r}."
                )
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise MLCycleError(
                f"`hydra.sweeper.max_failure_rate` must be in [0, 1], but got {max_failure_rate!r}."
            )
        if step_unit not in STEP_UNITS:
            raise MLCycleError(
                f"`hydra.sweeper.step_unit` must be one of {list(STEP_UNITS)}, but got "
                f"{step_unit!r}."
            )
        if not isinstance(study_name, str) or not study_name:
            raise MLCycleError(f"`hydra.sweeper.study_name` must be a name, but got {study_name!r}.")
        if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise MLCycleError(
                "`hydra.sweeper.sampler` must build an optuna.samplers sampler (`_target_`), "
                f"but got {type(sampler).__name__}."
            )
        if pruner is not None and not isinstance(pruner, optuna.pruners.BasePruner):
            raise MLCycleError(
                "`hydra.sweeper.pruner` must build an optuna.pruners pruner (`_target_`), "
                f"but got {type(pruner).__name__}."
            )
        self.hook: Callable[..., Any] | None = None
        if custom_search_space:
            from hydra.utils import get_method

            try:
                self.hook = get_method(custom_search_space)
            except Exception as err:
                raise MLCycleError(
                    f"`hydra.sweeper.custom_search_space`: cannot import {custom_search_space!r}: "
                    f"{err}"
                ) from None
        self.sampler = sampler if sampler is not None else optuna.samplers.TPESampler()
        self.pruner = pruner
        self.monitor = monitor
        self.step_unit = step_unit
        self.directions = [str(d) for d in directions]
        self.study_name = study_name
        self.storage_url = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = float(max_failure_rate)
        self.params = params
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.exhausted = False

    # -- hydra wiring
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        """Hide the storage password from everything Hydra saves, then build the launcher."""
        self.hydra_context = hydra_context
        self.config = config
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        pruner_node = OmegaConf.select(config, "hydra.sweeper.pruner")
        self.pruner_cfg = OmegaConf.to_container(pruner_node, resolve=True) \
            if isinstance(pruner_node, DictConfig) else None
        self.storage_url = self.storage_url or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        self.masked_url = mask_url(self.storage_url)
        secret = url_password(self.storage_url)
        if secret:
            # jobs (in-process, joblib workers, DDP children) inherit the secret through the
            # environment only; every config Hydra saves holds the masked URL
            os.environ[PASSWORD_ENV] = secret
        with open_dict(config):
            config.hydra.sweeper.storage = self.masked_url
            config.hydra.overrides.hydra = [
                f"hydra.sweeper.storage={_quote(self.masked_url)}"
                if str(o).lstrip("+").startswith("hydra.sweeper.storage=") else o
                for o in config.hydra.overrides.hydra
            ]
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- validation before any trial
    def _check_space(self, space: dict[str, BaseDistribution], prefixes: dict[str, str],
                     fixed: list[str]) -> None:
        if not space and self.hook is None:
            raise MLCycleError(
                "`hydra.sweeper.params` is empty and no sweep is given on the command line: "
                "nothing to search (e.g. hydra.sweeper.params.model.optimizer.lr="
                "'tag(log, interval(1e-4, 1e-1))')."
            )
        loader = self.hydra_context.config_loader

        def sample(name: str, dist: BaseDistribution) -> str:
            value = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
            return f"{prefixes[name]}{name}={format_value(value)}"

        def compose(overrides: list[str]) -> DictConfig:
            return loader.load_sweep_config(self.config, overrides)

        try:
            composed = compose(fixed + [sample(n, d) for n, d in space.items()])
        except Exception as err:
            for name, dist in space.items():
                try:
                    compose(fixed + [sample(name, dist)])
                except Exception as one:
                    raise MLCycleError(
                        f"Swept parameter `{name}` (hydra.sweeper.params or command line) is not "
                        f"a key of the config: {one}"
                    ) from None
            raise MLCycleError(f"The sweep's fixed overrides {fixed} do not compose: {err}") from None
        for name in space:
            if not prefixes[name] and "=" not in name and OmegaConf.select(
                    composed, name, default="__missing__") == "__missing__":
                raise MLCycleError(
                    f"Swept parameter `{name}` (hydra.sweeper.params or command line) is not a "
                    f"key of the config; write '+{name}' to add a new key."
                )
        metric = composed.get("optimized_metric", "__absent__")
        if metric is None:
            raise MLCycleError(
                "`optimized_metric` is null: a sweep needs the summary key(s) to optimize, "
                "e.g. optimized_metric=fit/best_val."
            )
        if metric != "__absent__":
            names = [metric] if isinstance(metric, str) else list(metric)
            if len(names) != len(self.directions):
                raise MLCycleError(
                    f"`optimized_metric` has {len(names)} metric(s) {names} but "
                    f"`hydra.sweeper.direction` has {len(self.directions)} {self.directions}."
                )
        self.metric_names = [metric] if isinstance(metric, str) else \
            list(metric) if metric not in (None, "__absent__") else \
            [f"objective_{i}" for i in range(len(self.directions))]

    # -- study and claims
    def _open_study(self) -> optuna.Study:
        storage = open_storage(self.storage_url, key="hydra.sweeper.storage")
        study_kwargs = {"study_name": self.study_name, "storage": storage, "sampler": self.sampler,
                        "pruner": self.pruner or optuna.pruners.NopPruner()}
        with storage_lock(self.storage_url):
            created = False
            try:
                study = optuna.create_study(directions=self.directions, **study_kwargs)
                created = True
                log.info("Created study %r in %s", self.study_name, self.masked_url)
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(**study_kwargs)
                found = [d.name.lower() for d in study.directions]
                if found != self.directions:
                    raise MLCycleError(
                        f"`hydra.sweeper.direction` {self.directions} differs from the existing "
                        f"study {self.study_name!r} ({found}); use another `study_name`."
                    ) from None
                log.info("Resuming study %r in %s", self.study_name, self.masked_url)
            # the study's own storage object (Optuna wraps RDB storages in a cache): every claim
            # and state change goes through it so the study never reads a stale copy
            self.storage = study._storage  # noqa: SLF001 - Study exposes no public storage
            self.study_id = self.storage.get_study_id_from_name(self.study_name)
            self._top_up(study, created)
            self._requeue_orphans(study)
        return study

    def _top_up(self, study: optuna.Study, created: bool) -> None:
        """Enqueue WAITING trials so the study holds ``n_trials`` (creator or larger n_trials)."""
        planned = int(study.user_attrs.get(PLANNED_ATTR, 0))
        if planned == 0 and not created and self._is_server():
            # another worker created the study and is enqueuing: wait until it is done (files
            # need no wait: creation and enqueuing happen under one file lock)
            deadline = time.monotonic() + 60
            while planned == 0 and time.monotonic() < deadline:
                time.sleep(0.5)
                planned = int(study.user_attrs.get(PLANNED_ATTR, 0))
        existing = len(study.get_trials(deepcopy=False))
        for _ in range(self.n_trials - existing):
            study.enqueue_trial({}, skip_if_exists=False)
        if self.n_trials > planned:
            study.set_user_attr(PLANNED_ATTR, self.n_trials)

    def _is_server(self) -> bool:
        return local_file(self.storage_url) is None

    def _requeue_orphans(self, study: optuna.Study) -> None:
        """RUNNING trials started on this host by a process that is gone go back to WAITING."""
        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(t.system_attrs.get(OWNER_ATTR, ""))
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _alive(int(pid)):
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                self.study_id, t.number)
            if self.storage.set_trial_state_values(trial_id, TrialState.WAITING):
                log.info("Trial %d was left RUNNING by a stopped sweep (%s): queued again",
                         t.number, owner)

    def _claim(self, study: optuna.Study, limit: int) -> list[optuna.trial.Trial]:
        """Atomically take up to ``limit`` WAITING trials numbered below ``n_trials``."""
        claimed: list[optuna.trial.Trial] = []
        with storage_lock(self.storage_url):
            waiting = sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                             key=lambda t: t.number)
            for t in waiting:
                if len(claimed) >= limit or t.number >= self.n_trials:
                    break
                trial_id = self.storage.get_trial_id_from_study_id_trial_number(
                    self.study_id, t.number)
                if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    continue  # another worker took it first
                self.storage.set_trial_system_attr(trial_id, OWNER_ATTR, self.owner)
                trial = optuna.trial.Trial(study, trial_id)
                study.sampler.before_trial(study, self.storage.get_trial(trial_id))
                claimed.append(trial)
        return claimed

    def _overrides(self, trial: optuna.trial.Trial, space: dict[str, BaseDistribution],
                   prefixes: dict[str, str], fixed: list[str]) -> list[str]:
        for name, dist in space.items():
            trial._suggest(name, dist)  # noqa: SLF001 - Trial has no public suggest(distribution)
        extra: dict[str, Any] = {}
        if self.hook is not None:
            extra = dict(self.hook(self.config, trial) or {})
        params = dict(trial.params)
        overrides = list(fixed)
        overrides += [f"{prefixes.get(k, '')}{k}={format_value(v)}" for k, v in params.items()]
        overrides += [f"{k}={format_value(v)}" for k, v in extra.items()]
        monitor = self.monitor if self.pruner is not None and len(self.directions) == 1 else None
        handle = SweepTrial(storage=self.masked_url, study_name=self.study_name,
                            number=trial.number, monitor=monitor,
                            pruner=self.pruner_cfg if monitor else None,
                            step_unit=self.step_unit)
        overrides.append(f"++hydra.job.env_set.{TRIAL_ENV}={_quote(handle.encode())}")
        # a literal password in a config file must not reach the job's saved hydra.yaml either
        overrides.append(f"hydra.sweeper.storage={_quote(self.masked_url)}")
        return overrides

    # -- the loop
    def sweep(self, arguments: list[str]) -> list[Any]:
        """Validate, open the study, then claim-launch-tell until no trial is left."""
        from hydra_plugins.mlcycle_optuna_sweeper import _results

        space, prefixes, fixed = parse_search_space(self.params, arguments)
        self._check_space(space, prefixes, fixed)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        study = self._open_study()
        log.info("Sweep: %d trials of study %r, %d at a time, directions %s, storage %s",
                 self.n_trials, self.study_name, self.n_jobs, self.directions, self.masked_url)
        returns: list[Any] = []
        stopped: str | None = None
        while True:
            trials = [] if self.exhausted else self._claim(study, self.n_jobs)
            if not trials:
                if self.exhausted:
                    log.warning("The sampler has searched its whole space: no more trials are "
                                "started (n_trials=%d is more than the space holds).", self.n_trials)
                break
            try:
                batch = [self._overrides(t, space, prefixes, fixed) for t in trials]
                for group, overrides in _contiguous(trials, batch):
                    rets = self.launcher.launch(overrides, initial_job_idx=group[0].number)
                    returns.extend(rets)
                    for trial, ret in zip(group, rets, strict=True):
                        self._tell(study, trial, ret)
            except BaseException:
                self._release(trials)
                raise
            n_failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
            if failure_budget_exceeded(n_failed, self.n_trials, self.max_failure_rate):
                stopped = (f"{n_failed} of {self.n_trials} trials failed, more than "
                           f"max_failure_rate={self.max_failure_rate}")
                break
        _results.write_all(self, study)
        _results.print_summary(self, study, stopped)
        if stopped:
            raise MLCycleError(f"Sweep stopped: {stopped}. See "
                               f"{self.sweep_dir / 'optimization_results.yaml'}.")
        return returns

    def _release(self, trials: Sequence[optuna.trial.Trial]) -> None:
        """Put claimed trials that did not finish back to WAITING (interrupted sweep)."""
        for trial in trials:
            frozen = self.storage.get_trial(trial._trial_id)  # noqa: SLF001
            if frozen.state == TrialState.RUNNING:
                self.storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)  # noqa: SLF001

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: Any) -> None:
        from hydra_plugins.mlcycle_optuna_sweeper import _results

        reason: str | None = None
        values: list[float] | None = None
        state = TrialState.COMPLETE
        if ret.status == JobStatus.FAILED:
            # read the exception without `ret.return_value`, which logs every failure as an
            # "Error executing job" (a pruned trial is no error)
            err = ret._return_value  # noqa: SLF001
            if isinstance(err, optuna.TrialPruned):
                state = TrialState.PRUNED
            else:  # the job raised: FAIL with the reason, the sweep goes on
                reason = scrub(f"{type(err).__name__}: {err}", self.storage_url)
        else:
            values, reason = objective_values(ret.return_value, len(self.directions))
        if reason is not None:
            state = TrialState.FAIL
            trial.set_user_attr(REASON_ATTR, reason[:2000])
            log.warning("Trial %d failed: %s", trial.number, reason)
        try:
            study.tell(trial, values=values if state == TrialState.COMPLETE else None,
                       state=state, skip_if_finished=True)
        except RuntimeError as err:
            # grid-like samplers (GridSampler, BruteForceSampler) call `study.stop()` once the
            # space is exhausted, which Optuna only allows inside `optimize`; the state is stored
            # before that (Optuna sets it in a `finally`), so record it and claim no more trials
            if "Study.stop" not in str(err):
                raise
            self.exhausted = True
        frozen = self.storage.get_trial(trial._trial_id)  # noqa: SLF001
        if state == TrialState.COMPLETE:
            log.info("Trial %d: %s = %s", trial.number, self.metric_names, values)
        elif state == TrialState.PRUNED:
            log.info("Trial %d pruned", trial.number)
        _results.log_trial_hparams(self, frozen)


def _contiguous(trials: Sequence[Any], batch: Sequence[Any]) -> list[tuple[list[Any], list[Any]]]:
    """Split claimed trials into runs of consecutive numbers (one launch each).

    So every job's number (and sub-folder) is its trial number.
    """
    groups: list[tuple[list[Any], list[Any]]] = []
    for trial, overrides in zip(trials, batch, strict=True):
        if groups and groups[-1][0][-1].number + 1 == trial.number:
            groups[-1][0].append(trial)
            groups[-1][1].append(overrides)
        else:
            groups.append(([trial], [overrides]))
    return groups


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
