"""CIFAR-style ResNet-(6n+2) (He et al., 2016) built from bnfused layers, for bn_only.py."""
import torch
import torch.nn.functional as F
from torch import nn

import bnfused


class BasicBlock(nn.Module):
    """conv-BN-relu, conv-BN, + shortcut, relu; the tail is one fused BatchNormAct2d."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bnfused.BatchNormAct2d(cout, activation="relu")
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bnfused.BatchNormAct2d(cout, activation="relu")
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          bnfused.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), residual=self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. (2016) for small images; ``width`` channels in stage 1."""

    def __init__(self, depth: int = 14, width: int = 16, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn = bnfused.BatchNormAct2d(width, activation="relu")
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.blocks(self.bn(self.conv(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(depth: int, width: int, seed: int, in_channels: int = 3) -> CifarResNet:
    """The model every setting starts from: He-init convolutions, BN weights U[0, 1), BN bias 0."""
    torch.manual_seed(seed)
    model = CifarResNet(depth, width, in_channels=in_channels)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.uniform_(m.weight, 0.0, 1.0)
            nn.init.zeros_(m.bias)
    return model
