"""Pure core of the throughput tuner: loader settings, candidate grids, timing and the choice.

Nothing here knows about Lightning: a measurement is "build a loader for these settings, run real
training steps on its batches, time them". The callback in :mod:`.throughput` supplies the step
(the Trainer's own training step) and applies the choice.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class LoaderSettings:
    """One point of the search: DataLoader options plus torch's intra-op thread count.

    Args:
        num_workers: DataLoader worker processes (0 loads in the training process).
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        pin_memory: page-locked host batches for faster copies to a GPU.
        prefetch_factor: batches each worker loads ahead (``None``: torch's default; needs
            ``num_workers > 0`` otherwise).
        num_threads: ``torch.set_num_threads`` value for the training process.

    Example:
        >>> LoaderSettings(num_workers=2, persistent_workers=True, num_threads=1).describe()
        'workers=2 persistent prefetch=default threads=1'
        >>> LoaderSettings(num_workers=-1)
        Traceback (most recent call last):
        ...
        ValueError: `num_workers` cannot be negative, but got num_workers=-1.
    """

    num_workers: int = 0
    persistent_workers: bool = False
    pin_memory: bool = False
    prefetch_factor: int | None = None
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("num_workers", "num_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Expected argument `{name}` to be an int, but got {value!r}.")
        if self.num_workers < 0:
            raise ValueError(
                f"`num_workers` cannot be negative, but got num_workers={self.num_workers}."
            )
        if self.num_threads < 1:
            raise ValueError(
                f"`num_threads` must be positive, but got num_threads={self.num_threads}."
            )
        for name in ("persistent_workers", "pin_memory"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"Expected argument `{name}` to be a bool, but got {getattr(self, name)!r}."
                )
        if self.prefetch_factor is not None:
            pf = self.prefetch_factor
            if not isinstance(pf, int) or isinstance(pf, bool) or pf < 1:
                raise ValueError(
                    f"`prefetch_factor` must be a positive int or None, but got {pf!r}."
                )
        if self.num_workers == 0 and self.persistent_workers:
            raise ValueError(
                "`persistent_workers=True` needs `num_workers > 0`, but got num_workers=0."
            )
        if self.num_workers == 0 and self.prefetch_factor is not None:
            raise ValueError(
                f"`prefetch_factor` needs `num_workers > 0`, but got num_workers=0 and "
                f"prefetch_factor={self.prefetch_factor}."
            )

    def loader_kwargs(self) -> dict[str, Any]:
        """The ``DataLoader`` keyword arguments of these settings."""
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "persistent_workers": self.persistent_workers,
            "pin_memory": self.pin_memory,
        }
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs

    def describe(self) -> str:
        """A short one-line label, e.g. ``workers=2 persistent prefetch=4 threads=1``."""
        parts = [f"workers={self.num_workers}"]
        if self.num_workers:
            parts.append("persistent" if self.persistent_workers else "transient")
            parts.append(f"prefetch={self.prefetch_factor or 'default'}")
        if self.pin_memory:
            parts.append("pinned")
        parts.append(f"threads={self.num_threads}")
        return " ".join(parts)


def settings_of(loader: Any, num_threads: int | None = None) -> LoaderSettings:
    """The :class:`LoaderSettings` a ``DataLoader`` (or an object with such attributes) uses now."""
    workers = int(getattr(loader, "num_workers", 0) or 0)
    prefetch = getattr(loader, "prefetch_factor", None) if workers else None
    return LoaderSettings(
        num_workers=workers,
        persistent_workers=bool(getattr(loader, "persistent_workers", False)) and workers > 0,
        pin_memory=bool(getattr(loader, "pin_memory", False)),
        prefetch_factor=None if prefetch in (None, 2) else int(prefetch),
        num_threads=int(num_threads or torch.get_num_threads()),
    )


def _as_tuple(name: str, values: Any, kind: type | tuple[type, ...]) -> tuple[Any, ...]:
    if values is None:
        return ()
    items = (
        tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else (values,)
    )
    for v in items:
        if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
            raise TypeError(f"Expected every entry of `{name}` to be {kind}, but got {v!r}.")
    return items


def candidate_grid(
    start: LoaderSettings,
    *,
    num_workers: Sequence[int] | None = None,
    num_threads: Sequence[int] | None = None,
    prefetch_factor: Sequence[int | None] | None = None,
    pin_memory: Sequence[bool] | None = None,
    persistent_workers: bool = True,
) -> list[LoaderSettings]:
    """The settings to measure, the starting ``start`` first, duplicates removed.

    ``None`` for a dimension means "a small default set": workers and threads ``{1, n_cpus}`` plus
    0 workers and the starting value; prefetch only the starting value; pin memory only the
    starting value. Every workers > 0 candidate is listed transient; whether it should be
    ``persistent`` is decided from the measured worker start-up cost (see :func:`epoch_rate`).

    Example:
        >>> grid = candidate_grid(LoaderSettings(), num_workers=[0, 2], num_threads=[1, 2])
        >>> [s.describe() for s in grid]  # doctest: +NORMALIZE_WHITESPACE
        ['workers=0 threads=1', 'workers=0 threads=2', 'workers=2 transient prefetch=default threads=1',
         'workers=2 transient prefetch=default threads=2']
        >>> candidate_grid(LoaderSettings(), num_workers=[-1])
        Traceback (most recent call last):
        ...
        ValueError: `num_workers` cannot be negative, but got num_workers=-1.
    """
    cpus = available_cpus()
    workers = _as_tuple("num_workers", num_workers, int) or (0, 1, cpus)
    threads = _as_tuple("num_threads", num_threads, int) or (1, cpus)
    prefetch = _as_tuple("prefetch_factor", prefetch_factor, int) or (start.prefetch_factor,)
    pins = _as_tuple("pin_memory", pin_memory, bool) or (start.pin_memory,)
    base = replace(start, persistent_workers=False)
    out: list[LoaderSettings] = [base]
    for w, t, pf, pin in itertools.product(workers, threads, prefetch, pins):
        # validates (negative workers, zero threads, bad prefetch) with the dataclass's messages
        cand = LoaderSettings(
            num_workers=w, num_threads=t, pin_memory=pin, prefetch_factor=pf if w > 0 else None
        )
        if cand not in out:
            out.append(cand)
    if not isinstance(persistent_workers, bool):
        raise TypeError(
            f"Expected argument `persistent_workers` to be a bool, but got {persistent_workers!r}."
        )
    return out


@dataclass
class Measurement:
    """What one candidate did: steady-state step time and the cost of starting an epoch.

    Attributes:
        settings: the candidate (always measured transient; see :func:`epoch_rate`).
        samples: samples processed in the timed steps.
        seconds: time of the timed steps.
        startup_s: extra time of the first batch of an epoch (iterator and worker start-up).
        error: why the candidate failed, or None.
    """

    settings: LoaderSettings
    samples: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    error: str | None = None

    @property
    def steady_rate(self) -> float:
        """Samples per second once the pipeline runs (0 for a failed candidate)."""
        return self.samples / self.seconds if self.seconds > 0 and not self.error else 0.0


def epoch_rate(
    m: Measurement, *, batches_per_epoch: float, batch_size: float, epochs: int, persistent: bool
) -> float:
    """Estimated samples/s over a whole training run of ``epochs`` epochs.

    One epoch costs ``batches_per_epoch`` steady steps plus the start-up cost (creating the
    iterator, forking workers and filling their queues). Persistent workers pay that cost once per
    run instead of once per epoch, which is the whole point of the option (torch docs,
    ``DataLoader(persistent_workers=...)``).

    Example:
        >>> m = Measurement(LoaderSettings(num_workers=1), samples=100, seconds=1.0, startup_s=0.5)
        >>> epoch_rate(m, batches_per_epoch=10, batch_size=10, epochs=5, persistent=False)
        66.66666666666667
        >>> round(epoch_rate(m, batches_per_epoch=10, batch_size=10, epochs=5, persistent=True), 1)
        90.9
    """
    rate = m.steady_rate
    if rate <= 0:
        return 0.0
    samples = batches_per_epoch * batch_size
    startup = m.startup_s / max(1, epochs) if persistent else m.startup_s
    return samples / (samples / rate + startup)


@dataclass
class ThroughputResult:
    """The outcome of a search: every row of the table, the starting and the chosen settings.

    Attributes:
        rows: ``(settings, estimated samples/s, steady samples/s, start-up s, error)`` per candidate.
        start: the settings training started with.
        best: the fastest settings (``start`` unless a candidate beat it by ``min_speedup``).
        start_rate: estimated samples/s of ``start``.
        best_rate: estimated samples/s of ``best``.
        elapsed_s: time the search took.
        skipped: candidates not measured because the time budget ran out.
    """

    rows: list[tuple[LoaderSettings, float, float, float, str | None]] = field(default_factory=list)
    start: LoaderSettings = field(default_factory=LoaderSettings)
    best: LoaderSettings = field(default_factory=LoaderSettings)
    start_rate: float = 0.0
    best_rate: float = 0.0
    elapsed_s: float = 0.0
    skipped: int = 0

    @property
    def speedup(self) -> float:
        """``best_rate / start_rate`` (1.0 when nothing was faster)."""
        return self.best_rate / self.start_rate if self.start_rate > 0 else 1.0

    def table(self) -> str:
        """The result as a Markdown table, fastest first, chosen row marked."""
        lines = [
            "| settings | samples/s (epoch est.) | samples/s (steady) | start-up s | vs start |",
            "|---|---:|---:|---:|---:|",
        ]
        for s, rate, steady, startup, err in sorted(self.rows, key=lambda r: -r[1]):
            mark = " (chosen)" if s == self.best else (" (start)" if s == self.start else "")
            if err:
                lines.append(f"| {s.describe()}{mark} | failed | | | {err} |")
                continue
            rel = rate / self.start_rate if self.start_rate > 0 else float("nan")
            lines.append(
                f"| {s.describe()}{mark} | {rate:.0f} | {steady:.0f} | {startup:.3f} | {rel:.2f}x |"
            )
        lines.append("")
        lines.append(
            f"Chosen: {self.best.describe()} ({self.speedup:.2f}x the starting "
            f"{self.start.describe()}); search took {self.elapsed_s:.1f} s"
            + (
                f", {self.skipped} candidate(s) skipped by the time budget."
                if self.skipped
                else "."
            )
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also the tuner callback's checkpoint state)."""
        return {
            "rows": [
                {"settings": asdict(s), "rate": r, "steady": st, "startup_s": su, "error": e}
                for s, r, st, su, e in self.rows
            ],
            "start": asdict(self.start),
            "best": asdict(self.best),
            "start_rate": self.start_rate,
            "best_rate": self.best_rate,
            "elapsed_s": self.elapsed_s,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ThroughputResult:
        """Inverse of :meth:`to_dict`."""
        rows = [
            (
                LoaderSettings(**r["settings"]),
                r["rate"],
                r["steady"],
                r["startup_s"],
                r.get("error"),
            )
            for r in d.get("rows", [])
        ]
        return cls(
            rows=rows,
            start=LoaderSettings(**d["start"]),
            best=LoaderSettings(**d["best"]),
            start_rate=float(d.get("start_rate", 0.0)),
            best_rate=float(d.get("best_rate", 0.0)),
            elapsed_s=float(d.get("elapsed_s", 0.0)),
            skipped=int(d.get("skipped", 0)),
        )


def choose(
    rows: Sequence[tuple[LoaderSettings, float]], start: LoaderSettings, *, min_speedup: float
) -> tuple[LoaderSettings, float, float]:
    """Pick the fastest row; keep ``start`` unless the winner beats it by ``min_speedup``.

    Timings on a shared machine are noisy, so a switch needs a margin (the same reasoning as
    Lightning's ``EarlyStopping(min_delta=...)``). Returns ``(best, best_rate, start_rate)``.

    Example:
        >>> a, b = LoaderSettings(), LoaderSettings(num_threads=2)
        >>> choose([(a, 100.0), (b, 103.0)], a, min_speedup=1.05)[0] == a
        True
        >>> choose([(a, 100.0), (b, 150.0)], a, min_speedup=1.05)[0] == b
        True
    """
    start_rate = max((r for s, r in rows if s == start), default=0.0)
    best, best_rate = max(rows, key=lambda r: r[1]) if rows else (start, 0.0)
    if start_rate > 0 and best_rate < start_rate * min_speedup:
        return start, start_rate, start_rate
    return best, best_rate, start_rate


def _batches(loader: Iterable[Any], n: int) -> Iterator[tuple[Any, float]]:
    """Yield ``n`` batches with the time each took to arrive; restart the loader when it ends."""
    produced = 0
    while produced < n:
        t0 = time.perf_counter()
        it = iter(loader)
        got_any = False
        try:
            while produced < n:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                got_any = True
                produced += 1
                yield batch, time.perf_counter() - t0
                t0 = time.perf_counter()
        finally:
            # shut non-persistent workers down now rather than at garbage collection
            shutdown = getattr(it, "_shutdown_workers", None)
            if callable(shutdown):
                shutdown()
            del it
        if not got_any:
            raise ValueError("The dataloader produced no batches.")


def measure(
    step: Callable[[Any], int],
    loader: Iterable[Any],
    settings: LoaderSettings,
    *,
    steps: int,
    warmup_steps: int,
    max_seconds: float = math.inf,
    keep_going: Callable[[bool], bool] = lambda ok: ok,
) -> Measurement:
    """Run ``warmup_steps + steps`` real training steps on ``loader`` and time them.

    After ``max_seconds`` the warm-up is cut short and one more step is timed (a slow candidate,
    e.g. an oversubscribed one, must not eat the whole budget); ``keep_going`` lets a distributed
    caller take that decision on one rank for all.

    ``step(batch)`` trains on one batch and returns its number of samples. The first batch's
    extra time over a steady step is the epoch start-up cost; the warm-up steps (at least the
    batches the workers prefetch, plus one) are not timed.
    """
    if settings.num_workers > 0:
        # workers fill `num_workers * prefetch_factor` batches ahead while the first arrives;
        # timing those would measure the buffer, not the pipeline, so drain them untimed first
        buffered = settings.num_workers * (settings.prefetch_factor or 2)
        warmup_steps = max(warmup_steps, buffered + 1)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(settings.num_threads)
    m = Measurement(settings)
    times: list[float] = []
    first = 0.0
    deadline = time.perf_counter() + max_seconds
    batches = _batches(loader, warmup_steps + steps)
    try:
        for i, (batch, wait) in enumerate(batches):
            t0 = time.perf_counter()
            n = int(step(batch))
            elapsed = wait + time.perf_counter() - t0
            if i == 0:
                first = elapsed
            elif i >= warmup_steps:
                times.append(elapsed)
                m.samples += n
            if i >= warmup_steps + steps - 1:
                break
            if not keep_going(time.perf_counter() < deadline):
                if times:
                    break
                warmup_steps = min(warmup_steps, i + 1)  # out of time: time one more step, stop
        m.seconds = float(sum(times))
        typical = statistics.median(times) if times else first
        m.startup_s = max(0.0, first - typical)
    except Exception as err:  # noqa: BLE001 - a candidate that crashes (e.g. workers) is reported
        m.error = f"{type(err).__name__}: {err}"[:200]
        log.warning("Throughput candidate %s failed: %s", settings.describe(), m.error)
    finally:
        batches.close()  # shuts the candidate's workers down now
        torch.set_num_threads(prev_threads)
    return m


def search(
    step: Callable[[Any], int],
    make_loader: Callable[[LoaderSettings], Iterable[Any]],
    candidates: Sequence[LoaderSettings],
    *,
    start: LoaderSettings,
    steps: int,
    warmup_steps: int,
    max_time: float,
    epochs: int,
    min_speedup: float,
    allow_persistent: bool = True,
    batches_per_epoch: float | None = None,
    keep_going: Callable[[bool], bool] = lambda ok: ok,
    reduce_rate: Callable[[float], float] = lambda r: r,
) -> ThroughputResult:
    """Measure ``candidates`` in order within about ``max_time`` seconds and choose the fastest.

    Each candidate gets an equal share of ``max_time`` (at least one timed step); no candidate is
    started after ``max_time``.

    ``keep_going(local_ok)`` and ``reduce_rate(rate)`` let a distributed caller make every rank
    take the same decisions (rank zero's clock, the mean rate over ranks); by default they are
    the identity.
    """
    t_start = time.perf_counter()
    result = ThroughputResult(start=start)
    scored: list[tuple[LoaderSettings, float]] = []
    for i, cand in enumerate(candidates):
        # the first candidate (the starting settings) is always measured
        within = i == 0 or time.perf_counter() - t_start < max_time
        if not keep_going(within):
            result.skipped = len(candidates) - i
            break
        loader = make_loader(cand)
        m = measure(
            step,
            loader,
            cand,
            steps=steps,
            warmup_steps=warmup_steps,
            max_seconds=max_time / len(candidates),
            keep_going=keep_going,
        )
        del loader
        bs = m.samples / max(1, steps) if m.samples else 1.0
        n_batches = batches_per_epoch or float(steps + warmup_steps)
        variants = [cand]
        if cand.num_workers > 0 and allow_persistent:
            variants.append(replace(cand, persistent_workers=True))
        for v in variants:
            est = epoch_rate(
                m,
                batches_per_epoch=n_batches,
                batch_size=bs,
                epochs=epochs,
                persistent=v.persistent_workers,
            )
            est = reduce_rate(est)
            steady = reduce_rate(m.steady_rate)
            result.rows.append((v, est, steady, m.startup_s, m.error))
            if not m.error and est > 0:
                scored.append((v, est))
    # the starting settings may have been persistent: score them under their own name
    start_transient = replace(start, persistent_workers=False)
    if start.persistent_workers and not any(s == start for s, _ in scored):
        scored += [(start, r) for s, r in scored if s == start_transient]
    result.best, result.best_rate, result.start_rate = choose(
        scored, start, min_speedup=min_speedup
    )
    result.elapsed_s = time.perf_counter() - t_start
    return result


# -- keeping training unchanged by the measurement ---------------------------------------------
@contextlib.contextmanager
def preserved_training_state(
    module: nn.Module,
    optimizers: Sequence[Any] = (),
    generators: Sequence[torch.Generator] = (),
) -> Iterator[None]:
    """Restore ``module``'s weights and buffers, the optimizers and every RNG on exit.

    ``generators`` are extra ``torch.Generator`` objects to rewind, e.g. a DataLoader's own
    (its shuffling would otherwise be advanced by the measurement).

    The measurement runs real optimizer steps (so it times what training really does); this puts
    everything back so the run afterwards is the run it would have been. torchmetrics metrics
    inside ``module`` are reset (their state is not in ``state_dict``).
    """
    model_state = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=False).items()}
    opt_states = [copy.deepcopy(o.state_dict()) for o in optimizers]
    grads = {
        n: (None if p.grad is None else p.grad.detach().clone())
        for n, p in module.named_parameters()
    }
    rng = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
    }
    gen_states = [(g, g.get_state()) for g in generators]
    training = module.training
    try:
        yield
    finally:
        module.load_state_dict(model_state)
        for o, s in zip(optimizers, opt_states, strict=True):
            o.load_state_dict(s)
        for n, p in module.named_parameters():
            p.grad = grads.get(n)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        for g, state in gen_states:
            g.set_state(state)
        module.train(training)
        try:
            from torchmetrics import Metric

            for sub in module.modules():
                if isinstance(sub, Metric):
                    sub.reset()
        except ImportError:  # pragma: no cover - torchmetrics ships with lightning
            pass


