"""Drift statistics on torch tensors (pure functions, no state).

Everything here takes two samples (``reference``, ``window``) as tensors and returns tensors, so it
runs on the CPU or a GPU alike and can be unit-tested without a model.
"""

from __future__ import annotations

import math

import torch

_EPS = 1e-12


def _as_2d(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"Expected argument `{name}` to be a torch.Tensor, but got {type(x).__name__}."
        )
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(
            f"Expected argument `{name}` to be (N, D) or (N,), but got shape {tuple(x.shape)}."
        )
    return x.to(torch.float64) if not x.is_floating_point() else x


def ks_statistic(reference: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-feature two-sample Kolmogorov-Smirnov statistic ``D = sup |F_ref - F_win|``.

    Vectorized over features: one sort of the pooled sample per feature, ties handled exactly
    (the empirical CDFs are compared only after the last of a run of equal values).

    Args:
        reference: ``(N, D)`` (or ``(N,)``) reference sample.
        window: ``(M, D)`` (or ``(M,)``) sample to compare.

    Returns:
        ``(D,)`` statistics in [0, 1].

    Example:
        >>> ks_statistic(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([10.0, 11.0]))
        tensor([1.])
    """
    ref, win = _as_2d(reference, "reference"), _as_2d(window, "window")
    if ref.shape[1] != win.shape[1]:
        raise ValueError(
            f"`reference` and `window` must have the same number of features, but got "
            f"{ref.shape[1]} and {win.shape[1]}."
        )
    return ks_statistic_batched(ref[None], win[None].to(ref.dtype))[0]


def ks_statistic_batched(reference: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """:func:`ks_statistic` for a batch of sample pairs: ``(B, N, D)`` and ``(B, M, D)`` -> ``(B, D)``.

    Example:
        >>> ks_statistic_batched(torch.zeros(2, 5, 1), torch.ones(2, 3, 1)).shape
        torch.Size([2, 1])
    """
    n, m = reference.shape[1], window.shape[1]
    pooled = torch.cat([reference, window.to(reference.dtype)], dim=1)
    values, order = torch.sort(pooled, dim=1)
    step = torch.cat(
        [
            torch.full((n,), 1.0 / n, dtype=torch.float64, device=pooled.device),
            torch.full((m,), -1.0 / m, dtype=torch.float64, device=pooled.device),
        ]
    )
    diff = torch.cumsum(step[order], dim=1)
    # inside a run of ties the CDFs are not defined between the tied values: only compare at
    # the last element of each run
    last_of_run = torch.ones_like(values, dtype=torch.bool)
    last_of_run[:, :-1] = values[:, 1:] != values[:, :-1]
    return (
        torch.where(last_of_run, diff.abs(), torch.zeros_like(diff)).amax(dim=1).to(torch.float32)
    )


def kolmogorov_sf(x: torch.Tensor, terms: int = 100) -> torch.Tensor:
    """Survival function of the Kolmogorov distribution, ``Q(x) = 2 sum (-1)^(k-1) exp(-2 k^2 x^2)``.

    Example:
        >>> round(float(kolmogorov_sf(torch.tensor(1.36))), 3)
        0.049
    """
    x = x.to(torch.float64)
    k = torch.arange(1, terms + 1, dtype=torch.float64, device=x.device)
    sign = torch.where(k % 2 == 1, 1.0, -1.0)
    series = 2.0 * (sign * torch.exp(-2.0 * k**2 * x[..., None] ** 2)).sum(-1)
    # the series converges slowly near 0, where Q is 1 to double precision anyway
    return torch.where(x < 0.2, torch.ones_like(x), series.clamp(0.0, 1.0))


def ks_pvalues(statistic: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Asymptotic two-sample KS p-values with Stephens' small-sample correction.

    ``p = Q((sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) * D)`` with ``ne = n m / (n + m)`` (Stephens 1970;
    Press et al., *Numerical Recipes*, 14.3). Ties (discrete features) make it conservative, which
    the calibrated detectors correct.

    Example:
        >>> [round(float(p), 4) for p in ks_pvalues(torch.tensor([0.0, 0.15, 0.5]), 100, 100)]
        [1.0, 0.193, 0.0]
    """
    en = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((en + 0.12 + 0.11 / en) * statistic.to(torch.float64))


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x`` and ``y`` (clamped at 0)."""
    xx = (x * x).sum(1, keepdim=True)
    yy = (y * y).sum(1, keepdim=True)
    return (xx + yy.T - 2.0 * x @ y.T).clamp_min(0.0)


def median_bandwidth(x: torch.Tensor, max_samples: int = 1000) -> float:
    """The median heuristic: the median pairwise distance between samples (Gretton et al., 2012).

    Example:
        >>> median_bandwidth(torch.tensor([[0.0], [1.0], [3.0]]))
        2.0
    """
    x = _as_2d(x, "x")[:max_samples]
    d = pairwise_sq_dists(x, x)
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    med = torch.sqrt(d[iu[0], iu[1]]).median()
    return float(med) if float(med) > 0 else 1.0


def mmd_permutation_test(
    reference: torch.Tensor,
    window: torch.Tensor,
    *,
    bandwidth: float,
    permutations: int = 200,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Gaussian-kernel MMD^2 between two samples and its permutation p-value.

    The kernel matrix of the pooled sample is built once; each permutation is then a matrix
    product with a batch of random +-1 labelings, so 200 permutations cost about as much as one
    kernel matrix. The p-value ``(1 + #{perm >= observed}) / (1 + permutations)`` is exact under
    exchangeability (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012): the false-alarm rate
    is at most the level for any sample sizes.

    Args:
        reference: ``(N, D)`` reference sample.
        window: ``(M, D)`` sample to compare.
        bandwidth: the Gaussian kernel's length scale ``sigma`` in ``exp(-d^2 / (2 sigma^2))``.
        permutations: number of random relabelings.
        generator: random generator for the permutations (reproducible p-values).

    Returns:
        ``(mmd2, p_value)``; ``mmd2`` is the biased (V-statistic) estimate.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 2, generator=g), torch.randn(60, 2, generator=g) + 2
        >>> mmd2, p = mmd_permutation_test(x, y, bandwidth=1.0, generator=g)
        >>> p < 0.01
        True
    """
    ref, win = _as_2d(reference, "reference"), _as_2d(window, "window").to(reference.dtype)
    n, m = ref.shape[0], win.shape[0]
    pooled = torch.cat([ref, win])
    kernel = torch.exp(-pairwise_sq_dists(pooled, pooled) / (2.0 * bandwidth**2))
    total = n + m
    # column 0 is the observed labeling, the others random relabelings of the pooled sample
    keys = torch.rand(permutations, total, generator=generator).to(pooled.device)
    labels = torch.zeros(permutations, total, dtype=kernel.dtype, device=pooled.device)
    labels.scatter_(1, keys.argsort(dim=1)[:, :n], 1.0)
    labels = torch.cat([torch.cat([torch.ones(n), torch.zeros(m)]).to(labels)[None], labels])
    # with a = 1/n on the reference side and -1/m on the window side, MMD^2 = a^T K a
    weights = labels / n - (1.0 - labels) / m
    stats = ((weights @ kernel) * weights).sum(dim=1)
    observed = stats[0]
    p_value = (1.0 + float((stats[1:] >= observed).sum())) / (1.0 + permutations)
    return float(observed), p_value


def histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of ``values`` in the bins ``(-inf, e1], (e1, e2], ..., (ek, inf)`` (``len(edges)+1`` bins)."""
    idx = torch.bucketize(values.to(edges.dtype).contiguous(), edges.contiguous())
    return torch.bincount(idx, minlength=edges.numel() + 1).to(torch.float64)


def psi(expected: torch.Tensor, actual: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Population stability index between two histograms (counts or proportions), last dim = bins.

    ``PSI = sum (a - e) ln(a / e)`` over bins, with proportions floored at ``eps`` so empty bins do
    not give infinity (the usual rule of thumb: < 0.1 stable, > 0.25 shifted; Yurdakul 2018).

    Example:
        >>> float(psi(torch.tensor([50.0, 50.0]), torch.tensor([50.0, 50.0])))
        0.0
    """
    e = expected / expected.sum(-1, keepdim=True).clamp_min(_EPS)
    a = actual / actual.sum(-1, keepdim=True).clamp_min(_EPS)
    e, a = e.clamp_min(eps), a.clamp_min(eps)
    return ((a - e) * torch.log(a / e)).sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, in [0, ln 2]) between histograms, last dim = bins.

    Example:
        >>> round(float(js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))), 4)
        0.6931
    """
    p = p / p.sum(-1, keepdim=True).clamp_min(_EPS)
    q = q / q.sum(-1, keepdim=True).clamp_min(_EPS)
    mid = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * torch.log(a.clamp_min(_EPS) / b.clamp_min(_EPS)), 0.0).sum(-1)

    return 0.5 * kl(p, mid) + 0.5 * kl(q, mid)
