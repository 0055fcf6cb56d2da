"""Image classifiers for long-tailed learning.

Every model here is an ``nn.Module`` with the same small interface, so that
losses, samplers and feature-space methods can treat them alike:

* ``model.features(x)`` returns the penultimate features, shape ``(N, D)``
  (after global pooling and flattening);
* ``model.head`` is the classifier (``nn.Linear`` or :class:`CosineLinear`),
  and ``model(x) == model.head(model.features(x))``;
* ``model.feature_dim`` is ``D``.

Inputs are images with values in ``[0, 1]``. The per-channel normalisation
``(x - mean) / std`` is the model's *first step* (mean and std are buffers,
saved in the ``state_dict``), so methods that synthesise images in pixel space
(CutMix, CMO, ...) can work on, and clamp to, ``[0, 1]``.

Models:

* :class:`ResNet32` -- the CIFAR ResNet of He et al. (2016) as used by the
  LDAM-DRW and CMO reference code (0.46 M parameters);
* :class:`SmallCNN` -- a three-convolution network for 8x8 digits that trains
  in milliseconds per batch on a CPU (also fine for 16x16 or 32x32 images);
* :class:`TorchvisionNet` -- torchvision's ResNet-50 / ResNeXt-50 (32x4d),
  always built with ``weights=None`` (nothing is downloaded).

:func:`make_model` builds any of them by name (see :data:`MODEL_NAMES`).
"""

from __future__ import annotations

import inspect
import math

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from . import checks

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_NAMES",
    "CosineLinear",
    "ResNet32",
    "SmallCNN",
    "MLP",
    "TorchvisionNet",
    "count_parameters",
    "make_model",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODEL_NAMES = ("resnet32", "small-cnn", "mlp", "resnet50", "resnext50")


# --------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------


def _check_num_classes(num_classes: int) -> None:
    checks.integer("num_classes", num_classes, low=2, hint="a classifier needs at least 2 classes")


def _check_size(owner: str, name: str, value: int, low: int, why: str = "") -> int:
    """An integer model parameter (model_params of a config) >= ``low``, or a one-line error naming it."""
    hint = f"{why}; model_params[{name!r}]" if why else f"model_params[{name!r}]"
    return checks.integer(f"{owner}: {name}", value, low=low, hint=hint)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; mean and std are (1, C, 1, 1) buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], in_channels: int,
                 model_name: str = "model") -> None:
        super().__init__()
        try:
            mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        except (TypeError, ValueError):
            raise checks.InputTypeError(f"{model_name}: mean and std must be sequences of numbers (one per input "
                                        f"channel), got mean={mean!r}, std={std!r}") from None
        if len(mean) != in_channels or len(std) != in_channels:
            example = ", ".join(["0.5"] * in_channels)
            raise checks.InputError(
                f"{model_name}: in_channels={in_channels} but mean has {len(mean)} and std has "
                f"{len(std)} entries; pass one mean and one std per input channel, e.g. "
                f"mean=({example},), std=({example},)"
            )
        if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise checks.InputError(f"{model_name}: every std must be > 0, got std={std} (and mean={mean}: finite "
                                    "numbers)")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and x.shape[1] != self.mean.shape[1]:
            # (x - mean) would broadcast one grey channel to three and train on copies: refuse instead
            raise checks.InputError(
                f"the model expects images (N, {self.mean.shape[1]}, H, W) but got shape {tuple(x.shape)}: set "
                "model_params 'in_channels' (with one mean / std per channel) to the data's channels, or leave it "
                "out and the engine fills it in")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"


