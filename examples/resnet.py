"""The one ResNet of the examples and of the benchmarks' end-to-end step.

Written as torchvision writes it (its module names and block code: one ReLU module
reused, ``out += identity``) with stock torch layers, so ``bnfused.convert_model(model,
fuse_activations=True)`` turns each block tail into one fused ``relu(bn(x) + identity)``.
Two stems: ``"imagenet"`` (7x7 conv, stride 2, max-pool: ResNet-10/18/50, used by the
benchmarks when torchvision is absent) and ``"cifar"`` (3x3 conv, no pooling, three
stages of width w, 2w, 4w: the ResNet-(6n+2) of He et al., 2016, for small images).
"""

from __future__ import annotations

from typing import List, Type, Union

import torch
from torch import nn

import bnfused

STEMS = ("imagenet", "cifar")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, width, stride), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv3x3(width, width), nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = _conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * 4)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """Input ``(N, in_channels, H, W)`` float, output ``(N, num_classes)`` logits.

    ``layers``: blocks per stage; stage ``i`` has ``width * 2**i`` channels (times the
    block's expansion) and, after the first, stride 2. Convolutions are He-initialised;
    ``bn_init="uniform"`` draws BatchNorm weights from U[0, 1) with zero bias (Frankle et
    al., 2021), in the same pass, so a seed fixes every weight.
    """

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        num_classes: int = 1000,
        width: int = 64,
        stem: str = "imagenet",
        in_channels: int = 3,
        bn_init: str = "ones",
    ):
        super().__init__()
        if stem not in STEMS or bn_init not in ("ones", "uniform"):
            raise ValueError(
                f"stem must be one of {STEMS} and bn_init 'ones' or 'uniform', "
                f"got {stem!r}, {bn_init!r}"
            )
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        else:
            self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        self.stages = len(layers)
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._layer(block, width * 2**i, blocks, 2 if i else 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and bn_init == "uniform":
                nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)

    def _layer(self, block, width: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != width * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, width * block.expansion, stride),
                nn.BatchNorm2d(width * block.expansion),
            )
        layers = [block(self.inplanes, width, stride, downsample)]
        self.inplanes = width * block.expansion
        layers += [block(self.inplanes, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def resnet10(num_classes: int = 1000) -> ResNet:
    """One block per stage: the smallest ResNet, for quick checks."""
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes)


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes)


def build(name: str = "resnet50"):
    """(model, where it came from): torchvision's when importable, else this file's.

    ``name``: "resnet50", "resnet18" or "resnet10" (this file only)."""
    try:
        import torchvision

        return getattr(torchvision.models, name)(), "torchvision " + torchvision.__version__
    except (ImportError, AttributeError):
        local = {"resnet10": resnet10, "resnet18": resnet18, "resnet50": resnet50}
        return local[name](), "examples/resnet.py"


def cifar_resnet(
    depth: int, width: int = 16, num_classes: int = 10, in_channels: int = 3, bn_init: str = "ones"
) -> ResNet:
    """ResNet-(6n+2) for small images, stock layers: depth 8, 14, 20, 32, ..."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    return ResNet(
        BasicBlock, [(depth - 2) // 6] * 3, num_classes, width, "cifar", in_channels, bn_init
    )


def build_model(depth: int, width: int, seed: int, in_channels: int = 3) -> nn.Module:
    """The examples' model: a seeded ResNet-(6n+2), BN weights U[0, 1) and bias 0 (as
    Frankle et al. train only BatchNorm), converted to bnfused with each block tail fused."""
    torch.manual_seed(seed)
    model = cifar_resnet(depth, width, in_channels=in_channels, bn_init="uniform")
    return bnfused.convert_model(model, fuse_activations=True, inplace=True)
