"""Tests for ltkit.models: architecture facts, the shared interface, and error messages."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ltkit.models import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_NAMES,
    CosineLinear,
    ResNet32,
    SmallCNN,
    TorchvisionNet,
    count_parameters,
    make_model,
)

# name -> (constructor kwargs, input shape) for the interface tests; kept tiny for speed.
CASES = {
    "resnet32": (dict(), (4, 3, 32, 32)),
    "small-cnn": (dict(), (4, 1, 8, 8)),
    "mlp": (dict(), (4, 1, 8, 8)),
    "resnet50": (dict(), (1, 3, 64, 64)),
    "resnext50": (dict(), (1, 3, 64, 64)),
}
FEATURE_DIMS = {"resnet32": 64, "small-cnn": 64, "mlp": 128, "resnet50": 2048, "resnext50": 2048}
NUM_CLASSES = 7


@lru_cache(maxsize=None)
def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kwargs, shape = CASES[name]
    return make_model(name, NUM_CLASSES, **kwargs).eval(), torch.rand(shape)


@pytest.fixture(params=MODEL_NAMES)
def built(request):
    """(name, model in eval mode, input in [0, 1]) for every model name, built once per session."""
    return (request.param, *_build(request.param))


def first_conv(model: nn.Module) -> nn.Module:
    """The first layer with weights (a conv; the first linear layer of the MLP, which sees the image flattened)."""
    return next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


# ---------------------------------------------------------------- ResNet-32


def test_resnet32_parameter_count_matches_paper():
    assert count_parameters(ResNet32(num_classes=10)) == 464_154  # "0.46 M"
    # only the head changes: 64*100 + 100 instead of 64*10 + 10
    assert count_parameters(ResNet32(num_classes=100)) == 464_154 - 650 + 6_500 == 470_004
    # a cosine head has no bias
    assert count_parameters(ResNet32(num_classes=10, cosine_head=True)) == 464_154 - 10


def test_resnet32_structure():
    model = ResNet32()
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(s) for s in stages] == [5, 5, 5]
    assert [s[0].conv1.stride for s in stages] == [(1, 1), (2, 2), (2, 2)]
    assert [s[-1].conv2.out_channels for s in stages] == [16, 32, 64]
    assert model.conv1.out_channels == 16 and model.conv1.kernel_size == (3, 3)
    # 32 conv layers + the head = "ResNet-32"
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 1 == 32


def test_option_a_shortcut_has_no_parameters():
    model = ResNet32()
    boundary, identity = model.layer2[0], model.layer2[1]  # 16->32 stride 2, then 32->32
    assert count_parameters(boundary.shortcut) == 0
    assert isinstance(identity.shortcut, nn.Identity)
    bn = 2 * 32 * 2  # two BatchNorms of 32 channels (weight + bias)
    assert count_parameters(boundary) == 9 * 16 * 32 + 9 * 32 * 32 + bn
    assert count_parameters(identity) == 9 * 32 * 32 * 2 + bn
    # their difference is exactly the narrower first conv: nothing extra for the shortcut
    assert count_parameters(identity) - count_parameters(boundary) == 9 * 32 * (32 - 16)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = ResNet32().layer3[0]  # 32 -> 64 channels, stride 2
    x = torch.randn(2, 32, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 64, 4, 4)
    torch.testing.assert_close(out[:, 16:48], x[:, :, ::2, ::2])
    assert out[:, :16].abs().sum() == 0 and out[:, 48:].abs().sum() == 0


def test_kaiming_normal_init():
    torch.manual_seed(0)
    for model in (ResNet32(), SmallCNN()):
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for layer in layers:
            w = layer.weight
            expected = math.sqrt(2.0 / w[0].numel())  # fan_in = in_channels * kh * kw
            assert w.std().item() == pytest.approx(expected, rel=0.2), layer
            assert abs(w.mean().item()) < 0.2 * expected
    # the big 64-channel convs give a tight estimate
    w = ResNet32().layer3[-1].conv2.weight
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.03)


# ---------------------------------------------------------------- CosineLinear


def test_cosine_linear_is_cosine_similarity():
    torch.manual_seed(0)
    layer = CosineLinear(16, 5)
    assert layer.weight.shape == (16, 5)
    torch.testing.assert_close(layer.weight.norm(dim=0), torch.ones(5))  # renorm'd columns
    x = torch.randn(32, 16) * 10
    out = layer(x)
    assert out.shape == (32, 5)
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
    by_hand = F.cosine_similarity(x[:, :, None], layer.weight[None, :, :], dim=1)
    torch.testing.assert_close(out, by_hand, atol=1e-6, rtol=1e-5)
    # scale-invariant in x
    torch.testing.assert_close(layer(3 * x), out, atol=1e-6, rtol=1e-5)
    # the same input as a class prototype scores exactly 1
    torch.testing.assert_close(layer(layer.weight[:, 2][None])[0, 2], torch.tensor(1.0))


def test_cosine_head_option():
    for name in ("resnet32", "small-cnn"):
        model = make_model(name, 10, cosine_head=True)
        assert isinstance(model.head, CosineLinear)
        x = torch.rand(4, *((3, 32, 32) if name == "resnet32" else (1, 8, 8)))
        out = model(x)
        assert out.abs().max() <= 1 + 1e-6


# ---------------------------------------------------------------- shared interface


def test_forward_is_head_of_features(built):
    name, model, x = built
    with torch.no_grad():
        feats = model.features(x)
        out = model(x)
        assert feats.shape == (x.shape[0], FEATURE_DIMS[name])
        assert model.feature_dim == FEATURE_DIMS[name]
        assert out.shape == (x.shape[0], NUM_CLASSES)
        torch.testing.assert_close(out, model.head(feats))


def test_normalisation_is_the_first_step(built):
    name, model, x = built
    seen = {}
    handle = first_conv(model).register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    try:
        with torch.no_grad():
            model.features(x)
    finally:
        handle.remove()
    mean, std = model.normalize.mean, model.normalize.std
    assert mean.shape == std.shape == (1, x.shape[1], 1, 1)
    torch.testing.assert_close(seen["x"], ((x - mean) / std).reshape(seen["x"].shape))
    expected_mean = {"resnet32": CIFAR_MEAN, "small-cnn": (0.5,), "mlp": (0.5,), "resnet50": IMAGENET_MEAN,
                     "resnext50": IMAGENET_MEAN}[name]
    torch.testing.assert_close(mean.flatten(), torch.tensor(expected_mean))
    # buffers, not parameters: they travel with state_dict but are not trained
    assert "normalize.mean" in model.state_dict()
    assert all("normalize" not in n for n, _ in model.named_parameters())


def test_custom_mean_std_and_channels():
    model = SmallCNN(in_channels=3, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125)).eval()
    seen = {}
    first_conv(model).register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    x = torch.rand(2, 3, 16, 16)
    model(x)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 0.125]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], expected)
    grey = ResNet32(in_channels=1, mean=(0.5,), std=(0.25,))
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_small_cnn_sizes_and_width():
    for size, channels in [(8, 1), (16, 3), (32, 3)]:
        model = make_model("small-cnn", 10, in_channels=channels, image_size=size, width=8)
        assert model.image_size == size
        assert model.features(torch.rand(3, channels, size, size)).shape == (3, 16)
    assert count_parameters(SmallCNN(width=8)) < count_parameters(SmallCNN(width=32))


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    for model, x in [(ResNet32().eval(), torch.rand(2, 3, 32, 32)),
                     (SmallCNN().eval(), torch.rand(8, 1, 8, 8))]:
        with torch.no_grad():
            ref = model(x)
            cl_model = model.to(memory_format=torch.channels_last)
            cl = cl_model(x.to(memory_format=torch.channels_last))
            torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x)
            assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
            assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 3, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet50", "resnext50"])
def test_torchvision_models_are_the_right_ones(name):
    model, _ = _build(name)
    assert isinstance(model, TorchvisionNet)
    assert isinstance(model.backbone.fc, nn.Identity)  # fc is replaced by model.head
    assert model.head.in_features == 2048 and model.head.out_features == NUM_CLASSES
    # resnext50_32x4d uses grouped 3x3 convs (32 groups); resnet50 does not
    groups = model.backbone.layer1[0].conv2.groups
    assert groups == (32 if name == "resnext50" else 1)
    expected = {"resnet50": 25_557_032, "resnext50": 25_028_904}[name]  # torchvision, 1000 classes
    assert count_parameters(model) == expected - (2048 * 1000 + 1000) + (2048 + 1) * NUM_CLASSES


def test_torchvision_other_in_channels():
    model = TorchvisionNet("resnet50", num_classes=5, in_channels=1, mean=(0.5,), std=(0.5,))
    assert model.backbone.conv1.in_channels == 1
    assert model.normalize.mean.shape == (1, 1, 1, 1)
    assert model.backbone.fc.__class__ is nn.Identity
    assert model.head.weight.shape == (5, 2048)
    torch.testing.assert_close(model.normalize.std.flatten(), torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"in_channels=1 but mean has 3"):
        TorchvisionNet("resnet50", num_classes=5, in_channels=1, std=IMAGENET_STD[:1])


# ---------------------------------------------------------------- errors and helpers


def test_count_parameters_counts_only_trainable():
    model = SmallCNN()
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    for p in model.body.parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == model.head.weight.numel() + model.head.bias.numel()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: resnet32, small-cnn, mlp, resnet50, resnext50"):
        make_model("resnet18", 10)
    with pytest.raises(ValueError, match="choose one of"):
        TorchvisionNet("vgg16", 10)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_too_few_classes(num_classes):
    with pytest.raises(ValueError, match=f"num_classes={num_classes} must be >= 2"):
        make_model("small-cnn", num_classes)
    with pytest.raises(ValueError, match="num_classes"):
        ResNet32(num_classes=num_classes)


def test_in_channels_mismatch_has_a_fix_hint():
    with pytest.raises(ValueError, match=r"in_channels=1 but mean has 3 .* e\.g\. mean=\(0\.5,\)"):
        make_model("resnet32", 10, in_channels=1)
    with pytest.raises(ValueError, match=r"in_channels=3 but mean has 1 .* mean=\(0\.5, 0\.5, 0\.5,\)"):
        make_model("small-cnn", 10, in_channels=3, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="in_channels=1"):
        make_model("resnet50", 10, in_channels=1)
    with pytest.raises(ValueError, match="std must be > 0"):
        SmallCNN(std=(0.0,))
    with pytest.raises(ValueError, match=r"image_size=1 must be >= 2 \(it has a 2x2 max-pool"):
        make_model("small-cnn", 10, image_size=1)
    # matching mean/std fix it
    assert make_model("small-cnn", 10, in_channels=3).normalize.mean.shape == (1, 3, 1, 1)
    assert make_model("resnet32", 10, in_channels=1, mean=CIFAR_STD[:1], std=(0.25,)) is not None