# -- loaders ----------------------------------------------------------------------------------
_DATALOADER_ARGS = (
    "collate_fn",
    "worker_init_fn",
    "generator",
    "timeout",
    "multiprocessing_context",
    "pin_memory_device",
    "in_order",
)


def rebuild_dataloader(loader: DataLoader, settings: LoaderSettings) -> DataLoader:
    """A new plain ``DataLoader`` over the same dataset and batches with ``settings`` applied.

    Keeps the dataset, the batch sampler (so batch size, shuffling and ``drop_last`` are kept),
    the collate function, worker init function and generator.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> dl = DataLoader(TensorDataset(torch.zeros(8, 2)), batch_size=4, shuffle=True)
        >>> new = rebuild_dataloader(dl, LoaderSettings(num_workers=1, persistent_workers=True))
        >>> new.num_workers, new.persistent_workers, new.sampler is dl.sampler, new.batch_size
        (1, True, True, 4)
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"Expected argument `loader` to be a torch.utils.data.DataLoader, but got {type(loader).__name__}."
        )
    kwargs: dict[str, Any] = {k: getattr(loader, k) for k in _DATALOADER_ARGS if hasattr(loader, k)}
    iterable = isinstance(loader.dataset, IterableDataset)
    if iterable or loader.batch_sampler is None or type(loader.batch_sampler) is BatchSampler:
        # automatic batching: pass sampler + batch size, so Lightning can still swap the sampler
        # for a DistributedSampler under DDP
        kwargs.update(batch_size=loader.batch_size, drop_last=loader.drop_last)
        if not iterable:
            kwargs["sampler"] = loader.sampler
    else:
        kwargs["batch_sampler"] = loader.batch_sampler
    kwargs.update(settings.loader_kwargs())
    return DataLoader(loader.dataset, **kwargs)


def loader_length(loader: Any) -> float | None:
    """``len(loader)`` when it has one, else None (iterable datasets)."""
    try:
        n = len(loader)
    except TypeError:
        return None
    return float(n) if n and not math.isinf(n) else None
