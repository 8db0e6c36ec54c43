"""lightning_mlcycle: PyTorch Lightning plugins for the whole machine-learning cycle.

Before training (``data``), during training (``diagnosis``, ``tuning``), after training
(``compression``, ``export``) and after deployment (``monitoring``). The most used parts are
re-exported here.
"""

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.compression import DistillationModule
from lightning_mlcycle.data import (
    ArrayDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    find_leakage,
    stratified_split,
)
from lightning_mlcycle.diagnosis import (
    DiagnosisReport,
    EarlyStopping,
    Finding,
    FitDiagnosis,
    Symptom,
)
from lightning_mlcycle.export import DeploymentExport, Predictor, export_model
from lightning_mlcycle.models import ClassificationModule, create_model
from lightning_mlcycle.monitoring import DriftMonitor, ReferenceProfile, stress_test
from lightning_mlcycle.tuning.optuna_pruning import OptunaPruning
from lightning_mlcycle.tuning.throughput import ThroughputTuner, tune_throughput

__version__ = "0.1.0"

__all__ = [
    "ArrayDataModule",
    "ClassificationModule",
    "DeploymentExport",
    "DiagnosisReport",
    "DigitsDataModule",
    "DistillationModule",
    "DriftMonitor",
    "EarlyStopping",
    "Finding",
    "FitDiagnosis",
    "ImageFolderDataModule",
    "MLCycleError",
    "OptunaPruning",
    "Predictor",
    "ReferenceProfile",
    "Symptom",
    "ThroughputTuner",
    "create_model",
    "export_model",
    "find_leakage",
    "stratified_split",
    "stress_test",
    "tune_throughput",
]
