"""Synthetic distribution shifts of rising severity, to test a model and its monitor before deployment.

Severities run from 1 (mild) to 5 (severe), following ImageNet-C (Hendrycks & Dietterich, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019); the noise and
contrast levels are theirs, scaled to the data's own value range, so the same severity means the
same thing for 8x8 digits in [0, 16] and for photos in [0, 1]. Every shift is a pure function
``shift(x, severity, generator) -> x`` on raw (un-normalized) batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lightning_mlcycle._errors import MLCycleError

Shift = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

# ImageNet-C levels (fractions of the value range for noise and brightness)
_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
_BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)  # pixels at 32 px, scaled with the image size
_ROTATION = (10.0, 20.0, 30.0, 45.0, 60.0)  # degrees
_OCCLUSION = (0.2, 0.3, 0.4, 0.5, 0.6)  # side of the square patch, fraction of the image side
_SCALING = (1.25, 1.5, 2.0, 3.0, 5.0)  # factor on half of the features (a unit change)
_MISSING = (0.05, 0.1, 0.2, 0.3, 0.5)  # fraction of entries lost and mean-imputed


def _range(x: torch.Tensor) -> tuple[float, float]:
    lo, hi = float(x.min()), float(x.max())
    return lo, (hi if hi > lo else lo + 1.0)


def _level(levels: tuple[float, ...], severity: int) -> float:
    if (
        isinstance(severity, bool)
        or not isinstance(severity, int)
        or not 1 <= severity <= len(levels)
    ):
        raise MLCycleError(
            f"`severity` must be an integer in [1, {len(levels)}], but got {severity!r}."
        )
    return levels[severity - 1]


def _images(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4:
        raise MLCycleError(
            f"The {name!r} shift needs images (N, C, H, W), but got shape {tuple(x.shape)}."
        )


def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise, sigma = level x value range (images) or x feature std (tabular)."""
    c = _level(_NOISE, severity)
    noise = torch.randn(x.shape, generator=generator).to(x)
    if x.ndim == 2:
        return x + noise * c * x.std(0, keepdim=True).clamp_min(1e-6) * 4.0
    lo, hi = _range(x)
    return (x + noise * c * (hi - lo)).clamp(lo, hi)


def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur; sigma grows with the severity and the image size."""
    _images(x, "gaussian_blur")
    from torchvision.transforms.v2 import functional as TF  # noqa: N812

    sigma = _level(_BLUR_SIGMA, severity) * max(1.0, min(x.shape[-2:]) / 32.0)
    k = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def brightness(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Add a constant (a fraction of the value range), clipped to the range."""
    lo, hi = _range(x)
    return (x + _level(_BRIGHTNESS, severity) * (hi - lo)).clamp(lo, hi)


def contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pull every image toward its own mean (ImageNet-C contrast)."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    return (x - mean) * _level(_CONTRAST, severity) + mean


def rotation(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Rotate every image by +-angle (random sign per image), background filled with the minimum."""
    _images(x, "rotation")
    from torchvision.transforms.v2 import functional as TF  # noqa: N812

    angle = _level(_ROTATION, severity)
    lo, _ = _range(x)
    signs = torch.randint(0, 2, (x.shape[0],), generator=generator)
    out = torch.empty_like(x)
    for s in (0, 1):
        idx = signs == s
        if idx.any():
            out[idx] = TF.rotate(x[idx], angle if s else -angle, fill=[lo] * x.shape[1])
    return out


def occlusion(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Black out one square patch per image at a random place (the minimum value)."""
    _images(x, "occlusion")
    n, _, h, w = x.shape
    side = max(1, round(_level(_OCCLUSION, severity) * min(h, w)))
    lo, _ = _range(x)
    top = torch.randint(0, h - side + 1, (n,), generator=generator)
    left = torch.randint(0, w - side + 1, (n,), generator=generator)
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    mask = (
        (rows >= top[:, None, None])
        & (rows < top[:, None, None] + side)
        & (cols >= left[:, None, None])
        & (cols < left[:, None, None] + side)
    )
    return x.masked_fill(mask[:, None].to(x.device), lo)


def feature_scaling(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Multiply a random half of the features by a factor (a unit or sensor-gain change)."""
    if x.ndim != 2:
        raise MLCycleError(
            f"The 'feature_scaling' shift needs tabular data (N, F), but got {tuple(x.shape)}."
        )
    cols = torch.randperm(x.shape[1], generator=generator)[: max(1, x.shape[1] // 2)]
    out = x.clone()
    out[:, cols] = out[:, cols] * _level(_SCALING, severity)
    return out


def missing_values(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Lose a fraction of the entries and impute them with the column mean, as pipelines do."""
    if x.ndim != 2:
        raise MLCycleError(
            f"The 'missing_values' shift needs tabular data (N, F), but got {tuple(x.shape)}."
        )
    lost = torch.rand(x.shape, generator=generator).to(x.device) < _level(_MISSING, severity)
    return torch.where(lost, x.mean(0, keepdim=True).expand_as(x), x)


SHIFTS: dict[str, Shift] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "brightness": brightness,
    "contrast": contrast,
    "rotation": rotation,
    "occlusion": occlusion,
    "feature_scaling": feature_scaling,
    "missing_values": missing_values,
}
IMAGE_SHIFTS = (
    "gaussian_noise",
    "gaussian_blur",
    "brightness",
    "contrast",
    "rotation",
    "occlusion",
)
TABULAR_SHIFTS = ("gaussian_noise", "feature_scaling", "missing_values")


def default_shifts(input_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The shifts that apply to inputs of ``input_shape`` (images ``(C, H, W)`` or tabular ``(F,)``).

    Example:
        >>> default_shifts((4,))
        ('gaussian_noise', 'feature_scaling', 'missing_values')
    """
    return IMAGE_SHIFTS if len(input_shape) == 3 else TABULAR_SHIFTS


def apply_shift(x: torch.Tensor, name: str, severity: int, *, seed: int = 0) -> torch.Tensor:
    """Apply the shift ``name`` at ``severity`` (1-5) to a raw batch, reproducibly.

    Example:
        >>> x = torch.zeros(2, 1, 8, 8)
        >>> apply_shift(x, "occlusion", 3).shape
        torch.Size([2, 1, 8, 8])
    """
    try:
        fn = SHIFTS[name]
    except KeyError:
        raise MLCycleError(f"Unknown shift {name!r}; expected one of {sorted(SHIFTS)}.") from None
    return fn(x.float(), severity, torch.Generator().manual_seed(seed))
