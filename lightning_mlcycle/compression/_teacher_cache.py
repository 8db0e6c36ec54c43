"""A per-sample cache of teacher outputs for distillation on a fixed training set (private).

Why: the frozen teacher gives the same outputs for the same input in every epoch, so on an
un-augmented training set its forward pass is only needed in the first epoch.

How entries are keyed:

- ``"content"``: a BLAKE2b digest of each sample's bytes. Never wrong (a changed sample is a new
  key), works with any dataset; costs hashing the batch on the CPU.
- ``"index"``: the sample index the batch carries as its third element (``(x, y, index)``), plus a
  cheap fingerprint (sum and sum of squares) of the sample that is checked on every hit, so an
  augmented or changed sample is caught instead of served a stale entry.

How it is invalidated: :meth:`TeacherCache.disable` (the owner calls it when the training data
are augmented, or when :meth:`TeacherCache.end_epoch` reports that inputs changed) drops every
entry and turns the cache off for the rest of the run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable, Sequence

import torch

from lightning_mlcycle._errors import MLCycleError

log = logging.getLogger(__name__)

CACHE_KEYS = ("content", "index")

# After the first full epoch every sample of a fixed training set is a hit; below this rate the
# inputs evidently change between epochs (augmentation, a resampled set) and the cache only costs
# memory. 0.5 leaves room for partial epochs (limit_train_batches) without calling them augmented.
MIN_HIT_RATE = 0.5


class TeacherCache:
    """Teacher outputs (a tuple of tensors per sample) keyed by sample content or index.

    Args:
        key: ``"content"`` or ``"index"`` (see the module docstring).

    Example:
        >>> cache = TeacherCache("content")
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> keys = cache.keys(x)
        >>> cache.lookup(keys, x) is None      # first epoch: a miss
        True
        >>> cache.insert(keys, x, (x * 10,))
        >>> cache.lookup(keys, x)[0][1].tolist()
        [20.0, 30.0]
    """

    def __init__(self, key: str = "content") -> None:
        if key not in CACHE_KEYS:
            raise MLCycleError(f"Expected argument `cache_key` to be one of {list(CACHE_KEYS)}, but got {key!r}.")
        self.key = key
        self.enabled = True
        self.disabled_reason: str | None = None
        self._entries: dict[Hashable, tuple[torch.Tensor, ...]] = {}
        self._fingerprints: dict[Hashable, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self._epoch_hits = 0
        self._epoch_misses = 0
        self._filled = False

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self, x: torch.Tensor, index: torch.Tensor | None = None) -> list[Hashable]:
        """One key per sample of the batch ``x`` (``index``: the batch's sample indices)."""
        if self.key == "index":
            if index is None:
                raise MLCycleError(
                    "`cache_key='index'` needs batches of (x, y, index) with the sample index "
                    "third; got a batch without it. Use cache_key='content' for other datasets."
                )
            return [int(i) for i in index.reshape(-1).tolist()]
        flat = x.detach().reshape(x.shape[0], -1).cpu().contiguous().numpy()
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]

    @staticmethod
    def _fingerprint(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(x.shape[0], -1).double()
        return torch.stack([flat.sum(1), flat.square().sum(1)], dim=1).cpu()

    def lookup(self, keys: Sequence[Hashable], x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The batch's cached outputs stacked, or None unless every sample is cached and unchanged."""
        if not self.enabled:
            return None
        found = [self._entries.get(k) for k in keys]
        if any(f is None for f in found):
            self._count(hit=False, n=len(keys))
            return None
        if self.key == "index":
            stored = torch.stack([self._fingerprints[k] for k in keys])
            if not torch.allclose(stored, self._fingerprint(x), rtol=1e-5, atol=1e-6):
                self.disable(
                    "a cached sample index came back with different content (augmentation or a "
                    "changed dataset)"
                )
                return None
        self._count(hit=True, n=len(keys))
        n_out = len(found[0])  # type: ignore[arg-type]
        return tuple(torch.stack([f[j] for f in found]) for j in range(n_out))  # type: ignore[index]

    def insert(self, keys: Sequence[Hashable], x: torch.Tensor, outputs: Sequence[torch.Tensor]) -> None:
        """Store per-sample slices of ``outputs`` (each with the batch as dimension 0)."""
        if not self.enabled:
            return
        detached = [o.detach() for o in outputs]
        prints = self._fingerprint(x) if self.key == "index" else None
        for i, k in enumerate(keys):
            self._entries[k] = tuple(o[i] for o in detached)
            if prints is not None:
                self._fingerprints[k] = prints[i]

    def _count(self, *, hit: bool, n: int) -> None:
        if hit:
            self.hits += n
            self._epoch_hits += n
        else:
            self.misses += n
            self._epoch_misses += n

    def end_epoch(self, epoch: int) -> float | None:
        """Close an epoch: return its hit rate, and disable the cache if inputs evidently change.

        The first epoch this cache sees (the first of the run, or the first after a resume) fills
        it and is not judged; in every later epoch a hit rate under ``MIN_HIT_RATE`` means the
        samples are not the same from one epoch to the next, and the cache is disabled (content
        keys only; index keys rely on the per-sample fingerprint).
        """
        seen = self._epoch_hits + self._epoch_misses
        rate = self._epoch_hits / seen if seen else None
        # only content keys: a miss there is a sample never seen with this content. An index miss
        # may just be a sample this process has not drawn yet (a DistributedSampler reshuffles the
        # shards every epoch), and changed content under an index is caught by its fingerprint.
        if self.key == "content" and self.enabled and self._filled and rate is not None and rate < MIN_HIT_RATE:
            self.disable(
                f"only {rate:.0%} of the samples were cached in epoch {epoch}: the training "
                f"inputs change between epochs (augmentation?)"
            )
        self._filled = self._filled or seen > 0
        self._epoch_hits = self._epoch_misses = 0
        return rate

    def disable(self, reason: str) -> None:
        """Drop every entry and stop caching for good (logged once with ``reason``)."""
        if self.enabled:
            log.info("Teacher-output cache off: %s; the teacher runs on every batch.", reason)
        self.enabled = False
        self.disabled_reason = reason
        self.clear()

    def clear(self) -> None:
        """Forget every entry (the cache stays on)."""
        self._entries.clear()
        self._fingerprints.clear()
