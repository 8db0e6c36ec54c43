"""DDP from the Hydra app: worker command lines, rank detection, and real 2-process CPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from lightning_mlcycle._utils import env_rank_zero
from lightning_mlcycle.cli._ddp import (
    JOB_ENV,
    config_flags,
    is_relaunched_worker,
    prepare_argv,
    quiet_rank_argv,
    worker_argv,
)
from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.cli.stages.distributed import RANK_DONE, leave_distributed_stage

#: a tiny DDP run: MLP on digits, few batches per rank, one thread per process
TINY = [
    "trainer=ddp",
    "model=mlp",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=6",
    "+trainer.limit_val_batches=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "num_threads=1",
]


# -- pure parts -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "1", "LOCAL_RANK": "1"}, False),
        ({"LOCAL_RANK": "1"}, False),  # Lightning's launcher sets no RANK
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # first process of the second machine
        ({"LOCAL_RANK": "0", "GROUP_RANK": "2"}, False),  # torchrun's node index
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, False),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True),
        ({"RANK": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "3"}, True),  # RANK wins
        ({"LOCAL_RANK": "x"}, True),  # garbage is not a rank
    ],
)
def test_env_rank_zero(env, expected):
    assert env_rank_zero(env) is expected


def test_config_flags_keep_config_dir_and_name():
    argv = ["mlcycle", "-m", "-cd", "/c", "--config-name", "exp", "--config-path=p", "model=mlp", "-m"]
    assert config_flags(argv) == ["-cd", "/c", "--config-name", "exp", "--config-path=p"]


def test_relaunched_worker_runs_its_job_as_a_single_run_in_the_job_folder():
    job = {"overrides": ["trainer=ddp", "model.optimizer.lr=0.01"], "output_dir": "/runs/it's 3",
           "flags": ["-cd", "/c"], "chdir": False}
    env = {JOB_ENV: json.dumps(job), "LOCAL_RANK": "1"}
    # what Lightning hands the worker: the sweep's own command line plus its run-dir pattern
    lightning_argv = ["/bin/mlcycle", "-m", "hparams_search=x", "hydra.run.dir=\"outputs/x\""]
    argv = prepare_argv(lightning_argv, env)
    assert argv[:3] == ["/bin/mlcycle", "-cd", "/c"]
    assert "-m" not in argv and "hparams_search=x" not in argv
    assert "model.optimizer.lr=0.01" in argv and "hydra.mode=RUN" in argv
    assert "hydra.run.dir='/runs/it\\'s 3'" in argv  # quoted: any path survives
    assert "hydra.output_subdir=null" in argv and "hydra/job_logging=stdout" in argv
    assert argv == worker_argv("/bin/mlcycle", job, 1)
    # the launching process itself (LOCAL_RANK=0 after Lightning's launch) is left alone
    assert prepare_argv(lightning_argv, {**env, "LOCAL_RANK": "0"}) == lightning_argv
    assert not is_relaunched_worker({"LOCAL_RANK": "1"})  # torchrun worker: no job handle


def test_externally_started_ranks_write_no_hydra_files():
    assert prepare_argv(["mlcycle", "a=1"], {"RANK": "1"}) == [
        "mlcycle", "a=1", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    assert prepare_argv(["mlcycle", "a=1"], {"RANK": "0"}) == ["mlcycle", "a=1"]
    # the user's own choice is kept
    assert quiet_rank_argv(["mlcycle", "hydra.output_subdir=.r1", "hydra/job_logging=none"]) == [
        "mlcycle", "hydra.output_subdir=.r1", "hydra/job_logging=none"]


def test_leave_distributed_closes_the_group(tmp_path):
    ctx = RunContext(cfg=None, run_dir=tmp_path)  # type: ignore[arg-type]
    leave_distributed_stage(ctx)  # not distributed: nothing to do
    assert "distributed/world_size" not in ctx.summary
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        leave_distributed_stage(ctx)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
            pytest.fail("the stage left the process group open")
    assert ctx.summary["distributed/world_size"] == 1
    assert RANK_DONE not in ctx.extras  # rank 0 goes on


# -- real 2-process runs ----------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT", JOB_ENV)}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _mlcycle(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "lightning_mlcycle.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True, env=_env(), timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"mlcycle failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def _writer_pids(folder: Path) -> set[str]:
    """The processes that wrote TensorBoard event files in ``folder`` (the name ends in pid.n)."""
    return {p.name.split(".")[-2] for p in folder.glob("events.out.tfevents.*")}


@pytest.mark.slow
def test_ddp_run_of_mlcycle_writes_everything_once(tmp_path):
    """All default callbacks and stages, plus the throughput tuner, on 2 CPU processes (gloo)."""
    run = tmp_path / "run"
    proc = _mlcycle(tmp_path, *TINY, "tuning.throughput=true", f"hydra.run.dir={run}")
    out = proc.stdout + proc.stderr
    assert "Starting with 2 processes" in out or "MEMBER: 2/2" in out
    # nothing outside the run folder: the worker did not make a Hydra folder of its own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    summary = json.loads((run / "summary.json").read_text())["summary"]
    assert summary["distributed/world_size"] == 2
    assert 0.0 <= summary["test/acc"] <= 1.0
    # one config, one log file, one diagnosis, one export, one TensorBoard run
    assert (run / ".hydra" / "config.yaml").is_file()
    assert [p.name for p in run.glob("*.log")] == ["main.log"]
    assert (run / "diagnosis.json").is_file() and "diagnosis/fit_state" in summary
    assert (run / "export" / "model.onnx").is_file()
    assert len(_writer_pids(run / "tensorboard")) == 1  # rank 0 only
    # the ranks agreed on the tuner's choice and it reached TensorBoard once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    assert "tuning/throughput_speedup" in acc.Tags()["scalars"]
    assert len(acc.Scalars("tuning/throughput_speedup")) == 1
    assert any(t.startswith("val/acc") for t in acc.Tags()["scalars"])
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and len(ckpts) == 2  # best + last, written once


@pytest.mark.slow
def test_ddp_trials_in_a_sweep_report_and_are_pruned(tmp_path):
    """Two DDP trials in one ``mlcycle -m`` process: the tiny-lr one is pruned, the other completes,
    each in its own folder, and the sweep survives both."""
    import optuna

    from lightning_mlcycle.tuning._storage import open_storage

    sweep = tmp_path / "sweep"
    args = [
        "-m", "hparams_search=digits_optuna", f"hydra.sweep.dir={sweep}", *TINY,
        "callbacks=model_checkpoint", "hydra.sweeper.params=null",
        "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
        "~hydra.sweeper.sampler.n_startup_trials",
        "hydra.sweeper.pruner=null",  # replace the config's pruner node (not merge into it)
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.3}",
        "hydra.sweeper.n_trials=2",
        "model.optimizer.lr=choice(1e-6,1e-2)",
    ]
    _mlcycle(tmp_path, *args)
    study = optuna.load_study(study_name="digits_optuna", storage=open_storage(f"sqlite:///{sweep / 'optuna.db'}"))
    got = {t.params["model.optimizer.lr"]: t for t in study.trials}
    assert got[1e-6].state.name == "PRUNED", {k: t.state.name for k, t in got.items()}
    assert got[1e-2].state.name == "COMPLETE"
    # rank 0 reported once, at its first validation: 6 batches of 64 on each of 2 ranks (samples)
    assert list(got[1e-6].intermediate_values) == [6 * 64 * 2]
    assert len(got[1e-2].intermediate_values) == 2
    for number in (0, 1):
        job = sweep / str(number)
        assert len(_writer_pids(job / "tensorboard")) == 1  # rank 0 only
        assert not list(job.glob("*rank*.log"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


_CALLBACKS_SCRIPT = """
import json, sys
import lightning.pytorch as pl, numpy as np, torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_mlcycle import (ArrayDataModule, ClassificationModule, DeploymentExport, EarlyStopping,
                               FitDiagnosis)
