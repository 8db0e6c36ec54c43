"""ThroughputTuner / tune_throughput: validation, the pure core, application, invariance, resume."""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_mlcycle import ArrayDataModule, ClassificationModule
from lightning_mlcycle.models import MLP
from lightning_mlcycle.tuning import (
    LoaderSettings,
    ThroughputResult,
    ThroughputTuner,
    rebuild_dataloader,
    tune_throughput,
)
from lightning_mlcycle.tuning._throughput import (
    Measurement,
    candidate_grid,
    choose,
    epoch_rate,
    measure,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


def _data(n: int = 160, batch_size: int = 16, **kw) -> ArrayDataModule:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    return ArrayDataModule(x, y, batch_size=batch_size, leakage="ignore", **kw)


def _trainer(tmp_path: Path, callbacks=(), epochs: int = 2, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", callbacks=list(callbacks), logger=kw.pop("logger", False),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **kw,
    )


def _module() -> ClassificationModule:
    return ClassificationModule(MLP(2, (6,), hidden=(16,), dropout=0.2), num_classes=2)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_workers": -1}, ValueError, r"`num_workers` cannot be negative, but got num_workers=-1"),
        ({"num_threads": 0}, ValueError, r"`num_threads` must be positive, but got num_threads=0"),
        ({"num_workers": 0, "persistent_workers": True}, ValueError, r"`persistent_workers=True` needs"),
        ({"num_workers": 0, "prefetch_factor": 4}, ValueError, r"`prefetch_factor` needs `num_workers > 0`"),
        ({"num_workers": 1, "prefetch_factor": 0}, ValueError, r"`prefetch_factor` must be a positive int"),
        ({"num_workers": 1.5}, TypeError, r"`num_workers` to be an int, but got 1.5"),
        ({"pin_memory": "yes"}, TypeError, r"`pin_memory` to be a bool"),
    ],
)
def test_loader_settings_rejects_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        LoaderSettings(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_workers": [0, -2]}, ValueError, r"`num_workers` cannot be negative, but got num_workers=-2"),
        ({"num_threads": [0]}, ValueError, r"`num_threads` must be positive"),
        ({"num_workers": ["2"]}, TypeError, r"Expected every entry of `num_workers`"),
        ({"prefetch_factor": [-1]}, ValueError, r"`prefetch_factor` must be a positive int"),
        ({"steps": 0}, ValueError, r"`steps` must be an integer >= 1, but got steps=0"),
        ({"warmup_steps": 0}, ValueError, r"`warmup_steps` must be an integer >= 1"),
        ({"max_time": 0}, ValueError, r"`max_time` must be a positive number of seconds, but got max_time=0"),
        ({"min_speedup": 0.9}, ValueError, r"`min_speedup` must be >= 1.0, but got min_speedup=0.9"),
        ({"persistent_workers": "no"}, TypeError, r"`persistent_workers` to be a bool"),
    ],
)
def test_tuner_rejects_bad_candidates(kwargs, error, match):
    with pytest.raises(error, match=match):
        ThroughputTuner(**kwargs)


def test_tune_throughput_rejects_bad_inputs():
    net = nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="`loader` to be a DataLoader or a function"):
        tune_throughput(net, opt, [1, 2, 3])
    with pytest.raises(TypeError, match="`model` to be a torch.nn.Module"):
        tune_throughput("net", opt, lambda s: [])
    with pytest.raises(TypeError, match="`loader` to be a torch.utils.data.DataLoader"):
        rebuild_dataloader([1], LoaderSettings())


# -- pure core --------------------------------------------------------------------------------
def test_candidate_grid_starts_with_start_and_has_no_duplicates():
    start = LoaderSettings(num_workers=1, persistent_workers=True, num_threads=2)
    grid = candidate_grid(start, num_workers=[0, 1, 1], num_threads=[1, 2])
    assert grid[0] == LoaderSettings(num_workers=1, num_threads=2)  # measured transient
    assert len(grid) == len(set(grid)) == 4
    assert all(not s.persistent_workers for s in grid)


