"""DistillationModule: loss, frozen teacher, hints, cache, resume, errors, teacher sources, CLI stage."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_mlcycle import ArrayDataModule, ClassificationModule, MLCycleError
from lightning_mlcycle.compression import DistillationModule, LinearSchedule, distillation_loss
from lightning_mlcycle.compression._teacher_cache import TeacherCache
from lightning_mlcycle.models import MLP, SmallCNN

N_FEAT, N_CLS = 6, 3


def _mlp(hidden: int = 16, out: int = N_CLS) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(N_FEAT, hidden), nn.ReLU(), nn.Linear(hidden, out))


class _CountingTeacher(nn.Module):
    """A teacher with dropout and BatchNorm that counts its forward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_FEAT, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Linear(16, N_CLS))
        self.calls = 0
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.append(self.training)
        return self.net(x)


def _data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % N_CLS
    x = torch.randn(n, N_FEAT, generator=g) + 2.0 * nn.functional.one_hot(y, N_FEAT).float()
    return x, y


def _loader(batch: int = 16, **kw) -> DataLoader:
    x, y = _data(**kw)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)


def _trainer(tmp_path: Path, epochs: int = 1, **kw) -> pl.Trainer:
    opts = dict(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    opts.update(kw)
    return pl.Trainer(**opts)


# -- the loss --------------------------------------------------------------------------------------
def test_loss_equals_hand_computation() -> None:
    s = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]
    t = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
    y = [1, 2]
    alpha, temp = 0.3, 2.0

    def softmax(row: list[float], T: float = 1.0) -> list[float]:
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    ce = sum(-math.log(softmax(si)[yi]) for si, yi in zip(s, y, strict=True)) / 2
    kl = sum(
        sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(softmax(ti, temp), softmax(si, temp), strict=True))
        for si, ti in zip(s, t, strict=True)
    ) / 2
    expected = alpha * ce + (1 - alpha) * temp**2 * kl
    out = distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=alpha, temperature=temp)
    assert float(out.ce) == pytest.approx(ce, rel=1e-6)
    assert float(out.kd) == pytest.approx(temp**2 * kl, rel=1e-5)
    assert float(out.total) == pytest.approx(expected, rel=1e-5)
    # alpha = 1 is plain cross-entropy, and identical logits give no soft loss
    assert float(distillation_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=1.0).total) == \
        pytest.approx(ce, rel=1e-6)
    assert float(distillation_loss(torch.tensor(t), torch.tensor(t), torch.tensor(y)).kd) == pytest.approx(0, abs=1e-7)


def test_linear_schedule_moves_weights_per_epoch(tmp_path: Path) -> None:
    module = DistillationModule(_mlp(32), _mlp(), input_shape=(N_FEAT,),
                                alpha=LinearSchedule(0.0, 1.0, epochs=2), temperature=LinearSchedule(4.0, 1.0, 3))
    seen: list[tuple[float, float]] = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
            seen.append((pl_module.alpha, pl_module.temperature))

    _trainer(tmp_path, epochs=3, callbacks=[Spy()]).fit(module, _loader(batch=48))
    assert seen == [(0.0, 4.0), (0.5, 3.0), (1.0, 2.0)]


# -- the teacher is frozen -------------------------------------------------------------------------
def test_teacher_gets_no_gradient_and_stays_in_eval(tmp_path: Path) -> None:
    teacher = _CountingTeacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,))
    module.train()
    assert module.student.training and not module.teacher.training
    grads: list[bool] = []

    class Spy(pl.Callback):
        def on_after_backward(self, trainer, pl_module):  # noqa: ANN001
            grads.append(all(p.grad is None for p in pl_module.teacher.parameters()))
            grads.append(any(p.grad is not None for p in pl_module.student.parameters()))

    _trainer(tmp_path, epochs=2, callbacks=[Spy()]).fit(module, _loader())
    assert grads and all(grads)
    assert teacher.calls > 0 and not any(teacher.modes)  # eval in every forward pass
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(v, before[k]), k
    opt_params = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in teacher.parameters()}


