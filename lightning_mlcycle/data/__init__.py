"""Before training: DataModules with seeded stratified splits and a leakage check."""

from lightning_mlcycle.data._base import ArrayDataModule, NormalizedTensorDataset, SplitDataModule
from lightning_mlcycle.data._split import LeakageReport, find_leakage, stratified_split
from lightning_mlcycle.data.digits import DigitsDataModule
from lightning_mlcycle.data.image_folder import ImageFolderDataModule

__all__ = [
    "ArrayDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "LeakageReport",
    "NormalizedTensorDataset",
    "SplitDataModule",
    "find_leakage",
    "stratified_split",
]