from lightning_mlcycle.compression import MagnitudePruning
from lightning_mlcycle.models import MLP

out = sys.argv[1]
pl.seed_everything(0, workers=True)
rng = np.random.default_rng(0)
x = rng.normal(size=(240, 8)).astype("float32")
dm = ArrayDataModule(x, (x[:, 0] > 0).astype("int64"), batch_size=16, leakage="ignore")
model = ClassificationModule(MLP(2, (8,), hidden=(16,)), num_classes=2)
prune = MagnitudePruning(sparsity=0.5)
export = DeploymentExport(dirpath=out + "/export", formats=["onnx"], batch_sizes=[1], repeats=2)
trainer = pl.Trainer(
    strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, limit_train_batches=4,
    logger=TensorBoardLogger(out, name="tb", version=""), default_root_dir=out,
    callbacks=[FitDiagnosis(every_n_steps=2), EarlyStopping(monitor="val/loss"), prune, export],
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
)
trainer.fit(model, datamodule=dm)
weights = torch.cat([p.detach().flatten() for p in model.parameters()])
both = trainer.strategy.all_gather(weights)
if trainer.is_global_zero:
    json.dump({"same_weights": bool(torch.equal(both[0], both[1])),
               "zeros": float((weights == 0).float().mean()),
               "sparsity": prune.sparsity_report().get("overall"),
               "exports": export.state_dict()["exports"],
               "world": trainer.world_size}, open(out + "/result.json", "w"))
"""


@pytest.mark.slow
def test_our_callbacks_in_a_plain_ddp_trainer(tmp_path):
    """FitDiagnosis, EarlyStopping, MagnitudePruning and DeploymentExport in a user's own 2-process
    DDP Trainer: the ranks end with the same (pruned) weights, files are written once."""
    script = tmp_path / "train.py"
    script.write_text(_CALLBACKS_SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(out)], cwd=tmp_path, capture_output=True,
                          text=True, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads((out / "result.json").read_text())
    assert result["world"] == 2 and result["same_weights"]
    assert result["sparsity"] == pytest.approx(0.5, abs=0.01) and result["zeros"] > 0.3
    assert result["exports"] == 1 and (out / "export" / "model.onnx").is_file()
    assert len(_writer_pids(out / "tb")) == 1