# -- hints -----------------------------------------------------------------------------------------
def test_hint_layers_found_by_name_and_adapters_sized() -> None:
    teacher = SmallCNN(N_CLS, (1, 8, 8), width=8)
    student = SmallCNN(N_CLS, (1, 8, 8), width=4)
    hints = {"features.2": "features.2",    # 4 vs 8 channels, 8x8 both -> 1x1 conv
             "features.5": "features.2",    # 8 channels 8x8 vs 8 channels 8x8 -> identity
             "features.6": "features.2",    # 8 ch 4x4 (after pool) vs 8 ch 8x8 -> conv + pool
             "features.11": "features.11"}  # pooled vectors 8 vs 16 -> linear
    module = DistillationModule(teacher, student, input_shape=(1, 8, 8), hints=hints)
    kinds = [type(module.adapters[f"hint_{i}"]).__name__ for i in range(4)]
    assert kinds == ["Sequential", "Identity", "Sequential", "Linear"]
    assert isinstance(module.adapters["hint_0"][0], nn.Conv2d) and len(module.adapters["hint_0"]) == 1
    assert isinstance(module.adapters["hint_2"][1], nn.AdaptiveAvgPool2d)
    # one training step: the hint loss reaches the adapters, and no hook is left behind
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    module.training_step((x, y), 0)  # logging outside a Trainer is a no-op with a warning
    loss = module.training_step((x, y), 0)
    loss.backward()
    assert module.adapters["hint_0"][0].weight.grad is not None
    assert all(not m._forward_hooks for m in list(teacher.modules()) + list(student.modules()))


def test_hint_loss_is_the_mse_of_the_adapted_features() -> None:
    teacher, student = _mlp(16), _mlp(8)
    module = DistillationModule(teacher, student, input_shape=(N_FEAT,), hints={"2": "2"}, alpha=1.0,
                                hint_weight=2.0)
    x, y = _data(8)
    loss = module.training_step((x, y), 0)
    with torch.no_grad():
        ce = nn.functional.cross_entropy(student(x), y)
        mse = nn.functional.mse_loss(module.adapters["hint_0"](student[2](student[1](student[0](x)))),
                                     teacher[2](teacher[1](teacher[0](x))))
    assert float(loss) == pytest.approx(float(ce + 2.0 * mse), rel=1e-5)


# -- the cache -------------------------------------------------------------------------------------
def test_cache_is_used_on_a_fixed_training_set(tmp_path: Path) -> None:
    teacher = _CountingTeacher()
    module = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,), cache_teacher=True)
    teacher.calls = 0
    _trainer(tmp_path, epochs=3).fit(module, _loader(batch=16))  # 3 batches per epoch
    assert teacher.calls == 3  # the first epoch only
    assert module.cache.enabled and len(module.cache) == 48 and module.cache.hits == 96


def test_cached_outputs_equal_fresh_ones() -> None:
    teacher = _mlp(16)
    module = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,), cache_teacher=True, hints={"2": "2"})
    x, _ = _data(8)
    fresh = module.teacher_outputs(x)
    cached = module.teacher_outputs(x.clone())
    assert module.cache.hits == 8
    for a, b in zip(fresh, cached, strict=True):
        assert torch.equal(a, b)


def test_cache_invalidated_when_datamodule_is_augmented(tmp_path: Path) -> None:
    x, y = _data(60)
    dm = ArrayDataModule(x.numpy(), y.numpy(), batch_size=16, augmentation=[lambda t: t + 0.01 * torch.randn_like(t)])
    teacher = _CountingTeacher()
    module = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,), cache_teacher=True)
    teacher.calls = 0
    _trainer(tmp_path, epochs=2, limit_val_batches=0).fit(module, datamodule=dm)
    assert not module.cache.enabled and "augmented" in module.cache.disabled_reason
    assert teacher.calls == 2 * math.ceil(len(dm.indices["train"]) / 16)
    assert len(module.cache) == 0


class _Noisy(Dataset):
    """A dataset that augments behind the user's back (new content every epoch)."""

    def __init__(self, with_index: bool) -> None:
        self.x, self.y = _data(32)
        self.with_index = with_index

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int):  # noqa: ANN204
        x = self.x[i] + 0.1 * torch.randn(N_FEAT)
        return (x, self.y[i], i) if self.with_index else (x, self.y[i])


def test_cache_invalidated_when_content_changes_between_epochs(tmp_path: Path) -> None:
    module = DistillationModule(_mlp(16), _mlp(), input_shape=(N_FEAT,), cache_teacher=True)
    _trainer(tmp_path, epochs=2).fit(module, DataLoader(_Noisy(False), batch_size=8))
    assert not module.cache.enabled and "change between epochs" in module.cache.disabled_reason


