"""Small models with the batch-norm patterns found in real networks, for the conversion tests."""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ReLU module used twice, residual added in place."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: one ReLU module used three times."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class SmallResNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 12, 2))
        self.layer2 = nn.Sequential(Bottleneck(12, 4))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MBConv(nn.Module):
    """MobileNetV2/EfficientNet-style block: SiLU in Sequentials, residual add without act."""

    def __init__(self, c, expand=3):
        super().__init__()
        hidden = c * expand
        self.expand = nn.Sequential(
            nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(inplace=True)
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
        )
        self.project = nn.Conv2d(hidden, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.project(self.depthwise(self.expand(x))))


class MobileNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU(0.25)
        )
        self.blocks = nn.Sequential(MBConv(6), MBConv(6))

    def forward(self, x):
        return self.blocks(self.stem(x))


class Functional(nn.Module):
    """Activations and adds written as functions and methods, 1d and 3d batch norms."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.bn3d = nn.BatchNorm3d(4)
        self.conv_b = nn.Conv3d(4, 4, 1)
        self.bn3d_b = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 6)
        self.bn1d = nn.BatchNorm1d(6)
        self.fc_b = nn.Linear(6, 6)
        self.bn1d_b = nn.BatchNorm1d(6, momentum=None)
        self.bn1d_c = nn.BatchNorm1d(6, affine=False)

    def forward(self, x):
        y = F.relu(self.bn3d(self.conv(x)))
        y = torch.relu(torch.add(self.bn3d_b(self.conv_b(y)), y))
        z = y.mean((2, 3, 4))
        z = F.leaky_relu(self.bn1d(self.fc(z)), 0.25)
        z = F.silu(z + self.bn1d_b(self.fc_b(z)))
        return self.bn1d_c(z).relu_()


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = y * 2
        return torch.relu(y)


class NotFusable(nn.Module):
    """Patterns that must stay unfused: a second user, a shared BN, a larger sum."""

    def __init__(self):
        super().__init__()
        self.bn_used_twice = nn.BatchNorm2d(4)
        self.bn_shared = nn.BatchNorm2d(4)
        self.bn_broadcast = nn.BatchNorm2d(4)

    def forward(self, x, wide):
        a = self.bn_used_twice(x)
        b = torch.relu(a) + a
        c = torch.relu(self.bn_shared(x)) + self.bn_shared(b)
        d = torch.relu(self.bn_broadcast(c) + wide)  # wide (K, N, 4, H, W): a larger sum
        return b, c, d


class OptionalShortcut(nn.Module):
    """timm's DlaBasic: ``if shortcut is None: shortcut = x``, called both ways by its parent."""

    def __init__(self, c=4):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, shortcut=None, children=None):
        if shortcut is None:
            shortcut = x
        out = self.bn(self.conv(x))
        out += shortcut
        return self.relu(out)


class OptionalBranch(nn.Module):
    """An optional argument that adds an op when given: one graph cannot serve both calls."""

    def __init__(self, c=4):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x, extra=None):
        y = self.bn(x)
        if extra is not None:
            y = y * extra
        return torch.relu(y)


class CallsWithAndWithout(nn.Module):
    """Calls its optional-argument children with and without the argument."""

    def __init__(self, c=4):
        super().__init__()
        self.a, self.b = OptionalShortcut(c), OptionalShortcut(c)
        self.c, self.d = OptionalBranch(c), OptionalBranch(c)

    def forward(self, x):
        y = self.b(self.a(x), x)
        return self.d(self.c(y), y)


class BranchSum(nn.Module):
    """RepVGG / MobileOne: act(bn_a(conv3x3 x) + bn_b(conv1x1 x) + bn_c(x)), the branches in
    Sequentials, so the batch norms sit one module down from the add."""

    def __init__(self, c=4):
        super().__init__()
        self.kxk = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.one = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.identity = nn.BatchNorm2d(c)
        self.act = nn.ReLU()

    def forward(self, x):
        out = self.kxk(x) + self.one(x)
        out += self.identity(x)
        return self.act(out)
