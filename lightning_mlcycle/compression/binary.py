"""Binarized layers: sign weights and activations, a clipped straight-through estimator, XNOR scaling.

``BinaryLinear`` / ``BinaryConv2d`` keep real-valued "latent" weights for training and compute
with their signs (BinaryConnect / BinaryNet, Courbariaux et al. 2015-2016). The gradient of
``sign`` is taken as 1 inside ``[-clip, clip]`` and 0 outside (the hard-tanh straight-through
estimator of BinaryNet, sec. 1.3), so saturated latent values stop moving. With ``scale=True``
each output channel is multiplied by the mean absolute latent weight (XNOR-Net, Rastegari et al.
2016, sec. 3.1), which recovers most of the accuracy lost to the +-1 weights. Activations are binarized around a
learnable per-channel threshold, ``sign(x - t)`` (ReActNet's RSign, Liu et al. 2020), initialized
to the channel means of the first training batch: in a model with ReLUs every input of a binary
layer is >= 0, and a plain ``sign`` would turn all of them into +1.

:func:`binarize` swaps a trained model's linear / conv layers for binary ones, keeping the first
and last layers in full precision by default (both papers do: they hold few weights but cost
most accuracy). :func:`save_binarized` stores each binary weight as one bit (``numpy.packbits``)
plus one fp32 scale per output channel, about 32x smaller than fp32 for those layers.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from lightning_mlcycle._errors import MLCycleError
from lightning_mlcycle._utils import check_positive

_FORMAT = "lightning_mlcycle.binarized/1"


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.clip).to(grad.dtype), None


def sign_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """``+1`` where ``x >= 0`` else ``-1``; gradient passed straight through where ``|x| <= clip``.

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
        >>> sign_ste(x).tolist()
        [-1.0, -1.0, 1.0, 1.0, 1.0]
        >>> sign_ste(x).sum().backward()
        >>> x.grad.tolist()
        [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    return _SignSTE.apply(x, float(clip))


def _check(scale: Any, binarize_input: Any, clip: float) -> None:
    for name, v in (("scale", scale), ("binarize_input", binarize_input)):
        if not isinstance(v, bool):
            raise TypeError(f"Expected argument `{name}` to be a bool, but got {v!r}.")
    check_positive("clip", clip)


class BinaryLinear(nn.Linear):
    """A linear layer computing with sign(weight) (times a per-output scale) on sign(input - t).

    Args:
        in_features: input width.
        out_features: output width.
        bias: add a (full-precision) bias.
        scale: multiply each output by the mean absolute latent weight of its row (XNOR-Net).
        binarize_input: binarize the input activations as well (otherwise only weights).
        clip: the straight-through estimator's gradient window ``[-clip, clip]``.

    Example:
        >>> layer = BinaryLinear(8, 3)
        >>> layer(torch.randn(4, 8)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        scale: bool = True,
        binarize_input: bool = True,
        clip: float = 1.0,
    ) -> None:
        _check(scale, binarize_input, clip)
        super().__init__(in_features, out_features, bias=bias)
        self.scale, self.binarize_input, self.clip = scale, binarize_input, float(clip)
        self.threshold = nn.Parameter(torch.zeros(in_features))  # RSign threshold per input feature
        self.register_buffer("threshold_initialized", torch.tensor(False))

    def binary_weight(self) -> torch.Tensor:
        """The weight the layer computes with: +-1, times the per-row scale if ``scale``."""
        w = sign_ste(self.weight, self.clip)
        if self.scale:
            w = w * self.weight.abs().mean(dim=1, keepdim=True)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Binary matrix product (plus the full-precision bias)."""
        if self.binarize_input:
            x = _binarize_input(self, x)
        return F.linear(x, self.binary_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, scale={self.scale}, binarize_input={self.binarize_input}"


class BinaryConv2d(nn.Conv2d):
    """A 2-D convolution computing with sign(weight) (times a per-filter scale) on sign(input - t).

    Takes :class:`torch.nn.Conv2d`'s arguments plus ``scale``, ``binarize_input`` and ``clip``
    (see :class:`BinaryLinear`). Padding is done with zeros after binarizing the input, as in
    XNOR-Net.

    Example:
        >>> conv = BinaryConv2d(3, 8, 3, padding=1)
        >>> conv(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(
        self,
        *args: Any,
        scale: bool = True,
        binarize_input: bool = True,
        clip: float = 1.0,
        **kwargs: Any,
    ) -> None:
        _check(scale, binarize_input, clip)
        super().__init__(*args, **kwargs)
        self.scale, self.binarize_input, self.clip = scale, binarize_input, float(clip)
        self.threshold = nn.Parameter(torch.zeros(self.in_channels))  # RSign threshold per channel
        self.register_buffer("threshold_initialized", torch.tensor(False))

    def binary_weight(self) -> torch.Tensor:
        """The weight the layer computes with: +-1, times the per-filter scale if ``scale``."""
        w = sign_ste(self.weight, self.clip)
        if self.scale:
            w = w * self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Binary convolution (plus the full-precision bias)."""
        if self.binarize_input:
            x = _binarize_input(self, x)
        return self._conv_forward(x, self.binary_weight(), self.bias)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{super().extra_repr()}, scale={self.scale}, binarize_input={self.binarize_input}"


_BINARY = (BinaryLinear, BinaryConv2d)


def _binarize_input(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``sign(x - t)`` with the per-channel threshold ``t`` initialized from the first batch."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if layer.training and not bool(layer.threshold_initialized):
        dims = [d for d in range(x.ndim) if d != 1]
        with torch.no_grad():
            layer.threshold.copy_(x.detach().mean(dim=dims))
            layer.threshold_initialized.fill_(True)
    return sign_ste(x - layer.threshold.view(shape), layer.clip)


def _binary_copy(module: nn.Module, scale: bool, binarize_input: bool, clip: float) -> nn.Module:
    opts = {"scale": scale, "binarize_input": binarize_input, "clip": clip}
    if type(module) is nn.Linear:
        new: nn.Module = BinaryLinear(module.in_features, module.out_features, module.bias is not None, **opts)
    elif type(module) is nn.Conv2d:
        new = BinaryConv2d(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode, **opts,
        )
    else:
        raise MLCycleError(
            f"Cannot binarize a {type(module).__name__}: only nn.Linear and nn.Conv2d layers have binary "
            "versions (BinaryLinear, BinaryConv2d). Leave it out of `layers`."
        )
    missing, unexpected = new.load_state_dict(module.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"threshold", "threshold_initialized"}
    return new.to(module.weight.device)


def binarize(
    model: nn.Module,
    *,
    layers: Sequence[str] | None = None,
    keep_first_last: bool = True,
    scale: bool = True,
    binarize_input: bool = True,
    clip: float = 1.0,
    inplace: bool = False,
) -> nn.Module:
    """Replace linear / conv2d layers by binary ones (keeping their latent weights).

    Args:
        model: any module.
        layers: names of the layers to binarize (as in ``named_modules()``); None takes every
            ``nn.Linear`` / ``nn.Conv2d`` except, with ``keep_first_last``, the first and the last.
        keep_first_last: keep the first and last linear/conv layers in full precision.
        scale: XNOR-style per-channel scaling.
        binarize_input: binarize activations too (a fully binary network); False binarizes
            weights only (BinaryConnect).
        clip: the straight-through estimator's gradient window.
        inplace: modify ``model`` instead of a copy.

    Returns:
        The binarized model (train it further: binarization costs accuracy until fine-tuned).

    Raises:
        MLCycleError: for a named layer that does not exist or has no binary version, or when
            nothing is left to binarize.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> [type(m).__name__ for m in binarize(net)]
        ['Linear', 'ReLU', 'BinaryLinear', 'ReLU', 'Linear']
    """
    _check(scale, binarize_input, clip)
    model = model if inplace else copy.deepcopy(model)
    modules = dict(model.named_modules())
    if layers is not None:
        if isinstance(layers, str):
            raise MLCycleError(f"`layers` must be a list of module names, but got the string {layers!r}.")
        unknown = [n for n in layers if n not in modules]
        if unknown:
            raise MLCycleError(f"`layers`: {unknown} are not modules of the model; valid names: {list(modules)[1:]}.")
        names = list(layers)
    else:
        candidates = [n for n, m in modules.items() if type(m) in (nn.Linear, nn.Conv2d)]
        names = candidates[1:-1] if keep_first_last else candidates
    if not names:
        raise MLCycleError(
            "Nothing to binarize: the model needs at least three nn.Linear/nn.Conv2d layers when the "
            "first and last stay in full precision (pass keep_first_last=False or `layers=`)."
        )
    for name in names:
        new = _binary_copy(modules[name], scale, binarize_input, clip)
        parent_name, _, leaf = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, leaf, new)
    return model


def binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The binary layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BINARY)}


