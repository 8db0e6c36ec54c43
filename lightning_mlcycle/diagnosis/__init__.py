"""During training: fit diagnosis and early stopping that keeps the best weights.

:class:`FitDiagnosis` watches a run and keeps a :class:`DiagnosisReport` (fit state and ranked
:class:`Finding` s with evidence and remedies); the rules behind it are pure functions in
:mod:`lightning_mlcycle.diagnosis.rules`, with thresholds in :class:`DiagnosisThresholds`.
"""

from lightning_mlcycle.diagnosis.early_stopping import EarlyStopping
from lightning_mlcycle.diagnosis.finding import Finding, FitState, Remedy, Severity, Symptom
from lightning_mlcycle.diagnosis.fit_diagnosis import FitDiagnosis
from lightning_mlcycle.diagnosis.remedies import REMEDIES, remedies_for
from lightning_mlcycle.diagnosis.report import DiagnosisReport
from lightning_mlcycle.diagnosis.rules import TrainingSnapshot, diagnose
from lightning_mlcycle.diagnosis.thresholds import DiagnosisThresholds

__all__ = [
    "REMEDIES",
    "DiagnosisReport",
    "DiagnosisThresholds",
    "EarlyStopping",
    "Finding",
    "FitDiagnosis",
    "FitState",
    "Remedy",
    "Severity",
    "Symptom",
    "TrainingSnapshot",
    "diagnose",
    "remedies_for",
]
