"""Low-rank factorization of Linear and Conv2d layers by truncated SVD.

A ``Linear(n, m)`` with weight ``W`` (m x n) becomes ``Linear(n, r) -> Linear(r, m)`` with
``W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)``. A ``Conv2d`` (``c_in -> c_out``, k x k) becomes a k x k conv
with ``r`` filters followed by a 1 x 1 conv to ``c_out`` (the "filter" scheme of Jaderberg et al.
2014 / Zhang et al. 2016): a convolution is a matrix (c_out x c_in*k*k) times image patches, so
the same SVD applies. By Eckart-Young the error of the weight matrix is the discarded singular
values: ``||W - W_r||_F^2 = sum_{i>r} s_i^2`` and ``||(W - W_r) x|| <= s_{r+1} ||x||``.

The rank of each layer comes from the retained energy (share of ``sum s_i^2`` kept) or a target
compression (share of the layer's parameters kept). A layer is only replaced when that saves
parameters. The result is made of plain ``nn.Linear``/``nn.Conv2d``, so it exports anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_fraction
from lightning_mlcycle.compression._surgery import LayerSurgery, Recipe, replace_module

log = logging.getLogger(__name__)


def _matrix(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach()
    return w.flatten(1).float()  # Linear: (m, n); Conv2d: (c_out, c_in * kh * kw)


def _factorizable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"


def rank_for(
    singular_values: torch.Tensor,
    shape: tuple[int, int],
    *,
    energy: float | None = None,
    compression: float | None = None,
) -> int:
    """The rank to keep for a weight matrix of ``shape`` (rows, cols) with these singular values.

    ``energy``: smallest r whose ``sum_{i<=r} s_i^2`` reaches that share of the total.
    ``compression``: largest r whose factors hold at most that share of ``rows * cols``
    parameters (``r * (rows + cols)``).

    Example:
        >>> s = torch.tensor([3.0, 2.0, 1.0, 0.1])
        >>> rank_for(s, (4, 4), energy=0.9), rank_for(s, (4, 4), compression=0.5)
        (2, 1)
    """
    if (energy is None) == (compression is None):
        raise MLCycleError("Give exactly one of `energy` and `compression`.")
    rows, cols = shape
    if energy is not None:
        e = singular_values.double() ** 2
        share = torch.cumsum(e, 0) / e.sum().clamp_min(1e-30)
        return int(min(int((share < energy - 1e-12).sum()) + 1, len(singular_values)))
    assert compression is not None
    return max(1, int(compression * rows * cols / (rows + cols)))


def _svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank], s


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """``Linear(n, m)`` -> ``Sequential(Linear(n, rank, bias=False), Linear(rank, m))`` by SVD.

    Example:
        >>> lin = nn.Linear(6, 5)
        >>> two = factorize_linear(lin, 5)  # full rank: the same function
        >>> torch.allclose(two(torch.ones(1, 6)), lin(torch.ones(1, 6)), atol=1e-5)
        True
    """
    if not 1 <= rank <= min(layer.in_features, layer.out_features):
        raise MLCycleError(f"`rank` must be in [1, {min(layer.in_features, layer.out_features)}], but got rank={rank}.")
    left, right, _ = _svd_factors(_matrix(layer), rank)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    dtype, device = layer.weight.dtype, layer.weight.device
    with torch.no_grad():
        first.weight.copy_(right)
        second.weight.copy_(left)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(device=device, dtype=dtype)


def factorize_conv(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """``Conv2d(c_in, c_out, k)`` -> k x k conv to ``rank`` channels, then a 1 x 1 conv to ``c_out``.

    Example:
        >>> conv = nn.Conv2d(4, 8, 3, padding=1)
        >>> two = factorize_conv(conv, 8)
        >>> x = torch.randn(1, 4, 5, 5)
        >>> torch.allclose(two(x), conv(x), atol=1e-4)
        True
    """
    if not _factorizable(layer):
        raise MLCycleError(f"Only Conv2d with groups=1 and zero padding can be factorized, but got {layer}.")
    c_out, c_in, kh, kw = layer.weight.shape
    if not 1 <= rank <= min(c_out, c_in * kh * kw):
        raise MLCycleError(f"`rank` must be in [1, {min(c_out, c_in * kh * kw)}], but got rank={rank}.")
    left, right, _ = _svd_factors(_matrix(layer), rank)
    first = nn.Conv2d(c_in, rank, (kh, kw), stride=layer.stride, padding=layer.padding,
                      dilation=layer.dilation, bias=False)
    second = nn.Conv2d(rank, c_out, 1, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(right.view(rank, c_in, kh, kw))
        second.weight.copy_(left.view(c_out, rank, 1, 1))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(device=layer.weight.device, dtype=layer.weight.dtype)


def factorize(layer: nn.Module, rank: int) -> nn.Sequential:
    """Factorize a Linear or Conv2d layer to ``rank``."""
    if isinstance(layer, nn.Linear):
        return factorize_linear(layer, rank)
    return factorize_conv(layer, rank)  # type: ignore[arg-type]


@dataclass
class LowRankReport:
    """What :func:`low_rank_factorize` did.

    Attributes:
        ranks: layer name -> rank kept (only layers that were replaced).
        discarded_energy: layer name -> ``sum_{i>r} s_i^2 / sum s_i^2``.
        params_before: parameters of the replaced layers before.
        params_after: and after.
    """

    ranks: dict[str, int] = field(default_factory=dict)
    discarded_energy: dict[str, float] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0


def _candidates(model: nn.Module, layers: Sequence[str] | None, exclude: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    valid = [n for n, m in modules.items() if n and isinstance(m, (nn.Linear, nn.Conv2d)) and _factorizable(m)]
    if layers is not None:
        unknown = [n for n in layers if n not in valid]
        if unknown:
            raise MLCycleError(f"`layers`: {unknown} are not Linear/Conv2d layers that can be factorized; "
                               f"valid names: {valid}.")
        names = list(layers)
    else:
        names = valid
    bad = [n for n in exclude if n not in modules]
    if bad:
        raise MLCycleError(f"`exclude`: {bad} are not modules of the model; valid names: {valid}.")
    return {n: modules[n] for n in names if n not in exclude}


def low_rank_factorize(
    model: nn.Module,
    *,
    energy: float | None = None,
    compression: float | None = None,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    allocation: str = "layer",
) -> LowRankReport:
    """Replace Linear/Conv2d layers of ``model`` (in place) by truncated-SVD factor pairs.

    Args:
        model: any module.
        energy: retained share of each layer's ``sum s_i^2``, in (0, 1].
        compression: share of the parameters to keep, in (0, 1).
        layers: names of the layers to factorize; None takes every Linear/Conv2d (groups=1).
        exclude: names never factorized (e.g. the output layer).
        allocation: with ``compression``, ``"layer"`` keeps that share of every layer;
            ``"global"`` keeps that share of all candidate layers together, with ranks chosen so
            that every layer retains the same share of its energy (layers with fast-decaying
            spectra give up more rank, those that need it keep it).

    Returns:
        A :class:`LowRankReport`; ``ranks`` is the recipe :func:`apply_ranks` rebuilds.

    Example:
        >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> rep = low_rank_factorize(net, compression=0.5)
        >>> rep.ranks, rep.params_after < 0.55 * rep.params_before
        ({'0': 16, '2': 4}, True)
    """
    if energy is not None:
        if not 0.0 < energy <= 1.0:
            raise MLCycleError(f"`energy` must be in (0, 1], but got energy={energy!r}.")
    elif compression is not None:
        check_fraction("compression", compression)
        if compression == 0:
            raise MLCycleError("`compression` must be in (0, 1), but got compression=0.")
    else:
        raise MLCycleError("Give `energy` (share of singular-value energy kept) or `compression`.")
    if allocation not in ("layer", "global"):
        raise MLCycleError(f"Expected argument `allocation` to be one of ['layer', 'global'], but got {allocation!r}.")
    report = LowRankReport()
    candidates = _candidates(model, layers, exclude)
    spectra = {n: torch.linalg.svdvals(_matrix(m)) for n, m in candidates.items()}
    if compression is not None and allocation == "global":
        energy, compression = _global_energy(candidates, spectra, compression), None
    for name, layer in candidates.items():
        w = _matrix(layer)
        s = spectra[name]
        rank = min(rank_for(s, tuple(w.shape), energy=energy, compression=compression), len(s))
        before = layer.weight.numel()
        after = rank * (w.shape[0] + w.shape[1])
        if after >= before:  # factorizing would not save anything
            continue
        replace_module(model, name, factorize(layer, rank))
        e = s.double() ** 2
        report.ranks[name] = rank
        report.discarded_energy[name] = float(e[rank:].sum() / e.sum().clamp_min(1e-30))
        report.params_before += before
        report.params_after += after
    log.info("low rank: %d layers factorized, %d -> %d weights", len(report.ranks),
             report.params_before, report.params_after)
    return report


def _global_energy(candidates: dict[str, nn.Module], spectra: dict[str, torch.Tensor], compression: float) -> float:
    """The largest common retained energy that fits the weight budget.

    The factorized layers hold at most ``compression`` of the candidates' weights (bisection; the
    parameter count grows with the energy).
    """
    total = sum(m.weight.numel() for m in candidates.values())

    def size(e: float) -> int:
        n = 0
        for name, layer in candidates.items():
            rows, cols = _matrix(layer).shape
            r = rank_for(spectra[name], (rows, cols), energy=e)
            n += min(r * (rows + cols), rows * cols)
        return n

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if size(mid) <= compression * total:
            lo = mid
        else:
            hi = mid
    return max(lo, 1e-6)


def apply_ranks(model: nn.Module, ranks: Recipe) -> None:
    """Rebuild the factorized structure of a saved model (weights come from its state_dict)."""
    for name, rank in ranks.items():
        replace_module(model, name, factorize(model.get_submodule(name), int(rank)))


class LowRankFactorization(LayerSurgery):
    """Factorize Linear/Conv2d layers at the start of ``start_epoch`` and fine-tune afterwards.

    Args:
        energy: retained singular-value energy per layer, in (0, 1].
        compression: share of each layer's parameters kept, in (0, 1) (instead of ``energy``).
        layers: names of the layers to factorize (relative to ``module``); None takes all.
        exclude: names never factorized (e.g. the classifier).
        allocation: ``"layer"`` or ``"global"`` (see :func:`low_rank_factorize`).
        start_epoch: epoch at whose start the layers are factorized.
        module: attribute of the LightningModule to change (e.g. ``"backbone"``).

    Example:
        >>> cb = LowRankFactorization(compression=0.5, module="backbone")
        >>> cb.compression
        0.5
    """

    _name = "lowrank"

    def __init__(
        self,
        energy: float | None = None,
        *,
        compression: float | None = None,
        layers: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        allocation: str = "layer",
        start_epoch: int = 0,
        module: str | None = None,
    ) -> None:
        super().__init__(start_epoch=start_epoch, module=module)
        if allocation not in ("layer", "global"):
            raise MLCycleError(f"Expected argument `allocation` to be one of ['layer', 'global'], but got {allocation!r}.")
        self.allocation = allocation
        if energy is None and compression is None:
            energy = 0.9
        if energy is not None and compression is not None:
            raise MLCycleError("Give one of `energy` and `compression`, not both.")
        if energy is not None and not 0.0 < energy <= 1.0:
            raise MLCycleError(f"`energy` must be in (0, 1], but got energy={energy!r}.")
        if compression is not None and not 0.0 < compression < 1.0:
            raise MLCycleError(f"`compression` must be in (0, 1), but got compression={compression!r}.")
        self.energy = energy
        self.compression = compression
        self.layers = list(layers) if layers is not None else None
        self.exclude = list(exclude)
        self.report: LowRankReport | None = None

    def transform(self, model: nn.Module) -> Recipe:  # type: ignore[override]
        """Factorize ``model`` and return the ranks."""
        self.report = low_rank_factorize(model, energy=self.energy, compression=self.compression,
                                         layers=self.layers, exclude=self.exclude,
                                         allocation=self.allocation)
        return dict(self.report.ranks)

    def rebuild(self, model: nn.Module, recipe: Recipe) -> None:  # type: ignore[override]
        """Rebuild the factorized structure (resume)."""
        apply_ranks(model, recipe)