class CosineLinear(nn.Module):
    """Cosine classifier: the "NormedLinear" layer of the LDAM reference code.

    ``out[n, j] = cos(x_n, w_j) = <x_n / |x_n|, w_j / |w_j|>``, so every output
    lies in ``[-1, 1]`` (losses such as LDAM multiply them by a scale ``s``).
    ``weight`` has shape ``(in_features, out_features)``: column ``j`` is the
    prototype of class ``j``. There is no bias.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        # As in LDAM: uniform(-1, 1), then rescale every column to norm 1.
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _make_head(feature_dim: int, num_classes: int, cosine_head: bool) -> nn.Module:
    checks.flag("model_params 'cosine_head'", cosine_head)
    if cosine_head:
        return CosineLinear(feature_dim, num_classes)
    return nn.Linear(feature_dim, num_classes)


def _kaiming_init(model: nn.Module) -> None:
    """``kaiming_normal_`` (fan-in, ReLU gain: std = sqrt(2 / fan_in)) on conv and linear weights."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


class _Classifier(nn.Module):
    """Base class: ``forward(x) = head(features(x))``; subclasses define ``features``."""

    feature_dim: int
    head: nn.Module

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------
# ResNet-32 (CIFAR)
# --------------------------------------------------------------------------


class PadShortcut(nn.Module):
    """"Option A" shortcut: take every other pixel and zero-pad the channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet32(_Classifier):
    """The CIFAR ResNet-32 of He et al. (2016), as in the LDAM / CMO code.

    3x3 conv (16 channels) + BN + ReLU; three stages of 5 :class:`BasicBlock`
    with 16 / 32 / 64 channels (stride 2 at the start of stages 2 and 3, with
    the parameter-free "option A" shortcut); global average pooling; head.
    464,154 parameters with 10 classes and a linear head.
    """

    def __init__(self, num_classes: int = 10, cosine_head: bool = False, in_channels: int = 3,
                 mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD,
                 blocks_per_stage: int = 5) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        _check_size("ResNet32", "in_channels", in_channels, 1)
        _check_size("ResNet32", "blocks_per_stage", blocks_per_stage, 1)
        self.normalize = Normalize(mean, std, in_channels, "ResNet32")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.feature_dim = 64
        self.head = _make_head(self.feature_dim, num_classes, cosine_head)
        _kaiming_init(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        x = self.normalize(x)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


# --------------------------------------------------------------------------
# Small CNN (8x8 digits)
# --------------------------------------------------------------------------


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(_Classifier):
    """A small CNN for 8x8 digits (also works for 16x16 or 32x32 colour images).

    conv3x3(width)-BN-ReLU, conv3x3(width)-BN-ReLU, maxpool 2x2,
    conv3x3(2*width)-BN-ReLU, global average pooling -> features of dim 2*width.

    ``image_size`` is only checked (>= 2, for the max-pool) and recorded: the
    network is size-agnostic thanks to the global pooling. The default
    mean/std are 0.5 for every channel, which maps [0, 1] to [-1, 1].
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 width: int = 32, cosine_head: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        _check_size("SmallCNN", "in_channels", in_channels, 1)
        _check_size("SmallCNN", "image_size", image_size, 2, "it has a 2x2 max-pool")
        _check_size("SmallCNN", "width", width, 1)
        self.image_size = image_size
        mean = (0.5,) * in_channels if mean is None else mean
        std = (0.5,) * in_channels if std is None else std
        self.normalize = Normalize(mean, std, in_channels, "SmallCNN")
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            _conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            _conv_bn_relu(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 2 * width
        self.head = _make_head(self.feature_dim, num_classes, cosine_head)
        _kaiming_init(self)

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))


