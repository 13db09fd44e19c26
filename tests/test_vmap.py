"""torch.func on bnfused models: vmap ensembles, per-sample gradients, batched backward.

Each case runs the same computation on a stock torch model and on its bnfused
conversion, in float64, and requires the same numbers to 1e-10: every member
of a vmapped batch norm normalizes with its own statistics.
"""

import copy

import pytest
import torch
from torch import nn
from torch.func import (
    functional_call,
    grad,
    replace_all_batch_norm_modules_,
    stack_module_state,
    vmap,
)

import bnfused

TOL = dict(rtol=1e-10, atol=1e-10)


class Residual(nn.Module):
    """``relu(bn(conv(x)) + x)``; with ``fused`` one bnfused call with a residual (and its
    activation mask). Both versions have the same state_dict."""

    def __init__(self, track=True, fused=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.fused = fused
        self.bn = (
            bnfused.BatchNormAct2d(3, track_running_stats=track, activation="relu")
            if fused
            else nn.BatchNorm2d(3, track_running_stats=track)
        )
        self.head = nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        y = self.conv(x)
        y = self.bn(y, residual=x) if self.fused else torch.relu(self.bn(y) + x)
        return self.head(y.flatten(1))


def plain(track=True):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4, track_running_stats=track),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )


def randomized(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    return model.double()


def pair(build, **kwargs):
    """(stock model, the same with bnfused batch norms and fused activations)."""
    stock = randomized(build(**kwargs))
    if build is Residual:
        ours = Residual(fused=True, **kwargs).double()
        ours.load_state_dict(stock.state_dict())
    else:
        ours = bnfused.convert_model(copy.deepcopy(stock), fuse_activations=True)
    assert any(type(m).__module__.startswith("bnfused") for m in ours.modules())
    return stock, ours


def ensemble(models, x, train):
    """vmap of functional_call over stacked parameters and buffers; returns (out, grads, bufs)."""
    for m in models:
        m.train(train)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(base, (p, b), (x,))

    out = vmap(call)(params, buffers, x)
    out.square().sum().backward()
    return out, {k: v.grad for k, v in params.items()}, buffers


@pytest.mark.parametrize("build", [plain, Residual])
@pytest.mark.parametrize("train, track", [(True, False), (False, True), (True, True)])
def test_ensemble_matches_stock(build, train, track):
    stocks, ours = zip(*[pair(build, track=track) for _ in range(3)])
    x = torch.randn(3, 4, 3, 5, 5, dtype=torch.float64)
    want = ensemble(stocks, x, train)
    got = ensemble(ours, x, train)
    torch.testing.assert_close(got[0], want[0], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)
    torch.testing.assert_close(got[2], want[2], **TOL)  # running stats updated in place


def per_sample_grads(model, x, target, train):
    model.train(train)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, x, t):
        return (functional_call(model, (p, buffers), (x.unsqueeze(0),)) - t).square().sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)


@pytest.mark.parametrize("build", [plain, Residual])
@pytest.mark.parametrize("train", [True, False])
def test_per_sample_grads_match_stock(build, train):
    stock, ours = pair(build)
    if train:  # one sample's batch statistics: no running statistics to update per sample
        replace_all_batch_norm_modules_(stock)
        replace_all_batch_norm_modules_(ours)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    target = torch.randn(6, 2, dtype=torch.float64)
    want = per_sample_grads(stock, x, target, train)
    got = per_sample_grads(ours, x, target, train)
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=name)


def test_batched_grad_outputs_match_stock():
    """``is_grads_batched``: an unbatched forward, its backward vmapped over grad outputs."""
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    grads = torch.randn(4, 2, 2, dtype=torch.float64)
    for train in (True, False):
        results = []
        for model in pair(Residual, track=not train):
            inp = x.clone().requires_grad_()
            out = model.train(train)(inp)
            results.append(
                torch.autograd.grad(
                    out, [inp] + list(model.parameters()), grads, is_grads_batched=True
                )
            )
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want, **TOL)


def test_vmap_over_weights_with_one_shared_input():
    bn = bnfused.BatchNormAct2d(3, activation="leaky_relu", dtype=torch.float64).eval()
    stock = nn.BatchNorm2d(3, dtype=torch.float64).eval()
    weights = torch.rand(4, 3, dtype=torch.float64) + 0.5
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    r = torch.randn(2, 3, 4, 4, dtype=torch.float64)

    def ours(w):
        return functional_call(bn, {"weight": w}, (x,), {"residual": r})

    def theirs(w):
        return nn.functional.leaky_relu(functional_call(stock, {"weight": w}, (x,)) + r)

    torch.testing.assert_close(vmap(ours)(weights), vmap(theirs)(weights), **TOL)


def test_training_with_unbatched_running_stats_raises():
    bn = bnfused.BatchNorm2d(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="replace_all_batch_norm_modules_"):
        vmap(bn)(torch.randn(2, 4, 3, 2, 2, dtype=torch.float64))
