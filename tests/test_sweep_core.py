"""The sweeper's pure parts, its validation, and OptunaPruning in a plain Optuna loop (fast)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
from hydra.core.global_hydra import GlobalHydra
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.mlcycle_optuna_sweeper._impl import (
    SweeperImpl,
    failure_budget_exceeded,
    objective_values,
    parse_search_space,
)
from lightning_mlcycle import ClassificationModule, DigitsDataModule, MLCycleError, OptunaPruning
from lightning_mlcycle.models import MLP
from lightning_mlcycle.tuning._storage import (
    mask_url,
    open_storage,
    scrub,
    storage_lock,
    with_env_password,
)
from lightning_mlcycle.tuning._sweep_env import TRIAL_ENV, SweepTrial
from lightning_mlcycle.tuning.optuna_pruning import PruningOutcome, report_and_decide

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a=choice(1, 2, 3)", CategoricalDistribution([1, 2, 3])),
        ("a=relu,gelu", CategoricalDistribution(["relu", "gelu"])),
        ("a=choice([64], [128, 64])", CategoricalDistribution(["[64]", "[128,64]"])),
        ("a=range(16, 80, step=16)", IntDistribution(16, 64, step=16)),
        ("a=range(0.0, 1.0, step=0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("a=int(interval(0, 5))", IntDistribution(0, 5)),
        ("a=interval(0, 5)", FloatDistribution(0.0, 5.0)),  # Hydra reads interval ends as floats
        ("a=interval(0.0, 0.5)", FloatDistribution(0.0, 0.5)),
        ("a=tag(log, interval(1e-4, 1e-1))", FloatDistribution(1e-4, 1e-1, log=True)),
        ("a=tag(log, int(interval(1, 1024)))", IntDistribution(1, 1024, log=True)),
    ],
)
def test_grammar_to_distribution(line, expected):
    space, prefixes, fixed = parse_search_space(None, [line])
    assert space == {"a": expected} and prefixes == {"a": ""} and fixed == []


def test_params_and_command_line_merge():
    space, prefixes, fixed = parse_search_space(
        {"model.optimizer.lr": "interval(0.1, 0.2)", "seed": 3, "+new.key": "choice(1,2)"},
        ["model=mlp", "model.optimizer.lr=tag(log, interval(1e-3, 1e-1))"],
    )
    assert space["model.optimizer.lr"].log  # the command line wins
    assert prefixes["new.key"] == "+"
    assert sorted(fixed) == ["model=mlp", "seed=3"]


@pytest.mark.parametrize(
    ("params", "args", "match"),
    [
        ({"model.lr": "interval(0.1"}, [], r"`hydra.sweeper.params.model.lr`: cannot parse"),
        ({}, ["x=choice()"], r"command-line override 'x=choice\(\)'"),
        ({"a": "interval(2, 1)"}, [], r"`hydra.sweeper.params.a`: interval\(2.0, 1.0\) needs start < end"),
        ({"a": "tag(log, interval(0, 1))"}, [], r"log interval needs positive ends"),
        ({"a": "range(5, 1, step=1)"}, [], r"range\(5, 1, step=1\) is empty"),
        ({"a": "tag(cube, interval(1, 2))"}, [], r"unknown tag\(s\) \['cube'\]"),
    ],
)
def test_bad_grammar_names_the_key(params, args, match):
    with pytest.raises(MLCycleError, match=match):
        parse_search_space(params, args)


# ------------------------------------------------------------------------------ decisions
def test_failure_budget_and_objective_values():
    assert not failure_budget_exceeded(0, 4, 0.0)
    assert failure_budget_exceeded(1, 4, 0.0)
    assert not failure_budget_exceeded(2, 4, 0.5) and failure_budget_exceeded(3, 4, 0.5)
    assert objective_values([0.5, 10], 2) == ([0.5, 10.0], None)
    assert "not finite" in objective_values(float("inf"), 1)[1]
    assert "expected 2 objective" in objective_values(0.5, 2)[1]
    assert "no objective" in objective_values(None, 1)[1]
    assert "must be a number" in objective_values("abc", 1)[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"direction": "up"}, r"`hydra.sweeper.direction` must be one of \['minimize', 'maximize'\]"),
        ({"n_trials": 0}, r"`hydra.sweeper.n_trials` must be a positive integer, but got 0"),
        ({"n_jobs": 1.5}, r"`hydra.sweeper.n_jobs` must be a positive integer"),
        ({"max_failure_rate": 1.5}, r"`hydra.sweeper.max_failure_rate` must be in \[0, 1\]"),
        ({"study_name": ""}, r"`hydra.sweeper.study_name` must be a name"),
        ({"sampler": "tpe"}, r"`hydra.sweeper.sampler` must build an optuna.samplers sampler"),
        ({"pruner": 3}, r"`hydra.sweeper.pruner` must build an optuna.pruners pruner"),
        ({"custom_search_space": "nowhere.fn"}, r"`hydra.sweeper.custom_search_space`: cannot import"),
        ({"step_unit": "batches"}, r"`hydra.sweeper.step_unit` must be one of \['global_step', "
                                   r"'samples', 'epoch'\], but got 'batches'"),
    ],
)
def test_sweeper_arguments_are_validated(kwargs, match):
    base = dict(sampler=None, pruner=None, monitor=None, direction="minimize", study_name="s",
                storage=None, n_trials=2, n_jobs=1, max_failure_rate=0.0, params=None)
    with pytest.raises(MLCycleError, match=match):
        SweeperImpl(**{**base, **kwargs})


# ------------------------------------------------------------------------------ storage
def test_password_masked_and_read_from_env(monkeypatch):
    url = "postgresql://bob:hunter2@db.example.org:5432/optuna"
    assert mask_url(url) == "postgresql://bob:***@db.example.org:5432/optuna"
    assert scrub("failed for postgresql://bob:hunter2@x", url) == "failed for postgresql://bob:***@x"
    monkeypatch.setenv("MLCYCLE_OPTUNA_STORAGE_PASSWORD", "fromenv")
    assert with_env_password("postgresql://bob@h/db") == "postgresql://bob:fromenv@h/db"
    assert with_env_password("postgresql://bob:***@h/db") == "postgresql://bob:fromenv@h/db"


def test_unreachable_storage_names_key_and_hides_password():
    # port 1 on localhost refuses at once: the error must come fast, name the key, hide the secret
    with pytest.raises(MLCycleError, match=r"`hydra.sweeper.storage`: cannot open") as err:
        open_storage("postgresql://bob:hunter2@127.0.0.1:1/optuna", key="hydra.sweeper.storage")
    assert "hunter2" not in str(err.value) and "bob:***@" in str(err.value)


def test_claim_lock_leaves_optunas_journal_lock_free(tmp_path):
    """Our claim lock must not be Optuna's journal lock file: sharing the name made every journal
    write inside a claim wait 30 s (Optuna's grace period) and then delete our lock."""
    from optuna.storages.journal import JournalFileSymlinkLock

    url = f"journal:{tmp_path / 'study.log'}"
    storage = open_storage(url)
    with storage_lock(url):
        optuna_lock = JournalFileSymlinkLock(str(tmp_path / "study.log"), grace_period=None)
        # Optuna's lock is one os.symlink; it raises FileExistsError when the name is taken
        os.symlink(tmp_path / "study.log", optuna_lock._lock_file)
        optuna_lock.release()
        optuna.create_study(study_name="s", storage=storage).enqueue_trial({})
    assert (tmp_path / "study.log.claim.lock").exists()
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 1


def test_sweep_trial_handle_roundtrip_and_open(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.enqueue_trial({})
    handle = SweepTrial(url, "s", 0, "val/acc", {"_target_": "optuna.pruners.MedianPruner"},
                        step_unit="samples")
    monkeypatch.setenv(TRIAL_ENV, handle.encode())
    cb = OptunaPruning.from_environment()
    assert cb is not None and cb.monitor == "val/acc" and cb.trial is None
    assert cb.step_unit == "samples"
    trial = handle.open()
    assert trial.number == 0 and isinstance(trial.study.pruner, optuna.pruners.MedianPruner)
    monkeypatch.setenv(TRIAL_ENV, "{not json")
    with pytest.raises(MLCycleError, match=r"\$MLCYCLE_OPTUNA_TRIAL is not a valid"):
        OptunaPruning.from_environment()


# ------------------------------------------------------------------------------ callback
def test_callback_arguments_are_validated():
    with pytest.raises(ValueError, match=r"Expected argument `trial` to be an optuna.trial.Trial"):
        OptunaPruning(None)
    with pytest.raises(TypeError, match=r"Expected argument `trial` to be an optuna.trial.Trial, but got str"):
        OptunaPruning("trial")
    study = optuna.create_study()
    with pytest.raises(ValueError, match=r"Expected argument `monitor` to be a metric name"):
        OptunaPruning(study.ask(), monitor="")
    multi = optuna.create_study(directions=["maximize", "minimize"])
    with pytest.raises(ValueError, match=r"multi-objective study"):
        OptunaPruning(multi.ask(), monitor="val/acc")
    with pytest.raises(ValueError, match=r"Expected argument `step_unit` to be one of "
                                         r"\['global_step', 'samples', 'epoch'\], but got 'batch'"):
        OptunaPruning(study.ask(), monitor="val/acc", step_unit="batch")


def test_report_and_decide_threshold():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    t = study.ask()
    assert report_and_decide(t, 0.5, 0) is PruningOutcome.CONTINUE
    assert report_and_decide(t, 0.5, 0) is PruningOutcome.CONTINUE  # repeated step: kept, no error
    assert report_and_decide(t, 3.0, 5) is PruningOutcome.PRUNE
    assert t.study.trials[0].intermediate_values == {0: 0.5, 5: 3.0}


def _objective(trial: optuna.Trial, val_check_interval: float = 1.0, step_unit: str = "global_step",
               batch_size: int = 32, limit_train_batches: int | float = 4,
               max_epochs: int = 2) -> float:
    model = ClassificationModule(MLP(10, (1, 8, 8), (16,)), num_classes=10)
    trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         limit_train_batches=limit_train_batches, limit_val_batches=2,
                         val_check_interval=val_check_interval,
                         callbacks=[OptunaPruning(trial, monitor="val/acc", step_unit=step_unit)])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=batch_size))
    trial.set_user_attr("epochs", trainer.current_epoch)
    return float(trainer.callback_metrics["val/acc"])


