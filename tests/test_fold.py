"""fold_batchnorm: eval-mode batch norms folded into the layer before them.

float64: the folded model equals the unfolded one to float64 rounding.
float32: the folded model's error against the float64 unfolded model is at
most 2x the unfolded fp32 model's error plus a few fp32 ulps of the output
magnitude (the weights are rounded to fp32 once after folding).
"""

import copy
import pickle

import pytest
import torch
from convert_models import BasicBlock, MobileNetish, SmallResNet
from test_convert import randomize
from torch import nn

import bnfused
from bnfused import modules as bnm

BN_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    bnm.BatchNorm1d,
    bnm.BatchNorm2d,
    bnm.BatchNorm3d,
    bnm.BatchNormAct1d,
    bnm.BatchNormAct2d,
    bnm.BatchNormAct3d,
)


def n_bn(model):
    return sum(isinstance(m, BN_TYPES) for m in model.modules())


def fold_parity(model, x):
    torch.manual_seed(2)
    model = randomize(model).eval()
    model64 = copy.deepcopy(model).double()
    folded64 = bnfused.fold_batchnorm(model64)
    want = model64(x.double())
    with torch.no_grad():
        torch.testing.assert_close(
            folded64(x.double()), want, rtol=0, atol=1e-12 * max(1.0, want.abs().max().item())
        )
    folded = bnfused.fold_batchnorm(model)
    assert all(p.dtype == torch.float32 for p in folded.parameters())
    got, ours = folded(x), model(x)
    assert got.dtype == torch.float32
    err = (got.double() - want).abs().max().item()
    base = (ours.double() - want).abs().max().item()
    atol = 4e-7 * max(1.0, want.abs().max().item())
    assert err <= 2 * base + atol, f"{err:.3g} > 2 * {base:.3g} + {atol:.3g}"
    assert n_bn(folded) == 0
    return folded


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 6])
def test_conv2d_bn(bias, groups):
    model = nn.Sequential(
        nn.Conv2d(6, 12, 3, padding=1, groups=groups, bias=bias), nn.BatchNorm2d(12), nn.ReLU()
    )
    folded = fold_parity(model, torch.randn(2, 6, 7, 5))
    assert isinstance(folded, nn.Sequential) and type(folded[1]) is nn.Identity
    assert folded[0].bias is not None


def test_conv1d_conv3d_and_no_affine():
    fold_parity(
        nn.Sequential(nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5, affine=False)), torch.randn(4, 3, 9)
    )
    fold_parity(nn.Sequential(nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3)), torch.randn(2, 2, 3, 4, 3))


def test_linear_bn1d():
    model = nn.Sequential(
        nn.Linear(7, 5), nn.BatchNorm1d(5), nn.Linear(5, 3, bias=False), nn.BatchNorm1d(3)
    )
    folded = fold_parity(model, torch.randn(6, 7))
    # The fold is exact for (N, C) only; other shapes are refused when run.
    odd = randomize(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))).eval()
    with pytest.raises(RuntimeError, match="2-D"):
        bnfused.fold_batchnorm(odd)(torch.randn(2, 5, 4))
    assert "folded_linear_output" in folded.code


def test_fused_residual_blocks():
    """conv + BatchNormAct (with and without residual): the activation and add stay."""
    conv = bnfused.convert_model(randomize(SmallResNet()), fuse_activations=True)
    folded = fold_parity(conv, torch.randn(2, 3, 8, 8))
    assert "relu" in folded.layer1[1].code and "bnfused" not in folded.layer1[1].code
    mob = bnfused.convert_model(randomize(MobileNetish()), fuse_activations=True)
    folded = fold_parity(mob, torch.randn(2, 3, 9, 9))
    assert type(folded.stem[1]) is nn.LeakyReLU and type(folded.stem[2]) is nn.Identity
    data = pickle.dumps(folded)
    assert b"bnfused" not in data


def test_stock_resnet_block_and_export():
    model = nn.Sequential(BasicBlock(4, 6, 2))
    folded = fold_parity(model, torch.randn(2, 4, 6, 6))
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(torch.export.export(folded, (x,)).module()(x), folded(x))


def test_not_folded():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize(TwoUsers()).eval()
    assert n_bn(bnfused.fold_batchnorm(model)) == 1
    train = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    with pytest.warns(UserWarning, match=r"training mode were not folded \(1\)"):
        assert n_bn(bnfused.fold_batchnorm(train)) == 1
    no_stats = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    assert n_bn(bnfused.fold_batchnorm(no_stats.eval())) == 1
    before = copy.deepcopy(model.state_dict())
    bnfused.fold_batchnorm(nn.Sequential(model.conv, model.bn))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # inplace=False leaves the input alone