def _channel_scale(module: nn.Module) -> torch.Tensor:
    dims = tuple(range(1, module.weight.ndim))
    return module.weight.detach().abs().mean(dim=dims).float().cpu()


def save_binarized(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, int]:
    """Save ``model`` with each binary weight packed to 1 bit (plus one fp32 scale per channel).

    Everything else (full-precision layers, biases, batch norm) is stored as is. Load with
    :func:`load_binarized` into a model of the same structure (e.g. ``binarize(arch)``).

    Returns:
        ``{"file_bytes": ..., "fp32_bytes": ..., "binary_params": ...}``: the file's size, what
        the same parameters take in fp32, and how many weights are stored as bits.

    Example:
        >>> import tempfile
        >>> net = binarize(nn.Sequential(nn.Linear(8, 256), nn.Linear(256, 256), nn.Linear(256, 2)))
        >>> info = save_binarized(net, Path(tempfile.mkdtemp()) / "b.pt")
        >>> info["fp32_bytes"] / info["file_bytes"] > 4
        True
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    binaries = binary_layers(model)
    if not binaries:
        raise MLCycleError("`model` has no BinaryLinear/BinaryConv2d layer; call binarize(model) first.")
    packed: dict[str, dict[str, Any]] = {}
    skip = set()
    n_bits = 0
    for name, m in binaries.items():
        w = m.weight.detach().cpu()
        bits = np.packbits((w >= 0).numpy().reshape(-1))
        packed[name] = {
            "bits": torch.from_numpy(bits),
            "shape": list(w.shape),
            "scale": _channel_scale(m) if m.scale else None,
        }
        skip.add(f"{name}.weight" if name else "weight")
        n_bits += w.numel()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in skip}
    torch.save({"format": _FORMAT, "packed": packed, "state": state}, out)
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    return {"file_bytes": out.stat().st_size, "fp32_bytes": int(fp32), "binary_params": int(n_bits)}


def load_binarized(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a :func:`save_binarized` file into ``model`` (same structure), in place.

    Each binary weight is restored as ``sign * scale``: the layer computes exactly what the saved
    one computed (its latent magnitudes are not kept; fine-tuning starts from there).
    """
    blob = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise MLCycleError(f"{path} is not a file written by save_binarized.")
    binaries = binary_layers(model)
    missing = [n for n in blob["packed"] if n not in binaries]
    if missing:
        raise MLCycleError(f"`model` has no binary layers named {missing}; binarize it like the saved model first.")
    state = dict(blob["state"])
    for name, item in blob["packed"].items():
        shape = tuple(item["shape"])
        n = int(np.prod(shape))
        bits = np.unpackbits(item["bits"].numpy())[:n].reshape(shape)
        sign = torch.from_numpy(bits.astype(np.float32) * 2 - 1)
        scale = item["scale"] if item["scale"] is not None else torch.ones(shape[0])
        state[f"{name}.weight"] = sign * scale.view(-1, *([1] * (len(shape) - 1)))
    model.load_state_dict(state)
    return model