def test_pruned_trial_is_pruned_and_reports_every_validation():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: _objective(t, val_check_interval=0.5), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    # two validations per epoch x 2 epochs, indexed by global step (2, 4, 6, 8)
    assert sorted(study.trials[0].intermediate_values) == [2, 4, 6, 8]
    pruning = optuna.create_study(direction="maximize",
                                  pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    pruning.optimize(lambda t: _objective(t), n_trials=1)
    trial = pruning.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [4]  # stopped after the first validation


def test_samples_unit_compares_batch_sizes_at_epoch_ends():
    """Batch 48 and 128 (neither divides the train split) report at the same steps every epoch,
    the global step would not; a mid-epoch validation still gets its own step."""
    study = optuna.create_study(direction="maximize")
    for bs in (48, 128):
        study.optimize(lambda t, bs=bs: _objective(t, step_unit="samples", batch_size=bs,
                                                   limit_train_batches=1.0), n_trials=1)
    dm = DigitsDataModule()
    dm.setup("fit")
    n_train = len(dm.train_dataloader().dataset)
    assert [sorted(t.intermediate_values) for t in study.trials] == [[n_train, 2 * n_train]] * 2
    study.optimize(lambda t: _objective(t, val_check_interval=0.5, step_unit="samples",
                                        limit_train_batches=4, max_epochs=1), n_trials=1)
    assert sorted(study.trials[-1].intermediate_values) == [64, 128]  # 2 and 4 batches of 32


def test_epoch_unit_reports_epochs_and_rejects_several_validations_per_epoch():
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: _objective(t, step_unit="epoch"), n_trials=1)
    assert sorted(study.trials[0].intermediate_values) == [0, 1]
    with pytest.raises(MLCycleError, match=r"`step_unit`='epoch' reports once per epoch, but the "
                                           r"Trainer validates every 2 of 4 batches"):
        _objective(study.ask(), val_check_interval=0.5, step_unit="epoch")


