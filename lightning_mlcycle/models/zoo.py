"""A small model zoo: MLP, small CNN, torchvision's resnet18 and mobilenet_v3_small.

The torchvision models are adapted to small inputs and any number of classes and channels
(random init, nothing downloaded).

Every builder takes ``num_classes`` and ``input_shape`` (one sample's shape without the batch
dimension: ``(C, H, W)`` for images, ``(F,)`` for tabular data), so the CLI can fill both from the
data module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lightning_mlcycle._errors import MLCycleError

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise MLCycleError(
            f"Expected argument `activation` to be one of {sorted(_ACTIVATIONS)}, but got {name!r}."
        ) from None


def _check(num_classes: int, input_shape: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise MLCycleError(f"`num_classes` must be an integer >= 2, but got {num_classes!r}.")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise MLCycleError(f"`input_shape` must be positive sizes, but got {input_shape!r}.")
    return shape


class MLP(nn.Module):
    """A multi-layer perceptron over flattened inputs.

    Args:
        num_classes: number of outputs.
        input_shape: one sample's shape; it is flattened.
        hidden: widths of the hidden layers.
        dropout: dropout after each hidden layer.
        activation: one of ``relu, gelu, silu, tanh, sigmoid, leaky_relu``.
        batch_norm: add BatchNorm1d after each hidden linear layer.

    Example:
        >>> MLP(10, (1, 8, 8), hidden=(32,))(torch.zeros(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        shape = _check(num_classes, input_shape)
        if not 0.0 <= dropout < 1.0:
            raise MLCycleError(f"`dropout` must be in [0, 1), but got {dropout!r}.")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape)
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.net(x)


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks, global average pooling and a linear head; any input size >= 4x4.

    Args:
        num_classes: number of outputs.
        input_shape: ``(C, H, W)``.
        width: channels of the first block (the others use ``2 * width``).
        dropout: dropout before the head.
        batch_norm: BatchNorm after each conv.
        activation: as in :class:`MLP`.

    Example:
        >>> SmallCNN(10, (1, 8, 8), width=8)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int],
        width: int = 32,
        dropout: float = 0.0,
        batch_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        shape = _check(num_classes, input_shape)
        if len(shape) != 3:
            raise MLCycleError(
                f"SmallCNN needs image inputs (C, H, W), but got input_shape={shape}."
            )
        if not isinstance(width, int) or width < 1:
            raise MLCycleError(f"`width` must be a positive integer, but got {width!r}.")
        if not 0.0 <= dropout < 1.0:
            raise MLCycleError(f"`dropout` must be in [0, 1), but got {dropout!r}.")

        def block(cin: int, cout: int) -> list[nn.Module]:
            mods: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                mods.append(nn.BatchNorm2d(cout))
            mods.append(_activation(activation))
            return mods

        w2 = 2 * width
        self.features = nn.Sequential(
            *block(shape[0], width),
            *block(width, w2),
            nn.MaxPool2d(2) if min(shape[1:]) >= 4 else nn.Identity(),
            *block(w2, w2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(), nn.Linear(w2, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.head(self.features(x))


def resnet18(num_classes: int, input_shape: Sequence[int], small_input: bool = True) -> nn.Module:
    """Torchvision's ResNet-18 (random init) for any channels/classes.

    With ``small_input`` (inputs of 64 px or less, e.g. CIFAR or digits) the 7x7 stride-2 stem
    and the max-pool are replaced by a 3x3 stride-1 conv, as is usual for 32x32 images.

    Example:
        >>> resnet18(10, (3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    from torchvision.models import resnet18 as tv_resnet18

    shape = _check(num_classes, input_shape)
    model = tv_resnet18(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(shape[0], 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif shape[0] != 3:
        model.conv1 = nn.Conv2d(shape[0], 64, 7, stride=2, padding=3, bias=False)
    return model


def mobilenet_v3_small(
    num_classes: int, input_shape: Sequence[int], small_input: bool = True, dropout: float = 0.2
) -> nn.Module:
    """Torchvision's MobileNetV3-Small (random init) for any channels/classes.

    With ``small_input`` the stride-2 stem becomes stride 1, so 8x8 to 64x64 inputs keep enough
    resolution through the network.

    Example:
        >>> mobilenet_v3_small(10, (1, 8, 8)).eval()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    from torchvision.models import mobilenet_v3_small as tv_mobilenet

    shape = _check(num_classes, input_shape)
    model = tv_mobilenet(weights=None, num_classes=num_classes, dropout=dropout)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        shape[0], stem.out_channels, 3, stride=1 if small_input else 2, padding=1, bias=False
    )
    return model


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(
    name: str, builder: Callable[..., nn.Module], *, overwrite: bool = False
) -> None:
    """Add a builder ``builder(num_classes, input_shape, **kwargs)`` to the zoo under ``name``.

    Raises:
        MLCycleError: if ``name`` is taken and ``overwrite`` is false.
    """
    if name in _REGISTRY and not overwrite:
        raise MLCycleError(f"A model named {name!r} is already registered; pass overwrite=True.")
    _REGISTRY[name] = builder


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def create_model(
    name: str, num_classes: int, input_shape: Sequence[int], **kwargs: object
) -> nn.Module:
    """Build a zoo model by name.

    Example:
        >>> create_model("mlp", 3, (4,), hidden=(8,))(torch.zeros(1, 4)).shape
        torch.Size([1, 3])
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise MLCycleError(f"Unknown model {name!r}; expected one of {list_models()}.") from None
    return builder(num_classes=num_classes, input_shape=input_shape, **kwargs)


for _name, _builder in (
    ("mlp", MLP),
    ("small_cnn", SmallCNN),
    ("resnet18", resnet18),
    ("mobilenet_v3_small", mobilenet_v3_small),
):
    register_model(_name, _builder)