def test_index_cache_detects_changed_content(tmp_path: Path) -> None:
    module = DistillationModule(_mlp(16), _mlp(), input_shape=(N_FEAT,), cache_teacher=True, cache_key="index")
    _trainer(tmp_path, epochs=2).fit(module, DataLoader(_Noisy(True), batch_size=8))
    assert not module.cache.enabled and "different content" in module.cache.disabled_reason
    # the same samples by index: served from the cache
    x, y = _data(32)
    fixed = DataLoader(TensorDataset(x, y, torch.arange(32)), batch_size=8, shuffle=True)
    module = DistillationModule(_mlp(16), _mlp(), input_shape=(N_FEAT,), cache_teacher=True, cache_key="index")
    _trainer(tmp_path, epochs=2).fit(module, fixed)
    assert module.cache.enabled and module.cache.hits == 32 and module.cache.misses == 32


def test_index_cache_needs_an_index() -> None:
    cache = TeacherCache("index")
    with pytest.raises(MLCycleError, match="needs batches of \\(x, y, index\\)"):
        cache.keys(torch.zeros(2, 3))


# -- checkpoint / resume ---------------------------------------------------------------------------
def test_checkpoint_and_resume(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    teacher = _mlp(32)
    torch.manual_seed(1)
    module = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,), hints={"2": "2"}, cache_teacher=True,
                                temperature=LinearSchedule(4.0, 2.0, 4))
    module.cache.disable("the training data are augmented")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path, epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(module, _loader())
    last = tmp_path / "ckpt" / "last.ckpt"
    # reload: same student and adapter weights, cache state kept
    loaded = DistillationModule.load_from_checkpoint(last, teacher=teacher, student=_mlp(), input_shape=(N_FEAT,),
                                                     hints={"2": "2"}, cache_teacher=True,
                                                     temperature=LinearSchedule(4.0, 2.0, 4), weights_only=True)
    for (k, v), (k2, v2) in zip(module.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    assert not loaded.cache.enabled
    # resume: training continues at epoch 2 with the scheduled temperature of epoch 2
    resumed = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,), hints={"2": "2"}, cache_teacher=True,
                                 temperature=LinearSchedule(4.0, 2.0, 4))
    trainer = _trainer(tmp_path, epochs=3, enable_checkpointing=True)
    trainer.fit(resumed, _loader(), ckpt_path=last)
    assert trainer.current_epoch == 3 and resumed.temperature == pytest.approx(3.0)
    assert not resumed.cache.enabled


