"""After training: pruning, low rank, compact convolutions, quantization, binarization, distillation."""

from lightning_mlcycle.compression.distillation import (
    DistillationLoss,
    DistillationModule,
    LinearSchedule,
    distillation_loss,
)
from lightning_mlcycle.compression.magnitude_pruning import (
    MagnitudePruning,
    compute_masks,
    iterative_sparsity,
    magnitude_prune,
    polynomial_sparsity,
    prunable_parameters,
    sparsity_stats,
)

__all__: list[str] = [
    "DistillationLoss",
    "DistillationModule",
    "LinearSchedule",
    "MagnitudePruning",
    "compute_masks",
    "distillation_loss",
    "iterative_sparsity",
    "magnitude_prune",
    "polynomial_sparsity",
    "prunable_parameters",
    "sparsity_stats",
]
