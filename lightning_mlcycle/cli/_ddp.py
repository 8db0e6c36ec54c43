"""DDP from the Hydra app: worker processes join the job (and the run folder) that launched them.

Lightning's DDP launcher starts ranks 1..N-1 by re-running ``sys.argv`` with
``hydra.run.dir=<the run pattern>`` appended. Inside ``mlcycle -m`` that re-runs the whole sweep
(a known pain point: ashleve/lightning-hydra-template #393), and the pattern can resolve to
another folder than the job's. So the launching job writes what a worker needs into its
environment (which the launcher copies to the workers): its own overrides (a sweep job's include
the trial's parameters), its output folder and the config flags; a worker started with it
rebuilds ``sys.argv`` as a single run of exactly that job, in that folder, writing no ``.hydra``
and no log file of its own.

Processes created outside Lightning (``torchrun``, SLURM ``srun``) start with their rank in the
environment; the non-zero ranks likewise write no ``.hydra`` and no log file. They all must be
given the same ``hydra.run.dir``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lightning_mlcycle._utils import env_rank_zero

log = logging.getLogger(__name__)

#: the launching job, as JSON, in the environment of the DDP workers it starts
JOB_ENV = "MLCYCLE_DDP_JOB"
#: what Lightning's launcher puts into the launching process's environment
_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env.get(key, "0") or 0)
    except ValueError:
        return 0


def is_relaunched_worker(env: Mapping[str, str] = os.environ) -> bool:
    """True in a DDP worker that Lightning started from an ``mlcycle`` job (not rank 0).

    Example:
        >>> is_relaunched_worker({"LOCAL_RANK": "1", JOB_ENV: "{}"}), is_relaunched_worker({"LOCAL_RANK": "1"})
        (True, False)
    """
    return bool(env.get(JOB_ENV)) and _int(env, "LOCAL_RANK") > 0


def config_flags(argv: Sequence[str]) -> list[str]:
    """The ``--config-dir``/``--config-name``/``--config-path`` flags of a command line.

    Example:
        >>> config_flags(["mlcycle", "-m", "--config-dir", "my", "model=mlp", "-cn=exp"])
        ['--config-dir', 'my', '-cn=exp']
    """
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg in _CONFIG_FLAGS and i + 1 < len(argv):
            out += [arg, argv[i + 1]]
            next(it, None)
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS and "=" in arg:
            out.append(arg)
    return out


def _quote(value: str) -> str:
    """A Hydra override value that keeps any path intact (quoted, quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def worker_argv(argv0: str, job: Mapping[str, Any], local_rank: int) -> list[str]:
    """The command line of a DDP worker of ``job``: a single run of the same job in its folder.

    Example:
        >>> job = {"overrides": ["trainer=ddp", "model.lr=0.1"], "output_dir": "/runs/3", "flags": []}
        >>> worker_argv("mlcycle", job, 1)  # doctest: +NORMALIZE_WHITESPACE
        ['mlcycle', 'trainer=ddp', 'model.lr=0.1', "hydra.run.dir='/runs/3'", 'hydra.output_subdir=null',
         'hydra.mode=RUN', 'hydra.job.name=mlcycle_rank1', 'hydra/job_logging=stdout',
         'hydra.job.chdir=false']
    """
    return [
        argv0,
        *job.get("flags", []),
        *job["overrides"],
        f"hydra.run.dir={_quote(str(job['output_dir']))}",
        "hydra.output_subdir=null",  # the launching job already saved the config
        "hydra.mode=RUN",  # never a sweep inside a trial
        f"hydra.job.name=mlcycle_rank{local_rank}",
        "hydra/job_logging=stdout",  # log to the console only: one log file per run
        f"hydra.job.chdir={'true' if job.get('chdir') else 'false'}",
    ]


def quiet_rank_argv(argv: Sequence[str]) -> list[str]:
    """Add "no .hydra, no log file" to the command line of an externally started non-zero rank.

    Example:
        >>> quiet_rank_argv(["mlcycle", "trainer=ddp"])
        ['mlcycle', 'trainer=ddp', 'hydra.output_subdir=null', 'hydra/job_logging=stdout']
    """
    out = list(argv)
    if not any(a.startswith("hydra.output_subdir") for a in out):
        out.append("hydra.output_subdir=null")
    if not any(a.lstrip("~+").startswith("hydra/job_logging") for a in out):
        out.append("hydra/job_logging=stdout")
    return out


def prepare_argv(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> list[str]:
    """The command line ``mlcycle`` should run with in this process (see the module docstring)."""
    if is_relaunched_worker(env):
        return worker_argv(argv[0], json.loads(env[JOB_ENV]), _int(env, "LOCAL_RANK"))
    if not env_rank_zero(env):
        return quiet_rank_argv(argv)
    return list(argv)


@contextlib.contextmanager
def ddp_job(argv: Sequence[str]) -> Iterator[None]:
    """Around one Hydra job: tell the DDP workers it may launch who they are; clean up after.

    In the launching process, after the job the process group is destroyed and Lightning's
    launcher variables are removed, so the next job of a sweep (same process) launches its own
    workers on a fresh port instead of waiting for the previous job's.
    """
    from hydra.core.hydra_config import HydraConfig

    if is_relaunched_worker() or not HydraConfig.initialized():
        yield
        return
    launcher = "LOCAL_RANK" not in os.environ  # else the processes were created externally
    saved = {k: os.environ.get(k) for k in (*_LAUNCH_ENV, JOB_ENV)}
    hc = HydraConfig.get()
    job = {
        "overrides": list(hc.overrides.task),
        "output_dir": str(hc.runtime.output_dir),
        "flags": config_flags(argv),
        "chdir": bool(hc.job.chdir),
    }
    os.environ[JOB_ENV] = json.dumps(job)
    try:
        yield
    finally:
        if launcher:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        elif saved[JOB_ENV] is None:
            os.environ.pop(JOB_ENV, None)
