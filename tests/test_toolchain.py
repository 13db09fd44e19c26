"""Small PyTorch features a stock batch norm supports, checked on bnfused modules."""

import copy

import pytest
import torch
from torch import nn
from torch.optim import swa_utils

import bnfused


def test_meta_device_init_then_to_empty():
    with torch.device("meta"):
        bn = bnfused.BatchNormAct2d(8, activation="relu")
    assert bn.weight.is_meta and bn.running_var.is_meta
    bn = bn.to_empty(device="cpu")
    bn.reset_parameters()
    torch.testing.assert_close(bn.running_var, torch.ones(8))
    assert bn(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_swa_update_bn_matches_stock():
    torch.manual_seed(0)
    stock = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    ours = bnfused.convert_model(copy.deepcopy(stock), fuse_activations=True)
    loader = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    for model in (stock, ours):
        swa_utils.update_bn(loader, model)
    for a, b in zip(stock[1].state_dict().values(), ours[1].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("train", [True, False])
def test_cpu_autocast_bfloat16(train):
    bn = bnfused.BatchNormAct2d(4, activation="silu").train(train)
    stock = nn.BatchNorm2d(4).train(train)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y, want = bn(h), nn.functional.silu(stock(h))
    assert h.dtype == y.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    torch.testing.assert_close(y.float(), want.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert bn.weight.grad.dtype == torch.float32


def test_deterministic_algorithms():
    bn = bnfused.BatchNormAct2d(4, activation="relu")
    x, r = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            xi = x.clone().requires_grad_()
            y = bn(xi, residual=r)
            y.square().sum().backward()
            runs.append((y, xi.grad))
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
