"""Compact convolutions: standard k x k convolutions -> depthwise-separable ones.

A ``Conv2d(c_in, c_out, k)`` costs ``c_in * c_out * k^2`` weights; a depthwise k x k conv
(``m`` filters per input channel) followed by a 1 x 1 pointwise conv costs
``c_in * m * (k^2 + c_out)`` (MobileNet, Howard et al. 2017). The new layers are initialized from
the original: for each input channel ``c`` the slice ``W[:, c]`` (c_out x k^2) is approximated by
its best rank-``m`` SVD, whose right factors become the depthwise filters and left factors the
pointwise weights. A slice of rank <= m is reproduced exactly, and the error of the others is
their discarded singular values; fine-tuning (or distillation) recovers the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle.compression._surgery import LayerSurgery, Recipe, replace_module

log = logging.getLogger(__name__)


def _separable_candidate(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.in_channels > 1
        and layer.padding_mode == "zeros"
        and layer.kernel_size[0] * layer.kernel_size[1] > 1
    )


def depthwise_separable(layer: nn.Conv2d, depth_multiplier: int = 1) -> nn.Sequential:
    """Turn a k x k ``Conv2d`` into depthwise + pointwise convolutions, SVD-initialized.

    Depthwise: k x k, ``depth_multiplier`` filters per input channel; pointwise: 1 x 1. Both come
    from a per-input-channel SVD of the original weights.

    Example:
        >>> conv = nn.Conv2d(3, 8, 3, padding=1)
        >>> sep = depthwise_separable(conv, depth_multiplier=8)  # rank 8 >= min(8, 9): exact
        >>> x = torch.randn(1, 3, 6, 6)
        >>> torch.allclose(sep(x), conv(x), atol=1e-4)
        True
    """
    if not _separable_candidate(layer):
        raise MLCycleError(f"Only k x k (k > 1) Conv2d with groups=1, c_in > 1 and zero padding can be made "
                           f"depthwise-separable, but got {layer}.")
    if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise MLCycleError(f"`depth_multiplier` must be an integer >= 1, but got depth_multiplier={depth_multiplier!r}.")
    c_out, c_in, kh, kw = layer.weight.shape
    m = depth_multiplier
    w = layer.weight.detach().float().permute(1, 0, 2, 3).reshape(c_in, c_out, kh * kw)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # batched over input channels
    r = min(m, s.shape[1])
    root = s[:, :r].sqrt()
    dw = torch.zeros(c_in, m, kh * kw)
    pw = torch.zeros(c_out, c_in, m)
    dw[:, :r] = root[:, :, None] * vh[:, :r]  # (c_in, r, k^2)
    pw[:, :, :r] = (u[:, :, :r] * root[:, None, :]).permute(1, 0, 2)  # (c_out, c_in, r)
    depthwise = nn.Conv2d(c_in, c_in * m, (kh, kw), stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, groups=c_in, bias=False)
    pointwise = nn.Conv2d(c_in * m, c_out, 1, bias=layer.bias is not None)
    with torch.no_grad():
        depthwise.weight.copy_(dw.reshape(c_in * m, 1, kh, kw))
        pointwise.weight.copy_(pw.reshape(c_out, c_in * m, 1, 1))
        if layer.bias is not None:
            pointwise.bias.copy_(layer.bias)
    return nn.Sequential(depthwise, pointwise).to(device=layer.weight.device, dtype=layer.weight.dtype)


def compact_convolutions(
    model: nn.Module,
    *,
    depth_multiplier: int = 1,
    layers: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> Recipe:
    """Replace k x k convolutions of ``model`` (in place) by depthwise-separable pairs.

    Only where that saves weights. Returns ``{layer name: depth_multiplier}``, the recipe
    :func:`apply_compact` rebuilds.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3))
        >>> compact_convolutions(net)
        {'2': 1}
        >>> sum(p.numel() for p in net[2].parameters()) < 16 * 32 * 9
        True
    """
    if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
        raise MLCycleError(f"`depth_multiplier` must be an integer >= 1, but got depth_multiplier={depth_multiplier!r}.")
    modules = dict(model.named_modules())
    valid = [n for n, m in modules.items() if n and _separable_candidate(m)]
    if layers is not None:
        unknown = [n for n in layers if n not in valid]
        if unknown:
            raise MLCycleError(f"`layers`: {unknown} are not k x k Conv2d layers (groups=1, c_in > 1); "
                               f"valid names: {valid}.")
    bad = [n for n in exclude if n not in modules]
    if bad:
        raise MLCycleError(f"`exclude`: {bad} are not modules of the model; valid names: {valid}.")
    recipe: Recipe = {}
    for name in layers if layers is not None else valid:
        if name in exclude:
            continue
        conv = modules[name]
        c_out, c_in, kh, kw = conv.weight.shape
        if c_in * depth_multiplier * (kh * kw + c_out) >= conv.weight.numel():
            continue  # e.g. few output channels: the separable pair would be larger
        replace_module(model, name, depthwise_separable(conv, depth_multiplier))
        recipe[name] = depth_multiplier
    return recipe


def apply_compact(model: nn.Module, recipe: Recipe) -> None:
    """Rebuild the depthwise-separable structure of a saved model (weights from its state_dict)."""
    for name, m in recipe.items():
        replace_module(model, name, depthwise_separable(model.get_submodule(name), int(m)))


class CompactConvolutions(LayerSurgery):
    """Make k x k convolutions depthwise-separable at ``start_epoch`` and fine-tune afterwards.

    Args:
        depth_multiplier: depthwise filters per input channel.
        layers: convolutions to replace (relative to ``module``); None takes every eligible one.
        exclude: names never replaced.
        start_epoch: epoch at whose start the layers are replaced.
        module: attribute of the LightningModule to change (e.g. ``"backbone"``).

    Example:
        >>> CompactConvolutions(depth_multiplier=2, module="backbone").depth_multiplier
        2
    """

    _name = "compact"

    def __init__(
        self,
        depth_multiplier: int = 1,
        *,
        layers: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        start_epoch: int = 0,
        module: str | None = None,
    ) -> None:
        super().__init__(start_epoch=start_epoch, module=module)
        if not isinstance(depth_multiplier, int) or depth_multiplier < 1:
            raise MLCycleError(
                f"`depth_multiplier` must be an integer >= 1, but got depth_multiplier={depth_multiplier!r}."
            )
        self.depth_multiplier = depth_multiplier
        self.layers = list(layers) if layers is not None else None
        self.exclude = list(exclude)

    def transform(self, model: nn.Module) -> Recipe:  # type: ignore[override]
        """Replace the convolutions and return the recipe."""
        return compact_convolutions(model, depth_multiplier=self.depth_multiplier, layers=self.layers,
                                    exclude=self.exclude)

    def rebuild(self, model: nn.Module, recipe: Recipe) -> None:  # type: ignore[override]
        """Rebuild the structure (resume)."""
        apply_compact(model, recipe)