@pytest.mark.parametrize(
    ("startup", "epochs", "persistent", "expected"),
    [
        (0.0, 3, False, 100.0),   # no start-up cost: the steady rate
        (1.0, 3, False, 50.0),    # 1 s of work + 1 s start-up per epoch
        (1.0, 4, True, 80.0),     # persistent: the start-up paid once over 4 epochs
    ],
)
def test_epoch_rate(startup, epochs, persistent, expected):
    m = Measurement(LoaderSettings(num_workers=1), samples=100, seconds=1.0, startup_s=startup)
    got = epoch_rate(m, batches_per_epoch=10, batch_size=10, epochs=epochs, persistent=persistent)
    assert got == pytest.approx(expected)


def test_failed_candidate_scores_zero_and_is_not_chosen():
    bad = Measurement(LoaderSettings(num_threads=2), samples=10, seconds=0.1, error="boom")
    assert epoch_rate(bad, batches_per_epoch=1, batch_size=1, epochs=1, persistent=False) == 0.0
    a = LoaderSettings()
    best, rate, start_rate = choose([(a, 10.0)], a, min_speedup=1.05)
    assert best == a and rate == start_rate == 10.0


def test_measure_reports_a_crashing_candidate():
    def step(batch):
        raise RuntimeError("step failed")

    m = measure(step, [torch.zeros(2)] * 4, LoaderSettings(), steps=2, warmup_steps=1)
    assert m.error is not None and "step failed" in m.error and m.steady_rate == 0.0


def test_result_round_trips_and_renders_table():
    a, b = LoaderSettings(), LoaderSettings(num_workers=2, persistent_workers=True)
    r = ThroughputResult(rows=[(a, 100.0, 110.0, 0.01, None), (b, 200.0, 220.0, 0.2, None)],
                         start=a, best=b, start_rate=100.0, best_rate=200.0, elapsed_s=1.0)
    again = ThroughputResult.from_dict(r.to_dict())
    assert again.best == b and again.speedup == pytest.approx(2.0)
    table = again.table()
    assert "workers=2 persistent prefetch=default threads=1 (chosen) | 200 |" in table
    assert "2.00x" in table


# -- the function on a plain model ---------------------------------------------------------------
class _SlowDataset(Dataset):
    """A costly ``__getitem__`` (decoding stand-in) that sleeps instead of burning a shared CPU."""

    def __init__(self, n: int = 96, delay: float = 0.004) -> None:
        self.x = torch.randn(n, 6)
        self.y = torch.randint(0, 2, (n,))
        self.delay = delay

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return self.x[i], self.y[i]


def test_tune_throughput_finds_workers_for_slow_getitem_and_restores_state():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(2, 6)).sum().backward()
    opt.step()  # optimizer state exists and must survive
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt_before = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    dl = DataLoader(_SlowDataset(), batch_size=8, shuffle=True)
    rng_before = torch.get_rng_state()
    r = tune_throughput(net, opt, dl, num_workers=[0, 2], num_threads=[1], steps=4, warmup_steps=2, epochs=5)
    # 8 samples x 4 ms = 32 ms per batch in the main process; two workers sleep in parallel
    assert r.best.num_workers == 2, r.table()
    assert r.speedup > 1.1, r.table()
    assert r.best.persistent_workers  # several epochs: start the workers once
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(opt_before[k], v) for k, v in opt.state_dict()["state"][0].items())
    assert torch.equal(rng_before, torch.get_rng_state())
    applied = rebuild_dataloader(dl, r.best)
    assert applied.num_workers == 2 and applied.persistent_workers and applied.sampler is dl.sampler


