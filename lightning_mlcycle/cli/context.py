"""What the stages of one ``mlcycle`` run share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclass
class RunContext:
    """The state one run's stages pass along.

    Attributes:
        cfg: the composed config.
        run_dir: the run's output folder (everything of the run is written below it).
        datamodule: the LightningDataModule (set up).
        model: the LightningModule being trained / evaluated.
        trainer: the Lightning Trainer of the fit stage.
        summary: flat, JSON-ready results; printed at the end and written to ``summary.json``.
        artifacts: name -> path of every file a stage wrote that later stages or users need.
        extras: anything a stage hands to later stages in memory (e.g. compressed models).
    """

    cfg: DictConfig
    run_dir: Path
    datamodule: Any = None
    model: Any = None
    trainer: Any = None
    summary: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
