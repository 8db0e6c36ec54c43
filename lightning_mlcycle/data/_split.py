"""Seeded stratified splits and the cross-split leakage check (pure functions)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    *,
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Split sample indices into parts that keep every class's share, reproducibly.

    Each class is shuffled with a generator seeded by ``seed`` and cut by ``fractions`` using
    largest-remainder rounding, so the class proportions of every part match the whole to within
    one sample per class, and the same seed always gives the same split.

    Args:
        labels: the class of each sample.
        fractions: the share of each part (e.g. train, val, test); must be positive and sum to 1.
        seed: the seed of the shuffle.

    Returns:
        One sorted index array per fraction.

    Example:
        >>> labels = [0] * 10 + [1] * 20
        >>> train, val, test = stratified_split(labels, (0.6, 0.2, 0.2), seed=1)
        >>> len(train), len(val), len(test)
        (18, 6, 6)
        >>> sorted(np.bincount(np.asarray(labels)[val]).tolist())
        [2, 4]
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(
            f"Expected argument `labels` to be one-dimensional, but got shape {y.shape}."
        )
    fr = np.asarray(list(fractions), dtype=float)
    if fr.size < 2 or np.any(fr <= 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(
            f"Expected argument `fractions` to hold two or more positive shares summing to 1, "
            f"but got {list(fractions)}."
        )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(idx.size)]
        counts = _largest_remainder(idx.size, fr)
        start = 0
        for p, c in enumerate(counts):
            parts[p].append(idx[start : start + c])
            start += c
    return tuple(np.sort(np.concatenate(p)) if p else np.empty(0, dtype=int) for p in parts)


def _largest_remainder(n: int, fractions: np.ndarray) -> list[int]:
    """Integer counts summing to ``n`` closest to ``n * fractions``.

    Every part gets at least one sample when the class has enough, so small classes still appear
    in validation and test.
    """
    raw = n * fractions
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    if n >= len(fractions):
        for i in np.flatnonzero(counts == 0):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return counts.tolist()


def content_hash(data: bytes) -> str:
    """Stable digest of a sample's raw content (bytes of the array or of the file)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class LeakageReport:
    """What :func:`find_leakage` found: samples whose content appears in more than one split.

    Attributes:
        duplicates: for each pair of splits ``"a/b"``, the number of samples of ``b`` whose content
            also appears in ``a``.
        leaked_indices: for each split, the positions (within that split) of its samples that also
            appear in an earlier split; removing them makes the splits disjoint.
    """

    duplicates: dict[str, int] = field(default_factory=dict)
    leaked_indices: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Number of samples that repeat content of an earlier split."""
        return sum(len(v) for v in self.leaked_indices.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def summary(self) -> str:
        """One line for the log."""
        pairs = ", ".join(f"{k}: {v}" for k, v in self.duplicates.items() if v)
        return f"{self.total} sample(s) appear in more than one split ({pairs or 'none'})"


def find_leakage(hashes: Mapping[str, Iterable[str]]) -> LeakageReport:
    """Count samples whose content hash appears in more than one split.

    Args:
        hashes: split name -> content hash of each of its samples, in split order (the first split
            is the reference, usually ``train``).

    Example:
        >>> report = find_leakage({"train": ["a", "b"], "val": ["b", "c"], "test": ["a", "d"]})
        >>> report.total, report.duplicates
        (2, {'train/val': 1, 'train/test': 1, 'val/test': 0})
        >>> report.leaked_indices["test"]
        [0]
    """
    names = list(hashes)
    seen: dict[str, set[str]] = {}
    report = LeakageReport()
    for j, name in enumerate(names):
        current = list(hashes[name])
        earlier: set[str] = set()
        for i in range(j):
            other = names[i]
            report.duplicates[f"{other}/{name}"] = sum(h in seen[other] for h in current)
            earlier |= seen[other]
        report.leaked_indices[name] = [k for k, h in enumerate(current) if h in earlier]
        seen[name] = set(current)
    return report
