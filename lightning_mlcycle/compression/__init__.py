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
from lightning_mlcycle.compression.structured_pruning import (
    PruningResult,
    StructuredPruning,
    load_pruned,
    save_pruned,
    structured_prune,
)

__all__: list[str] = [
    "DistillationLoss",
    "DistillationModule",
    "LinearSchedule",
    "MagnitudePruning",
    "PruningResult",
    "StructuredPruning",
    "compute_masks",
    "distillation_loss",
    "iterative_sparsity",
    "load_pruned",
    "magnitude_prune",
    "polynomial_sparsity",
    "prunable_parameters",
    "save_pruned",
    "sparsity_stats",
    "structured_prune",
]
