"""Stratified splits, leakage check, data modules and their bad inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_mlcycle import MLCycleError
from lightning_mlcycle.data import (
    ArrayDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    find_leakage,
    stratified_split,
)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_keeps_class_shares_and_is_disjoint(seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=997, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    parts = stratified_split(labels, (0.7, 0.15, 0.15), seed=seed)
    all_idx = np.concatenate(parts)
    assert len(all_idx) == len(labels) == len(set(all_idx.tolist()))
    whole = np.bincount(labels, minlength=5) / len(labels)
    for part, share in zip(parts, (0.7, 0.15, 0.15), strict=True):
        counts = np.bincount(labels[part], minlength=5)
        # every class within one sample of its exact share
        np.testing.assert_array_less(
            np.abs(counts - share * np.bincount(labels, minlength=5)), 1.0 + 1e-9
        )
        np.testing.assert_allclose(counts / len(part), whole, atol=0.02)


def test_stratified_split_is_reproducible_and_seed_dependent():
    labels = np.repeat(np.arange(4), 50)
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels, seed=3)
    c = stratified_split(labels, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_small_class_appears_in_every_split():
    labels = np.array([0] * 100 + [1] * 3)
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert all(1 in labels[p] for p in parts)


@pytest.mark.parametrize(
    ("fractions", "match"),
    [((0.5, 0.5, 0.5), "summing to 1"), ((1.0,), "two or more"), ((0.9, 0.0, 0.1), "positive")],
)
def test_stratified_split_rejects_bad_fractions(fractions, match):
    with pytest.raises(ValueError, match=match):
        stratified_split([0, 1, 0, 1], fractions)


def test_find_leakage_counts_planted_duplicates():
    report = find_leakage({"train": ["a", "b", "c"], "val": ["x", "a"], "test": ["b", "y", "x"]})
    assert report.total == 3
    assert report.duplicates == {"train/val": 1, "train/test": 1, "val/test": 1}
    assert report.leaked_indices == {"train": [], "val": [1], "test": [0, 2]}


def test_digits_split_is_stratified_and_leak_free():
    dm = DigitsDataModule(seed=0)
    dm.setup()
    y = dm._y.numpy()
    sets = {k: set(v.tolist()) for k, v in dm.indices.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert sum(len(v) for v in sets.values()) == 1797
    whole = np.bincount(y, minlength=10) / len(y)
    for idx in dm.indices.values():
        np.testing.assert_allclose(np.bincount(y[idx], minlength=10) / len(idx), whole, atol=0.02)
    # normalization uses the train split only
    x_train = dm._x[torch.as_tensor(dm.indices["train"])]
    assert torch.allclose(dm.mean.flatten(), x_train.mean().reshape(1))
    x_all = dm._x.mean()
    assert not torch.allclose(dm.mean.flatten(), x_all.reshape(1), atol=1e-7)


def test_array_datamodule_warns_and_drops_planted_duplicates(caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = np.repeat([0, 1, 2], 100)
    dm = ArrayDataModule(x, y, seed=0)
    dm.setup()
    train = dm.indices["train"]
    # plant 7 copies of training rows into val/test positions (same class, so the split is unchanged)
    x2 = x.copy()
    planted = 0
    for name in ("val", "test"):
        for j in dm.indices[name][:10]:
            src = next(i for i in train if y[i] == y[j])
            x2[j] = x[src]
            planted += 1
            if planted == 7:
                break
        if planted == 7:
            break
    with caplog.at_level(logging.WARNING):
        warn_dm = ArrayDataModule(x2, y, seed=0, leakage="warn")
        warn_dm.setup()
    assert warn_dm.leakage_report.total == 7
    assert "7 sample(s) appear in more than one split" in caplog.text
    drop_dm = ArrayDataModule(x2, y, seed=0, leakage="drop")
    drop_dm.setup()
    assert (
        len(drop_dm.indices["val"]) + len(drop_dm.indices["test"])
        == len(dm.indices["val"]) + len(dm.indices["test"]) - 7
    )
    with pytest.raises(MLCycleError, match="appear in more than one split"):
        ArrayDataModule(x2, y, seed=0, leakage="raise").setup()


def test_augmentation_applies_to_train_only():
    from torchvision.transforms import v2

    dm = DigitsDataModule(augmentation=[v2.RandomAffine(degrees=30)], seed=0)
    dm.setup()
    x0 = dm._datasets["train"][0][0]
    x1 = dm._datasets["train"][0][0]
    assert not torch.equal(x0, x1)
    assert torch.equal(dm._datasets["val"][0][0], dm._datasets["val"][0][0])


def _write_images(root, classes, n=8):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            px = np.full((10, 12, 3), (20 * i + 60 * c) % 256, dtype=np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")


def test_image_folder_datamodule_end_to_end(tmp_path):
    _write_images(tmp_path, ["a", "b", "c"])
    dm = ImageFolderDataModule(tmp_path, image_size=(8, 6), channels=3, batch_size=4, seed=0)
    dm.setup()
    assert dm.class_names == ["a", "b", "c"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 8, 6) and y.dtype == torch.int64
    assert sum(len(v) for v in dm.indices.values()) == 24


def test_image_folder_missing_folder_fails_naming_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(
        MLCycleError, match=r"`data.root`: the image folder .*nope.* does not exist"
    ):
        ImageFolderDataModule(missing)


def test_image_folder_with_one_class_fails(tmp_path):
    _write_images(tmp_path, ["only"])
    with pytest.raises(MLCycleError, match=r"holds 1 class\(es\).*at least two sub-folders"):
        ImageFolderDataModule(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "`batch_size` must be a positive integer"),
        ({"num_workers": -1}, "`num_workers` cannot be negative"),
        ({"split": (0.5, 0.5)}, "`split` must be three positive shares"),
        ({"leakage": "maybe"}, "`leakage` to be one of"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(MLCycleError, match=match):
        DigitsDataModule(**kwargs)