# -- teachers from a checkpoint and from ONNX ------------------------------------------------------
def _mlp_to_onnx(net: nn.Sequential, path: Path) -> Path:
    """Flatten-Linear-ReLU-Linear as an ONNX graph (built directly: the dynamo exporter takes ~10 s)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    lin1, lin2 = net[1], net[3]
    inits = [numpy_helper.from_array(t.detach().numpy(), name) for name, t in
             (("w1", lin1.weight), ("b1", lin1.bias), ("w2", lin2.weight), ("b2", lin2.bias))]
    nodes = [helper.make_node("Flatten", ["input"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, N_FEAT])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, N_CLS])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), path)
    return path


def test_teacher_from_our_checkpoint_and_from_onnx(tmp_path: Path) -> None:
    backbone_config = {"_target_": "lightning_mlcycle.models.MLP", "num_classes": N_CLS,
                       "input_shape": [N_FEAT], "hidden": [16]}
    clf = ClassificationModule(num_classes=N_CLS, backbone_config=backbone_config, input_shape=[N_FEAT])
    trainer = _trainer(tmp_path)
    trainer.fit(clf, _loader())
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    module = DistillationModule(str(path), MLP(N_CLS, (N_FEAT,), hidden=(4,)))  # shape and classes from hparams
    assert module.input_shape == (N_FEAT,) and module.num_classes == N_CLS
    x, _ = _data(8)
    clf.eval()
    assert torch.allclose(module.teacher(x), clf(x), atol=1e-6)

    onnx_path = _mlp_to_onnx(clf.backbone.net, tmp_path / "teacher.onnx")
    module = DistillationModule(onnx_path, MLP(N_CLS, (N_FEAT,), hidden=(4,)), input_shape=(N_FEAT,),
                                cache_teacher=True)
    assert torch.allclose(module.teacher_outputs(x)[0], clf(x), atol=1e-4)
    _trainer(tmp_path).fit(module, _loader())  # trains through ONNX Runtime
    with pytest.raises(MLCycleError, match="ONNX teacher does not expose"):
        DistillationModule(onnx_path, _mlp(), input_shape=(N_FEAT,), hints={"2": "net.1"})


def test_compressed_student_is_distilled(tmp_path: Path) -> None:
    """A factorized (low-rank) student, as the compression stages produce, trains like any other."""
    student = nn.Sequential(nn.Flatten(), nn.Linear(N_FEAT, 2, bias=False), nn.Linear(2, 16), nn.ReLU(),
                            nn.Linear(16, N_CLS))
    module = DistillationModule(_mlp(32), student, input_shape=(N_FEAT,), hints={"3": "2"})
    before = student[1].weight.clone()
    _trainer(tmp_path).fit(module, _loader())
    assert not torch.equal(before, student[1].weight)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, MLCycleError, r"`temperature` must be a positive number, but got temperature=0.0"),
        ({"temperature": -2}, MLCycleError, r"`temperature` must be a positive number"),
        ({"alpha": 1.5}, MLCycleError, r"`alpha` must be in \[0, 1\], but got alpha=1.5"),
        ({"alpha": -0.1}, MLCycleError, r"`alpha` must be in \[0, 1\]"),
        ({"alpha": LinearSchedule(2.0, 0.0, 3)}, MLCycleError, r"`alpha` must be in \[0, 1\], but got alpha=2.0"),
        ({"hint_weight": -1.0}, MLCycleError, r"`hint_weight` cannot be negative"),
        ({"hints": {"nope": "2"}}, MLCycleError, r"the student has no layer named 'nope'; valid names are \['0', '1', '2', '3'\]"),
        ({"hints": {"1": "features.9"}}, MLCycleError, r"the teacher has no layer named 'features.9'; valid names are \['0', '1', '2', '3'\]"),
        ({"hints": [("1",)]}, MLCycleError, r"`hints` must map student layer names to teacher layer names"),
        ({"cache_key": "hash"}, MLCycleError, r"`cache_key` to be one of \['content', 'index'\], but got 'hash'"),
        ({"label_smoothing": 1.0}, MLCycleError, r"`label_smoothing` must be in \[0, 1\)"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    kwargs = {"input_shape": (N_FEAT,), **kwargs}
    with pytest.raises(error, match=match):
        DistillationModule(_mlp(32), _mlp(), **kwargs)


def test_bad_models() -> None:
    with pytest.raises(MLCycleError, match="same number of outputs, but the teacher gives 3 and the student 5"):
        DistillationModule(_mlp(32), _mlp(out=5), input_shape=(N_FEAT,))
    with pytest.raises(MLCycleError, match="same number of outputs, but the teacher gives 3 and the student 5"):
        distillation_loss(torch.zeros(2, 5), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="`student` to be an nn.Module, but got str"):
        DistillationModule(_mlp(32), "mlp")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`teacher` to be an nn.Module, a checkpoint path or an .onnx path"):
        DistillationModule(3, _mlp())  # type: ignore[arg-type]
    with pytest.raises(MLCycleError, match="no file at"):
        DistillationModule("missing.ckpt", _mlp())
    with pytest.raises(MLCycleError, match="`num_classes` must be an integer >= 2 \\(or give `input_shape`"):
        DistillationModule(_mlp(32), _mlp())
    with pytest.raises(MLCycleError, match="`input_shape` is required with `hints`"):
        DistillationModule(_mlp(32), _mlp(), num_classes=N_CLS, hints={"1": "1"})
    with pytest.raises(MLCycleError, match="`epochs` must be a positive integer, but got epochs=0"):
        LinearSchedule(0.0, 1.0, 0)


def test_output_mismatch_found_at_the_first_batch_without_input_shape(tmp_path: Path) -> None:
    module = DistillationModule(_mlp(32), _mlp(out=4), num_classes=N_CLS)
    with pytest.raises(MLCycleError, match="teacher gives 3 and the student 4"):
        _trainer(tmp_path).fit(module, _loader())


def test_schedule_leaving_the_range_fails_at_that_epoch(tmp_path: Path) -> None:
    module = DistillationModule(_mlp(32), _mlp(), input_shape=(N_FEAT,), temperature=lambda e: 2.0 - e)
    with pytest.raises(MLCycleError, match=r"`temperature \(epoch 2\)` must be a positive number"):
        _trainer(tmp_path, epochs=3).fit(module, _loader(batch=48))


# -- the mlcycle stage -----------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_distill_stage(compose_cfg) -> None:  # noqa: ANN001
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_mlcycle.cli.main import run
    from lightning_mlcycle.cli.stages.distill import load_distilled

    # a small MLP teacher and only this stage after test, to keep the run short
    cfg = compose_cfg("compress/distill=default", "model=mlp", "trainer.max_epochs=2", "compress/prune=none",
                      "compress/quantize=none",
                      "export.enabled=false", "monitor.enabled=false", "compress.distill.max_epochs=3",
                      "compress.distill.hints={net.2: net.5}", "compress.distill.latency_repeats=5")
    ctx = run(cfg)
    s = ctx.summary
    for key in ("teacher_acc", "student_acc", "teacher_params", "student_params", "teacher_size_bytes",
                "student_latency_ms", "param_ratio"):
        assert f"distill/{key}" in s, key
    assert s["distill/student_params"] < s["distill/teacher_params"]
    assert s["distill/teacher_acc"] == pytest.approx(s["test/acc"], abs=1e-6)  # the tested model is the teacher
    assert s["distill/student_acc"] > 0.5 and s["distill/cache_used"] is True
    student = ctx.extras["models"]["distilled"]
    x = next(iter(ctx.datamodule.test_dataloader()))[0]
    assert student(x).shape == (x.shape[0], 10) and not student.training
    reloaded = load_distilled(Path(ctx.artifacts["distilled_model"]))
    assert torch.allclose(reloaded(x), student(x))
    assert (ctx.run_dir / "compressed" / "distill_report.md").read_text().count("| student |") == 1
    tb = Path(ctx.artifacts["tensorboard"])
    main = EventAccumulator(str(tb)).Reload()
    assert "distill/student_acc" in main.Tags()["scalars"]
    sub = EventAccumulator(str(tb / "distill")).Reload()
    assert {"train/loss_kd", "train/loss_hint", "val/acc"} <= set(sub.Tags()["scalars"])


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("compress.distill.temperature=0", r"Config `compress.distill`: `temperature` must be a positive number"),
        ("compress.distill.alpha=2", r"Config `compress.distill`: `alpha` must be in \[0, 1\]"),
        ("compress.distill.hints={net.9: net.0}", r"the student has no layer named 'net.9'; valid names are"),
        ("compress.distill.max_epochs=0", r"`compress.distill.max_epochs` must be a positive integer"),
    ],
)
def test_cli_bad_distill_config_fails_before_fit(compose_cfg, override: str, match: str) -> None:  # noqa: ANN001
    from lightning_mlcycle.cli.main import run

    cfg = compose_cfg("compress/distill=default", "model=mlp", override)
    with pytest.raises(MLCycleError, match=match):
        run(cfg)
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def test_cli_distill_is_off_by_default(compose_cfg) -> None:  # noqa: ANN001
    from lightning_mlcycle.cli.stages import STAGES

    cfg = compose_cfg()
    assert cfg.compress.distill.enabled is False
    names = [name for name, _, _ in STAGES]
    assert names.index("distill_check") < names.index("fit") < names.index("distill") < names.index("export")


# -- quantization-aware training of the student -----------------------------------------------------
@pytest.mark.slow
def test_student_trained_with_quantization_aware_training(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    from lightning_mlcycle.compression import _pt2e
    from lightning_mlcycle.compression.qat import QuantizationAwareTraining

    teacher = _mlp(32)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule(teacher, _mlp(), input_shape=(N_FEAT,))
    qat = QuantizationAwareTraining(module_name="student", example_input=torch.randn(4, N_FEAT))
    _trainer(tmp_path, epochs=2, callbacks=[qat]).fit(module, _loader())
    assert _pt2e.is_prepared(module.student) and not _pt2e.is_prepared(module.teacher)
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    x, y = _data(8)
    assert module.student(x).shape == (8, N_CLS)  # the fake-quantized student runs (convert: QAT's tests)