class MLP(_Classifier):
    """flatten -> Linear(hidden) -> ReLU -> Linear(hidden) -> ReLU -> head.

    No batch norm: its output does not depend on how a batch is split across
    processes, which makes it the model of choice for checking that DDP
    training equals single-process training.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, hidden: int = 128,
                 cosine_head: bool = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        super().__init__()
        _check_num_classes(num_classes)
        _check_size("MLP", "in_channels", in_channels, 1)
        _check_size("MLP", "image_size", image_size, 1)
        _check_size("MLP", "hidden", hidden, 1, "the width of the two hidden layers")
        mean = (0.5,) * in_channels if mean is None else mean
        std = (0.5,) * in_channels if std is None else std
        self.normalize = Normalize(mean, std, in_channels, "MLP")
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.feature_dim = hidden
        self.head = _make_head(hidden, num_classes, cosine_head)
        _kaiming_init(self)

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.normalize(x))


# --------------------------------------------------------------------------
# torchvision ResNet-50 / ResNeXt-50
# --------------------------------------------------------------------------

_TORCHVISION_ARCHS = {
    "resnet50": torchvision.models.resnet50,
    "resnext50_32x4d": torchvision.models.resnext50_32x4d,
}


class TorchvisionNet(_Classifier):
    """torchvision's ResNet-50 or ResNeXt-50 (32x4d), randomly initialised (``weights=None``).

    ``features`` runs everything up to and including the average pool (then
    flattens): 2048-dimensional. ``head`` replaces torchvision's ``fc``. With
    ``in_channels != 3`` the stem convolution is replaced by a fresh one.
    """

    def __init__(self, arch: str = "resnet50", num_classes: int = 1000, cosine_head: bool = False,
                 in_channels: int = 3, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if arch not in _TORCHVISION_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(_TORCHVISION_ARCHS)}")
        _check_num_classes(num_classes)
        self.arch = arch
        self.normalize = Normalize(mean, std, in_channels, f"TorchvisionNet({arch})")
        backbone = _TORCHVISION_ARCHS[arch](weights=None)
        if in_channels != 3:
            backbone.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.feature_dim = backbone.fc.in_features
        backbone.fc = nn.Identity()  # the backbone now ends with avgpool + flatten
        self.backbone = backbone
        self.head = _make_head(self.feature_dim, num_classes, cosine_head)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(self.normalize(x))


# --------------------------------------------------------------------------
# Factory and helpers
# --------------------------------------------------------------------------


def make_model(name: str, num_classes: int, *, in_channels: int | None = None,
               image_size: int | None = None, cosine_head: bool = False, **kwargs) -> nn.Module:
    """Build a model by name; ``name`` is one of :data:`MODEL_NAMES`.

    ``in_channels=None`` keeps the model's default (3, or 1 for ``"small-cnn"``).
    ``image_size`` is passed to ``"small-cnn"`` and ``"mlp"``; the other models are
    size-agnostic and ignore it. Other keyword arguments (``mean``, ``std``,
    ``width``, ...) go to the model's constructor.

    >>> make_model("resnet32", 100, cosine_head=True).head
    CosineLinear(in_features=64, out_features=100)
    """
    if name not in MODEL_NAMES:
        raise checks.InputError(f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    _check_num_classes(num_classes)
    unknown = sorted(set(kwargs) - set(model_params(name)))
    if unknown:
        raise checks.InputError(f"model {name!r} takes no parameter(s) {unknown}; valid: "
                                f"{', '.join(model_params(name))}.")
    if in_channels is not None:
        kwargs["in_channels"] = _check_size(name, "in_channels", in_channels, 1)
    if image_size is not None:
        _check_size(name, "image_size", image_size, 1)
    if name == "resnet32":
        return ResNet32(num_classes, cosine_head=cosine_head, **kwargs)
    if name in ("small-cnn", "mlp"):
        if image_size is not None:
            kwargs["image_size"] = image_size
        return (SmallCNN if name == "small-cnn" else MLP)(num_classes, cosine_head=cosine_head, **kwargs)
    arch = {"resnet50": "resnet50", "resnext50": "resnext50_32x4d"}[name]
    return TorchvisionNet(arch, num_classes, cosine_head=cosine_head, **kwargs)


def model_params(name: str) -> list[str]:
    """The keyword parameters ``make_model(name, ...)`` accepts (``model_params`` of a config)."""
    if name not in MODEL_NAMES:
        raise checks.InputError(f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    cls = {"resnet32": ResNet32, "small-cnn": SmallCNN, "mlp": MLP}.get(name, TorchvisionNet)
    own = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_classes", "arch")]
    return sorted({*own, "in_channels", "image_size", "cosine_head"})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``); buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
