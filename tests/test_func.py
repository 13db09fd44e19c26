"""torch.func's differentiation transforms through bnfused, against stock torch modules.

``vjp``, ``jacrev``, ``jvp``, ``jacfwd`` and their compositions (``hessian``,
``jacrev(jacrev)``, ``jacfwd(jacfwd)``) on a bnfused module must give a stock
batch norm's numbers (followed by the same activation, after the same residual
add) to 1e-10 in float64, for the input, the residual and the parameters, in
training and in eval. Training uses ``track_running_stats=False``: a grad
transform refuses to mutate captured running statistics, for stock modules too.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacfwd, jacrev, jvp, vjp

import bnfused

TOL = dict(rtol=1e-10, atol=1e-10)
ACTIVATIONS = {"identity": lambda z: z, "relu": F.relu, "silu": F.silu}

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def pair(activation, train, channels=3):
    """(stock f(x, r, params), bnfused f(x, r, params), params): ``act(bn(x) + r)``."""
    stock = nn.BatchNorm2d(channels, track_running_stats=not train).double()
    ours = bnfused.BatchNormAct2d(
        channels, activation=activation, track_running_stats=not train
    ).double()
    with torch.no_grad():
        stock.weight.uniform_(0.5, 1.5)
        stock.bias.uniform_(-0.5, 0.5)
        if not train:
            stock.running_mean.uniform_(-0.5, 0.5)
            stock.running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(stock.state_dict())
    stock.train(train)
    ours.train(train)
    act = ACTIVATIONS[activation]

    def f_stock(x, r, params):
        return act(functional_call(stock, params, (x,)) + r)

    def f_ours(x, r, params):
        return functional_call(ours, params, (x, r))

    params = {k: v.detach().clone() for k, v in stock.named_parameters()}
    return f_stock, f_ours, params


def inputs(shape=(4, 3, 5, 2)):
    return torch.randn(*shape, dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)


def assert_same(ours, theirs):
    for a, b in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)):
        torch.testing.assert_close(a, b, **TOL)


CASES = pytest.mark.parametrize(
    "activation,train", [(a, t) for a in ACTIVATIONS for t in (True, False)]
)


@CASES
def test_vjp_matches_stock(activation, train):
    """Gradients of input, residual and parameters, from the function vjp returns, called
    after the transform has exited (with grad mode on and off)."""
    f_stock, f_ours, params = pair(activation, train)
    x, r = inputs()
    y_s, vjp_s = vjp(f_stock, x, r, params)
    y_o, vjp_o = vjp(f_ours, x, r, params)
    assert_same(y_o, y_s)
    dy = torch.randn_like(y_s)
    grads = vjp_o(dy)
    assert grads[0].abs().max() > 0.1  # not a vanished input gradient
    assert_same(grads, vjp_s(dy))
    with torch.no_grad():
        assert_same(vjp_o(dy), vjp_s(dy))


@CASES
def test_jacrev_matches_stock(activation, train):
    f_stock, f_ours, params = pair(activation, train)
    x, r = inputs((3, 3, 2, 2))
    assert_same(
        jacrev(f_ours, argnums=(0, 1, 2))(x, r, params),
        jacrev(f_stock, argnums=(0, 1, 2))(x, r, params),
    )


@CASES
def test_jvp_and_jacfwd_match_stock(activation, train):
    f_stock, f_ours, params = pair(activation, train)
    x, r = inputs((3, 3, 2, 2))
    tangents = (
        torch.randn_like(x),
        torch.randn_like(r),
        {k: torch.randn_like(v) for k, v in params.items()},
    )
    assert_same(jvp(f_ours, (x, r, params), tangents), jvp(f_stock, (x, r, params), tangents))
    assert_same(
        jacfwd(f_ours, argnums=(0, 1, 2))(x, r, params),
        jacfwd(f_stock, argnums=(0, 1, 2))(x, r, params),
    )


@CASES
def test_second_order_transforms_match_stock(activation, train):
    """hessian (jacfwd of jacrev), jacrev of jacrev, jacfwd of jacfwd, jacrev of jacfwd."""
    f_stock, f_ours, params = pair(activation, train, channels=2)
    x, r = inputs((3, 2, 2, 1))

    def scalar(f):
        return lambda x: f(x, r, params).pow(3).sum()

    for outer, inner in ((jacfwd, jacrev), (jacrev, jacrev), (jacfwd, jacfwd), (jacrev, jacfwd)):
        assert_same(outer(inner(scalar(f_ours)))(x), outer(inner(scalar(f_stock)))(x))
    assert_same(hessian(scalar(f_ours))(x), hessian(scalar(f_stock))(x))


@pytest.mark.parametrize("direct_op", [False, True], ids=["module", "op"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_forward_ad_dual_tensors_match_stock(direct_op, requires_grad):
    """torch.autograd.forward_ad in plain eager code, through the module and the op."""
    stock = nn.BatchNorm2d(3).double()
    ours = bnfused.BatchNorm2d(3).double()
    x, t = inputs()
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.clone().requires_grad_(requires_grad), t)
        if direct_op:
            y = torch.ops.bnfused.forward(
                dual,
                ours.weight,
                ours.bias,
                ours.running_mean,
                ours.running_var,
                None,
                True,
                0.1,
                1e-5,
                0,
                0.0,
            )[0]
        else:
            y = ours(dual)
        tangent = fwAD.unpack_dual(y).tangent
        expected = fwAD.unpack_dual(stock(dual)).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, expected, **TOL)
    torch.testing.assert_close(ours.running_mean, stock.running_mean, **TOL)
    torch.testing.assert_close(ours.running_var, stock.running_var, **TOL)


def test_double_backward_of_a_vjp_function():
    """create_graph through the function vjp returns: gradients of the gradient."""
    f_stock, f_ours, params = pair("silu", True)
    x, r = inputs()
    dy = torch.randn_like(x)
    results = []
    for f in (f_stock, f_ours):
        xg = x.clone().requires_grad_(True)
        _, fn = vjp(lambda x: f(x, r, params), xg)
        (gx,) = fn(dy)
        results.append(torch.autograd.grad(gx.square().sum(), xg)[0])
    assert_same(results[1], results[0])


def test_backward_op_refuses_a_tangent():
    """The backward op's kernels cannot carry a tangent: they raise rather than drop it."""
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64)
    _, mean, invstd, mask, lo = torch.ops.bnfused.forward(
        x, None, None, None, None, None, True, 0.1, 1e-5, 0, 0.0
    )
    with fwAD.dual_level():
        dy = fwAD.make_dual(torch.randn_like(x), torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="no forward-mode derivative"):
            torch.ops.bnfused.backward(
                dy,
                x,
                None,
                None,
                mean,
                invstd,
                mask,
                None,
                True,
                1e-5,
                0,
                0.0,
                [True, False, False, False],
                lo,
            )
