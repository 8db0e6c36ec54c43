"""Shared fixtures: one thread for tiny models, the real composed config shrunk for tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# tiny models run several times faster on one thread than on two on a 2-core machine
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose_cfg(tmp_path: Path):  # noqa: ANN201
    """Compose the real ``mlcycle`` config with overrides, shrunk to run in seconds.

    Usage: ``cfg = compose_cfg("model=mlp", "trainer.max_epochs=2")``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lightning_mlcycle.cli.main import config_dir

    def _compose(*overrides: str, fast: bool = True):  # noqa: ANN202
        GlobalHydra.instance().clear()
        base = [f"run_dir={tmp_path / 'run'}"]
        if fast:
            base += [
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                "trainer.accelerator=cpu",
            ]
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name="mlcycle", overrides=base + list(overrides))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield
