"""Small helpers shared by several stages (private)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch


def rank_zero() -> bool:
    """Return True on the process that writes files and logs (global rank 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return env_rank_zero()


def env_rank_zero(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment says this is global rank 0 (True when not distributed).

    ``RANK`` (torchrun), ``SLURM_PROCID`` (srun with several tasks), else ``NODE_RANK`` /
    ``GROUP_RANK`` and ``LOCAL_RANK`` (Lightning's launcher sets no ``RANK``, and on a second node
    ``LOCAL_RANK=0`` is not rank zero).
    """
    env = os.environ if env is None else env

    def num(key: str) -> int:
        try:
            return int(env.get(key) or 0)
        except ValueError:
            return 0

    if "RANK" in env:
        return num("RANK") == 0
    if num("SLURM_NTASKS") > 1 and "SLURM_PROCID" in env:
        return num("SLURM_PROCID") == 0
    return num("LOCAL_RANK") == 0 and num("NODE_RANK") == 0 and num("GROUP_RANK") == 0


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a plain ``ValueError`` when ``value`` is not one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {choices}, but got {value!r}.")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a plain ``ValueError`` when ``value`` is not positive (or non-negative)."""
    if allow_zero:
        if not value >= 0:
            raise ValueError(f"`{name}` cannot be negative, but got {name}={value!r}.")
    elif not value > 0:
        raise ValueError(f"`{name}` must be positive, but got {name}={value!r}.")


def check_fraction(name: str, value: float, *, closed_right: bool = False) -> None:
    """Raise a plain ``ValueError`` when ``value`` is outside [0, 1) (or [0, 1])."""
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"`{name}` must be in {interval}, but got {name}={value!r}.")


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and return it as a :class:`Path`."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def trainer_log_dir(trainer: Any) -> Path:
    """Directory where a callback writes its files: the logger's dir, else the root dir."""
    logger = getattr(trainer, "logger", None)
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if log_dir:
        return Path(log_dir)
    return Path(trainer.default_root_dir)


def tensorboard_writer(trainer: Any) -> Any | None:
    """Return the ``SummaryWriter`` of the first TensorBoard logger of ``trainer``, if any."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in getattr(trainer, "loggers", []) or []:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None
