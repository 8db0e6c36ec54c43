"""After training: exporters, parity checks, latency report, model card and Predictor.

``export_model(model, out_dir, ...)`` writes ONNX / ``torch.export`` / (TVM) artifacts, checks each
against the PyTorch model, times them, and writes a model card; ``DeploymentExport`` does it from a
Trainer; ``Predictor`` runs an exported model on raw inputs.
"""

from lightning_mlcycle.export.callback import DeploymentExport
from lightning_mlcycle.export.card import (
    build_model_card,
    card_markdown,
    load_model_card,
    write_model_card,
)
from lightning_mlcycle.export.exporters import (
    compile_tvm,
    export_onnx,
    export_program,
    tvm_available,
)
from lightning_mlcycle.export.interface import ModelInterface
from lightning_mlcycle.export.latency import (
    LatencyRow,
    hardware_info,
    latency_markdown,
    measure_latency,
)
from lightning_mlcycle.export.parity import (
    DEFAULT_TOLERANCES,
    ParityError,
    ParityResult,
    Tolerance,
    check_parity,
    compare_outputs,
)
from lightning_mlcycle.export.pipeline import ExportResult, export_model
from lightning_mlcycle.export.predictor import Predictor
from lightning_mlcycle.export.runtimes import (
    EagerRunner,
    OnnxRuntimeRunner,
    ProgramRunner,
    TvmRunner,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "DeploymentExport",
    "EagerRunner",
    "ExportResult",
    "LatencyRow",
    "ModelInterface",
    "OnnxRuntimeRunner",
    "ParityError",
    "ParityResult",
    "Predictor",
    "ProgramRunner",
    "Tolerance",
    "TvmRunner",
    "build_model_card",
    "card_markdown",
    "check_parity",
    "compare_outputs",
    "compile_tvm",
    "export_model",
    "export_onnx",
    "export_program",
    "hardware_info",
    "latency_markdown",
    "load_model_card",
    "measure_latency",
    "tvm_available",
    "write_model_card",
]
