"""Knowledge distillation in a plain Lightning Trainer: a CNN teacher trains a 23x smaller MLP.

Run: ``python examples/distillation.py`` (about 15 s on 2 CPU cores). The teacher is trained here
for a few epochs; in practice pass your trained model, one of our checkpoints
(``DistillationModule("best.ckpt", student)``) or an ONNX file (``DistillationModule("model.onnx",
student)``).
"""

from __future__ import annotations

import tempfile

import lightning.pytorch as pl
import torch

from lightning_mlcycle import ClassificationModule, DigitsDataModule
from lightning_mlcycle.compression import DistillationModule, LinearSchedule
from lightning_mlcycle.models import MLP, SmallCNN


def main() -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    root = tempfile.mkdtemp(prefix="mlcycle_distill_")
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")

    def trainer(epochs: int) -> pl.Trainer:
        return pl.Trainer(max_epochs=epochs, default_root_dir=root, enable_progress_bar=False,
                          enable_model_summary=False, logger=pl.loggers.TensorBoardLogger(root, name="tb"))

    # 1. a teacher: the default CNN (57k parameters)
    teacher = SmallCNN(dm.num_classes, dm.input_shape, width=32)
    trainer(3).fit(ClassificationModule(teacher, dm.num_classes), datamodule=dm)

    # 2. the student: an MLP with one hidden layer of 32 units (2.4k parameters)
    student = MLP(dm.num_classes, dm.input_shape, hidden=(32,))
    module = DistillationModule(
        teacher,
        student,
        input_shape=dm.input_shape,
        alpha=LinearSchedule(0.1, 0.5, epochs=8),  # lean on the teacher first, on the labels later
        temperature=4.0,
        hints={"net.2": "features.11"},  # the student's hidden layer imitates the teacher's pooled features
        cache_teacher=True,  # the digits are not augmented: the teacher runs in the first epoch only
    )
    t = trainer(8)
    t.fit(module, datamodule=dm)
    student_acc = t.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    teacher_acc = trainer(1).test(ClassificationModule(teacher, dm.num_classes), datamodule=dm,
                                  verbose=False)[0]["test/acc"]
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    print(f"teacher: {n_t:,} parameters, test accuracy {teacher_acc:.3f}")
    print(f"student: {n_s:,} parameters, test accuracy {student_acc:.3f} "
          f"(teacher forward passes saved by the cache: {module.cache.hits} samples)")
    print(f"TensorBoard: tensorboard --logdir {root}/tb")


if __name__ == "__main__":
    main()
