"""Makes graph_modules_0_1_0.pkl with bnfused 0.1.0 (flat package layout): models converted,
folded, frozen and synced, pickled, with their torch outputs. Kept to show what the fixture holds."""

import pickle
import sys

import torch
from torch import nn

import bnfused

torch.manual_seed(0)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def randomize(m):
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m


base = randomize(
    nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.SiLU(), Block(4), Block(4))
).eval()
x = torch.randn(2, 3, 5, 5)
fused = bnfused.convert_model(base, fuse_activations=True).eval()
folded = bnfused.fold_batchnorm(fused)
frozen = bnfused.convert_frozen_batchnorm(
    bnfused.convert_model(
        nn.Sequential(base[0], base[1], base[2], nn.Sequential(base[3].conv1, base[3].bn1))
    )
)
sync = bnfused.SyncBatchNorm.convert_sync_batchnorm(
    bnfused.convert_model(base, fuse_activations=True)
).eval()
payload = {"input": x, "expected": base(x).detach(), "version": bnfused.__version__}
payload["expected_frozen"] = nn.Sequential(base[0], base[1], base[2], base[3].conv1, base[3].bn1)(
    x
).detach()
for name, m in (("fused", fused), ("folded", folded), ("frozen", frozen), ("sync", sync)):
    payload[name] = m
    print(name, type(m[3]).__name__)
with open(sys.argv[1], "wb") as f:
    pickle.dump(payload, f)
