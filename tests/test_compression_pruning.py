"""MagnitudePruning: exact sparsity/threshold, schedules, checkpoints, resume, strict reload, logs."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, TensorDataset

from lightning_mlcycle.compression import (
    MagnitudePruning,
    compute_masks,
    iterative_sparsity,
    magnitude_prune,
    polynomial_sparsity,
    prunable_parameters,
    sparsity_stats,
)


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        # weight decay and momentum would move pruned weights off zero if masks were not re-applied
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


def _loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16)


def _trainer(tmp_path: Path, epochs: int, cb: pl.Callback, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, callbacks=[cb], default_root_dir=tmp_path, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", logger=kw.pop("logger", False),
        enable_checkpointing=kw.pop("enable_checkpointing", False), **kw,
    )


def _zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() == 0 for n, p in model.named_parameters() if n.endswith("weight")}


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.97])
def test_sparsity_is_exact(scope, sparsity):
    net = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5))
    masks = magnitude_prune(net, sparsity=sparsity, scope=scope)
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(sparsity * total) if scope == "global" else True
    if scope == "layer":
        for m in masks.values():
            assert int((~m).sum()) == round(sparsity * m.numel())
    # the pruned weights are the smallest: every kept |w| >= every pruned |w| (global ranking)
    if scope == "global" and 0 < sparsity:
        kept = torch.cat([p.detach().abs()[m] for p, m in zip((net[0].weight, net[2].weight), masks.values(), strict=True)])
        assert int((kept == 0).sum()) == 0


def test_threshold_is_exact():
    w = {"a": torch.tensor([[0.05, -0.2], [0.3, -0.01]]), "b": torch.tensor([0.1, 0.099])}
    masks = compute_masks(w, threshold=0.1)
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False]


def test_ties_do_not_change_the_count():
    w = {"a": torch.ones(10)}
    assert int((~compute_masks(w, sparsity=0.3)["a"]).sum()) == 3


def test_previous_masks_never_regrow():
    w = torch.tensor([5.0, 0.1, 3.0, 0.2])
    prev = {"a": torch.tensor([False, True, True, True])}  # the largest weight was pruned before
    m = compute_masks({"a": w}, sparsity=0.5, previous=prev)["a"]
    assert m.tolist() == [False, False, True, True]


def test_schedules():
    assert polynomial_sparsity(0.0, 0.9) == 0.0
    assert polynomial_sparsity(1.0, 0.9) == pytest.approx(0.9)
    # cubic: most pruning early (Zhu & Gupta 2017)
    assert polynomial_sparsity(0.25, 0.9) > 0.5
    levels = [iterative_sparsity(k, 3, 0.875) for k in (1, 2, 3)]
    assert levels == pytest.approx([0.5, 0.75, 0.875])
    cb = MagnitudePruning(sparsity=0.875, schedule="iterative", fine_tune_epochs=1)
    got = []
    for epoch in range(5):
        level = cb.level_at_epoch(epoch, max_epochs=4)
        if level is not None:
            cb.rounds_done += 1
            got.append(round(level, 4))
    assert got == [0.5, 0.75, 0.875]  # rounds at epochs 0, 1, 2; epoch 3 fine-tunes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0}, r"`sparsity` must be in \[0, 1\), but got sparsity=1.0"),
        ({"sparsity": -0.1}, r"`sparsity` must be in \[0, 1\)"),
        ({"sparsity": None}, "Give `sparsity`"),
        ({"threshold": -1.0}, "`threshold` cannot be negative"),
        ({"scope": "model"}, r"`scope` to be one of \['global', 'layer'\]"),
        ({"schedule": "cubic"}, r"`schedule` to be one of \['one_shot', 'iterative', 'gradual'\]"),
        ({"every_n_steps": 0}, "`every_n_steps` must be an integer >= 1"),
        ({"layers": "net.0"}, "`layers` must be a list of module names"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MagnitudePruning(**kwargs)


def test_unknown_layer_names_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"\['net.9'\] are not modules .*valid names: \['net.0', 'net.2'\]"):
        prunable_parameters(Tiny(), ["net.9"])
    cb = MagnitudePruning(sparsity=0.5, layers=["net.9"])
    with pytest.raises(ValueError, match="valid names"):
        _trainer(tmp_path, 1, cb).fit(Tiny(), _loader())


def test_fit_keeps_zeros_and_loads_strictly_into_a_plain_model(tmp_path):
    model = Tiny()
    cb = MagnitudePruning(sparsity=0.8, schedule="one_shot")
    _trainer(tmp_path, 3, cb).fit(model, _loader())
    stats = sparsity_stats(cb.masks)
    assert stats["overall"] == round(0.8 * 352) / 352
    for name, mask in cb.masks.items():
        w = dict(model.named_parameters())[name]
        assert torch.all(w[~mask] == 0)  # AdamW's decay and momentum did not regrow them
    plain = Tiny()
    plain.load_state_dict(model.state_dict(), strict=True)
    assert set(plain.state_dict()) == set(model.state_dict())
    torch.export.export(model.net.eval(), (torch.zeros(2, 8),))  # no hooks or wrappers in the way


def test_gradual_schedule_reaches_target_and_rewind(tmp_path):
    model = Tiny()
    init = model.net[0].weight.detach().clone()
    cb = MagnitudePruning(sparsity=0.9, schedule="gradual", every_n_steps=2, fine_tune_epochs=1,
                          rewind=True)
    _trainer(tmp_path, 3, cb).fit(model, _loader())
    assert cb.rounds_done >= 3
    assert sparsity_stats(cb.masks)["overall"] == pytest.approx(0.9, abs=1e-3)
    mask = cb.masks["net.0.weight"]
    # after the last round the survivors restarted from their initial values, then trained
    assert not torch.equal(model.net[0].weight[mask], init[mask])


def test_masks_survive_checkpoint_and_resume(tmp_path):
    model = Tiny()
    cb = MagnitudePruning(sparsity=0.7, schedule="iterative", fine_tune_epochs=0)
    trainer = _trainer(tmp_path, 2, cb)
    trainer.fit(model, _loader())
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)["callbacks"][cb.state_key]
    assert set(state["masks"]) == {"net.0.weight", "net.2.weight"}
    masks_before = {k: v.clone() for k, v in cb.masks.items()}

    model2, cb2 = Tiny(), MagnitudePruning(sparsity=0.7, schedule="iterative", fine_tune_epochs=0)
    _trainer(tmp_path, 4, cb2).fit(model2, _loader(), ckpt_path=ckpt)
    # the masks came back from the checkpoint; later rounds only added zeros
    for name, before in masks_before.items():
        after = cb2.masks[name]
        assert not torch.any(after & ~before)
        w = dict(model2.named_parameters())[name]
        assert torch.all(w[~before] == 0)


def test_sparsity_goes_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    cb = MagnitudePruning(sparsity=0.5)
    _trainer(tmp_path, 2, cb, logger=logger, log_every_n_steps=1).fit(Tiny(), _loader())
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "prune/sparsity" in tags and "prune/sparsity/net.0.weight" in tags
    assert acc.Scalars("prune/sparsity")[-1].value == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_mlcycle_compress_stages_end_to_end(compose_cfg):
    """Default prune stage + low rank + compact on the digits CNN: models, files, report, TensorBoard."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_mlcycle.cli.main import run
    from lightning_mlcycle.compression import load_factorized
    from lightning_mlcycle.models import SmallCNN

    cfg = compose_cfg("export.enabled=false", "compress/lowrank=default", "compress/compact=default",
                      "compress.prune.fine_tune_epochs=1", "compress.lowrank.fine_tune_epochs=1",
                      "compress.compact.fine_tune_epochs=1", "model.backbone.width=8")
    ctx = run(cfg)
    assert set(ctx.extras["models"]) >= {"pruned", "lowrank", "compact"}
    out = ctx.run_dir / "compressed"
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"dense", "pruned", "lowrank", "compact"}
    assert report["pruned"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert report["pruned"]["nonzero_params"] < 0.3 * report["dense"]["nonzero_params"]
    assert report["lowrank"]["params"] < report["dense"]["params"]
    assert report["compact"]["macs"] < report["dense"]["macs"]
    assert ctx.summary["compress/pruned/accuracy"] == report["pruned"]["accuracy"]
    # the pruned weights load strictly into a plain backbone
    plain = SmallCNN(10, (1, 8, 8), width=8, dropout=0.1)
    plain.load_state_dict(torch.load(out / "pruned.pt", weights_only=True), strict=True)
    again = load_factorized(out / "lowrank.pt")  # rebuilt from the saved model config
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(again(x), ctx.extras["models"]["lowrank"](x))
    acc = EventAccumulator(str(ctx.run_dir / "tensorboard" / "compress_prune"))
    acc.Reload()
    assert "prune/sparsity" in acc.Tags()["scalars"]
    main = EventAccumulator(str(ctx.run_dir / "tensorboard"))
    main.Reload()
    assert "compress/pruned/accuracy" in main.Tags()["scalars"]