def test_samples_unit_keeps_counting_after_resume(tmp_path):
    """Stop after epoch 1, resume from its checkpoint: epoch 2 reports at 2x the samples."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    study = optuna.create_study(direction="maximize")
    trial = study.ask()

    def fit(max_epochs: int, ckpt_path: str | None) -> OptunaPruning:
        cb = OptunaPruning(trial, monitor="val/acc", step_unit="samples")
        trainer = pl.Trainer(max_epochs=max_epochs, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_train_batches=3,
                             limit_val_batches=1, default_root_dir=tmp_path,
                             callbacks=[cb, ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        model = ClassificationModule(MLP(10, (1, 8, 8), (16,)), num_classes=10)
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=16), ckpt_path=ckpt_path)
        return cb

    assert fit(1, None).samples_seen == 48
    resumed = fit(2, str(tmp_path / "last.ckpt"))
    assert resumed.samples_seen == 96
    assert sorted(study.trials[0].intermediate_values) == [48, 96]


def test_callback_state_roundtrip():
    study = optuna.create_study()
    cb = OptunaPruning(study.ask(), monitor="val/loss")
    cb.pruned_step, cb.last_step, cb.last_value, cb.samples_seen = 7, 7, 0.3, 224
    other = OptunaPruning(study.ask(), monitor="val/loss")
    other.load_state_dict(cb.state_dict())
    assert (other.pruned_step, other.last_step, other.last_value) == (7, 7, 0.3)
    assert other.samples_seen == 224
    other.load_state_dict({})  # checkpoints from before a key existed still load
    assert other.pruned_step is None
    assert cb.state_key == other.state_key != OptunaPruning(study.ask(), monitor="val/acc").state_key


# ------------------------------------------------------------------------------ bad input, in process
def _run_cli(monkeypatch, tmp_path: Path, *args: str) -> None:
    from lightning_mlcycle.cli.main import _app

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["mlcycle", "-m", "hparams_search=digits_optuna",
                                      f"hydra.sweep.dir={tmp_path / 'sweep'}", *args])
    try:
        _app()
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["model.backbone.widht=choice(1,2)"], "Swept parameter `model.backbone.widht`"),
        (["+hydra.sweeper.params.model.optimizer.mom='choice(1,2)'"],
         "Swept parameter `model.optimizer.mom`"),
        (["hydra.sweeper.params=null"], "`hydra.sweeper.params` is empty"),
        (["+hydra.sweeper.params.seed='interval(0.1'"], r"`hydra.sweeper.params.seed`: cannot parse"),
        (["hydra.sweeper.storage='postgresql://bob:hunter2@127.0.0.1:1/optuna'"],
         r"`hydra.sweeper.storage`: cannot open the Optuna storage 'postgresql://bob:\*\*\*@"),
        (["optimized_metric=null"], "`optimized_metric` is null"),
    ],
)
def test_bad_input_fails_before_any_trial(monkeypatch, tmp_path, capsys, args, match):
    import re

    with pytest.raises(SystemExit):
        _run_cli(monkeypatch, tmp_path, *args)
    err = capsys.readouterr().err
    assert re.search(match, err), err[-2000:]
    assert "hunter2" not in err
    sweep = tmp_path / "sweep"
    assert not sweep.exists() or not any(p.is_dir() and p.name.isdigit() for p in sweep.iterdir())


# ------------------------------------------------------------------------------ conditional params
def conditional_space(cfg, trial):
    """A custom search-space hook: the width is searched only for the MLP."""
    arch = trial.suggest_categorical("model", ["mlp", "cnn"])
    if arch == "mlp":
        trial.suggest_int("model.backbone.hidden.0", 16, 64, step=16)
    else:
        trial.suggest_int("model.backbone.width", 8, 32, step=8)
    return {"trainer.max_epochs": 3}


def test_custom_search_space_hook_builds_conditional_overrides(tmp_path):
    from omegaconf import OmegaConf

    impl = SweeperImpl(sampler=optuna.samplers.RandomSampler(seed=0), pruner=None, monitor=None,
                       direction="maximize", study_name="s", storage=None, n_trials=6, n_jobs=1,
                       max_failure_rate=0.0, params=None,
                       custom_search_space="test_sweep_core.conditional_space")
    impl.config = OmegaConf.create({})
    impl.masked_url = f"sqlite:///{tmp_path}/o.db"
    space, prefixes, fixed = parse_search_space({"model.optimizer.lr": "interval(0.001, 0.01)"},
                                                ["data.batch_size=32"])
    study = optuna.create_study(sampler=impl.sampler, direction="maximize")
    seen = set()
    for _ in range(6):
        trial = study.ask()
        overrides = impl._overrides(trial, space, prefixes, fixed)
        assert overrides[0] == "data.batch_size=32" and "trainer.max_epochs=3" in overrides
        arch = trial.params["model"]
        keys = {o.split("=", 1)[0] for o in overrides}
        assert ("model.backbone.hidden.0" in keys) == (arch == "mlp")
        assert ("model.backbone.width" in keys) == (arch == "cnn")
        handle = SweepTrial.decode(overrides[-2].split("=", 1)[1].strip("'").replace("\\'", "'"))
        assert handle.number == trial.number and handle.monitor is None  # no pruner: no callback
        seen.add(arch)
        study.tell(trial, 0.5)
    assert seen == {"mlp", "cnn"}