def test_time_budget_skips_candidates():
    net = nn.Linear(6, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    dl = DataLoader(_SlowDataset(n=32, delay=0.01), batch_size=8)
    r = tune_throughput(net, opt, dl, num_workers=[0], num_threads=[1, 2], steps=1, warmup_steps=1,
                        max_time=0.01)
    assert r.skipped >= 1 and len(r.rows) == 1  # only the starting settings were measured
    assert r.best == r.start


# -- the callback -----------------------------------------------------------------------------
def _fit(tmp_path, dm, callbacks=(), threads: int | None = None, **kw) -> ClassificationModule:
    if threads is not None:
        torch.set_num_threads(threads)
    pl.seed_everything(7, workers=True)
    model = _module()
    _trainer(tmp_path, callbacks, **kw).fit(model, datamodule=dm)
    return model


def test_training_is_unchanged_by_the_measurement(tmp_path):
    tuner = ThroughputTuner(num_workers=[0, 1], num_threads=[1, 2], steps=3, warmup_steps=1)
    dm_tuned = _data()
    tuned = _fit(tmp_path, dm_tuned, [tuner], threads=1)
    best = tuner.result.best
    # the same run without the tuner, started directly with the settings it chose
    dm_plain = _data(num_workers=best.num_workers, persistent_workers=best.persistent_workers)
    plain = _fit(tmp_path, dm_plain, threads=best.num_threads)
    for (k, a), b in zip(tuned.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_callback_applies_the_choice_to_datamodule_threads_and_loaders(tmp_path):
    dm = _data(n=200, batch_size=8)
    dm.setup()
    dm._datasets["train"] = _SlowDataset(n=128, delay=0.01)  # a costly __getitem__
    tuner = ThroughputTuner(num_workers=[0, 2], num_threads=[1], steps=4, warmup_steps=2)
    # several epochs, so that starting worker processes (~0.5 s here) pays off
    trainer = _trainer(tmp_path, [tuner], epochs=3, limit_val_batches=0)
    trainer.fit(_module(), datamodule=dm)
    best = tuner.result.best
    assert best.num_workers == 2, tuner.result.table()
    assert dm.num_workers == 2 and dm.persistent_workers == best.persistent_workers
    assert trainer.train_dataloader.num_workers == 2
    assert torch.get_num_threads() == best.num_threads


def test_direct_dataloader_is_rebuilt(tmp_path):
    dl = DataLoader(TensorDataset(torch.randn(64, 6), torch.randint(0, 2, (64,))), batch_size=8, shuffle=True)
    tuner = ThroughputTuner()
    chosen = LoaderSettings(num_workers=1, persistent_workers=True, num_threads=1)
    tuner.load_state_dict({"result": ThroughputResult(start=LoaderSettings(), best=chosen).to_dict()})
    trainer = _trainer(tmp_path, [tuner], epochs=1)
    trainer.fit(_module(), train_dataloaders=dl)
    assert trainer.train_dataloader.num_workers == 1 and trainer.train_dataloader.persistent_workers
    assert dl.num_workers == 0  # the user's object is left alone


def test_table_goes_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    tuner = ThroughputTuner(num_workers=[0], num_threads=[1, 2], steps=2, warmup_steps=1)
    _trainer(tmp_path, [tuner], epochs=1, logger=logger, limit_val_batches=0).fit(_module(), datamodule=_data())
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0}).Reload()
    assert "tuning/throughput_speedup" in acc.Tags()["scalars"]
    text_tags = [t for t in acc.Tags()["tensors"] if t.startswith("tuning/throughput")]
    assert text_tags, acc.Tags()
    text = acc.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert "samples/s" in text and "(chosen)" in text


def test_resume_applies_without_measuring(tmp_path):
    tuner = ThroughputTuner(num_workers=[0], num_threads=[1, 2], steps=2, warmup_steps=1)
    _fit(tmp_path, _data(), [tuner], epochs=1)
    state = tuner.state_dict()
    forced = ThroughputResult.from_dict(state["result"])
    forced.best = LoaderSettings(num_workers=1, persistent_workers=True, num_threads=2)
    fresh = ThroughputTuner(num_workers=[0], num_threads=[1, 2], steps=2, warmup_steps=1)
    fresh.load_state_dict({"result": forced.to_dict()})
    dm = _data()
    _fit(tmp_path, dm, [fresh], epochs=1)
    assert fresh.result.rows == forced.rows  # not measured again
    assert dm.num_workers == 1 and dm.persistent_workers and torch.get_num_threads() == 2
    empty = ThroughputTuner()
    empty.load_state_dict({})
    assert empty.result is None and empty.state_dict() == {}


def test_mlcycle_config_adds_the_tuner(compose_cfg):
    from lightning_mlcycle.cli.context import RunContext
    from lightning_mlcycle.cli.stages.train import build_stage

    for flag, expected in (("false", 0), ("true", 1)):
        cfg = compose_cfg("model=mlp", f"tuning.throughput={flag}")
        ctx = RunContext(cfg=cfg, run_dir=Path(cfg.run_dir))
        build_stage(ctx)
        assert sum(isinstance(c, ThroughputTuner) for c in ctx.trainer.callbacks) == expected
