"""After training: pruning, low rank, compact convolutions, quantization, binarization, distillation."""

from lightning_mlcycle.compression._surgery import load_factorized, save_factorized
from lightning_mlcycle.compression.binary import (
    BinaryConv2d,
    BinaryLinear,
    binarize,
    load_binarized,
    save_binarized,
    sign_ste,
)
from lightning_mlcycle.compression.compact_conv import (
    CompactConvolutions,
    apply_compact,
    compact_convolutions,
    depthwise_separable,
)
from lightning_mlcycle.compression.distillation import (
    DistillationLoss,
    DistillationModule,
    LinearSchedule,
    distillation_loss,
)
from lightning_mlcycle.compression.low_rank import (
    LowRankFactorization,
    LowRankReport,
    apply_ranks,
    factorize_conv,
    factorize_linear,
    low_rank_factorize,
    rank_for,
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
from lightning_mlcycle.compression.ptq import (
    quantize_dynamic_onnx,
    quantize_static_onnx,
)
from lightning_mlcycle.compression.qat import (
    QuantizationAwareTraining,
    convert_qat,
    export_qat_onnx,
    prepare_qat,
)
from lightning_mlcycle.compression.structured_pruning import (
    PruningResult,
    StructuredPruning,
    load_pruned,
    save_pruned,
    structured_prune,
    target_widths,
)

__all__: list[str] = [
    "BinaryConv2d",
    "BinaryLinear",
    "CompactConvolutions",
    "DistillationLoss",
    "DistillationModule",
    "LinearSchedule",
    "LowRankFactorization",
    "LowRankReport",
    "MagnitudePruning",
    "PruningResult",
    "QuantizationAwareTraining",
    "StructuredPruning",
    "apply_compact",
    "apply_ranks",
    "binarize",
    "compact_convolutions",
    "compute_masks",
    "convert_qat",
    "depthwise_separable",
    "distillation_loss",
    "export_qat_onnx",
    "factorize_conv",
    "factorize_linear",
    "iterative_sparsity",
    "load_binarized",
    "load_factorized",
    "load_pruned",
    "low_rank_factorize",
    "magnitude_prune",
    "polynomial_sparsity",
    "prepare_qat",
    "prunable_parameters",
    "quantize_dynamic_onnx",
    "quantize_static_onnx",
    "rank_for",
    "save_binarized",
    "save_factorized",
    "save_pruned",
    "sign_ste",
    "sparsity_stats",
    "structured_prune",
    "target_widths",
]
