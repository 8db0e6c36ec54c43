"""The stages of ``mlcycle``, in the order they run.

A stage is a function ``stage(ctx: RunContext) -> None`` that reads ``ctx.cfg``, does its work in
``ctx.run_dir`` and records results in ``ctx.summary`` / ``ctx.artifacts``. A stage whose config
node (``ctx.cfg[name]``) has ``enabled: false`` is skipped.
"""

from __future__ import annotations

from collections.abc import Callable

from lightning_mlcycle.cli.context import RunContext
from lightning_mlcycle.cli.stages.compress import (
    compact_stage,
    compress_check_stage,
    lowrank_stage,
    prune_stage,
)
from lightning_mlcycle.cli.stages.diagnosis import diagnosis_stage
from lightning_mlcycle.cli.stages.distill import distill_check_stage, distill_stage
from lightning_mlcycle.cli.stages.distributed import leave_distributed_stage
from lightning_mlcycle.cli.stages.export import export_stage
from lightning_mlcycle.cli.stages.monitor import monitor_stage
from lightning_mlcycle.cli.stages.quantize import quantize_stage
from lightning_mlcycle.cli.stages.train import build_stage, fit_stage, test_stage

Stage = Callable[[RunContext], None]

#: (name, function, config node that can disable it or None when always on)
STAGES: list[tuple[str, Stage, str | None]] = [
    ("build", build_stage, None),
    ("compress_check", compress_check_stage, None),  # bad compress.* config fails before fit
    ("distill_check", distill_check_stage, "compress.distill"),  # bad distill config fails before fit
    ("fit", fit_stage, None),
    ("test", test_stage, None),
    ("diagnosis", diagnosis_stage, None),  # runs when a FitDiagnosis callback is on the trainer
    ("leave_ddp", leave_distributed_stage, None),  # DDP: close the group; only rank 0 goes on
    ("prune", prune_stage, "compress.prune"),  # magnitude (default) or structured pruning + fine-tune
    ("lowrank", lowrank_stage, "compress.lowrank"),  # truncated-SVD factorization + fine-tune (opt-in)
    ("compact", compact_stage, "compress.compact"),  # depthwise-separable convolutions + fine-tune (opt-in)
    ("quantize", quantize_stage, "compress.quantize"),  # int8 ONNX (PTQ default; QAT/binarize opt-in)
    ("distill", distill_stage, "compress.distill"),  # after prune/quantize, before export
    ("export", export_stage, "export"),  # after compress/quantize/distill, before monitor
    ("monitor", monitor_stage, "monitor"),  # LAST: profile saved with the exported model + stress test
]

__all__ = ["STAGES", "Stage"]
