"""A direct ``torch.ops.bnfused`` call is checked like a module call: every bad argument
raises the exception type ``torch.nn.functional.batch_norm`` raises, on every backend
(the suite runs under each ``BNFUSED_BACKEND``), before any kernel runs."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, randn

import bnfused  # noqa: F401  (registers torch.ops.bnfused)
from bnfused.op import contract

IDENTITY = contract.IDENTITY


def _vec(c, dtype=torch.float32, positive=False):
    v = randn(c, dtype=dtype)
    return v.abs() + 0.5 if positive else v


# name -> (input, running_mean, running_var, weight, bias, training, eps)
_BAD_CALLS = {
    "1-D input, training": lambda: (randn(5), None, None, None, None, True, 1e-5),
    "1-D input, eval": lambda: (randn(5), _vec(5), _vec(5, positive=True), None, None, False, 1e-5),
    "0-D input, training": lambda: (randn(1)[0], None, None, None, None, True, 1e-5),
    "running_mean only, training": lambda: (randn(4, 3), _vec(3), None, None, None, True, 1e-5),
    "running_var only, training": lambda: (
        randn(4, 3),
        None,
        _vec(3, positive=True),
        None,
        None,
        True,
        1e-5,
    ),
    "running_var only, eval": lambda: (
        randn(4, 3),
        None,
        _vec(3, positive=True),
        None,
        None,
        False,
        1e-5,
    ),
    "no running stats, eval": lambda: (randn(4, 3), None, None, None, None, False, 1e-5),
    "running_mean of size (1, C)": lambda: (
        randn(4, 3),
        randn(1, 3),
        _vec(3, positive=True),
        None,
        None,
        True,
        1e-5,
    ),
    "running stats of 4 channels for 3": lambda: (
        randn(4, 3),
        _vec(4),
        _vec(4, positive=True),
        None,
        None,
        True,
        1e-5,
    ),
    "weight of 4 channels for 3": lambda: (randn(4, 3, 2), None, None, _vec(4), None, True, 1e-5),
    "eps = 0, training": lambda: (randn(4, 3), None, None, None, None, True, 0.0),
    "eps < 0, training": lambda: (
        randn(4, 3, 2),
        _vec(3),
        _vec(3, positive=True),
        _vec(3),
        None,
        True,
        -1e-3,
    ),
    "one value per channel, training": lambda: (randn(1, 3), None, None, None, None, True, 1e-5),
    "int64 input": lambda: (
        torch.ones(4, 3, dtype=torch.int64, device=DEVICE),
        None,
        None,
        None,
        None,
        True,
        1e-5,
    ),
    "int64 running stats": lambda: (
        randn(4, 3),
        torch.zeros(3, dtype=torch.int64, device=DEVICE),
        torch.ones(3, dtype=torch.int64, device=DEVICE),
        None,
        None,
        True,
        1e-5,
    ),
    "float64 weight, float32 input": lambda: (
        randn(4, 3),
        None,
        None,
        _vec(3, dtype=torch.float64),
        None,
        True,
        1e-5,
    ),
    "float64 running stats, float32 input": lambda: (
        randn(4, 3, 2),
        _vec(3, torch.float64),
        _vec(3, torch.float64, True),
        None,
        None,
        False,
        1e-5,
    ),
}


def _clone(t):
    return t.clone() if isinstance(t, torch.Tensor) else t


@pytest.mark.parametrize("case", list(_BAD_CALLS))
def test_direct_forward_raises_torchs_exception_type(case):
    x, rm, rv, w, b, training, eps = _BAD_CALLS[case]()
    with pytest.raises(Exception) as theirs:
        F.batch_norm(x, _clone(rm), _clone(rv), w, b, training=training, eps=eps)
    before = [_clone(t) for t in (rm, rv)]
    with pytest.raises(type(theirs.value)):
        torch.ops.bnfused.forward(x, w, b, rm, rv, None, training, 0.1, eps, IDENTITY, 0.0)
    for t, t0 in zip((rm, rv), before):  # nothing written before the check
        if t is not None:
            assert torch.equal(t, t0)


@pytest.mark.parametrize("residual_shape", [(4, 3, 1), (4, 3, 2, 1), (1, 3, 2)])
def test_direct_forward_rejects_a_residual_that_would_broadcast(residual_shape):
    x = randn(4, 3, 2)
    with pytest.raises(RuntimeError, match=r"residual of size .* does not match input"):
        torch.ops.bnfused.forward(
            x, None, None, None, None, randn(*residual_shape), True, 0.1, 1e-5, contract.RELU, 0.0
        )


def test_direct_forward_rejects_residual_of_other_dtype():
    x = randn(4, 3, 2)
    with pytest.raises(RuntimeError, match="residual dtype"):
        torch.ops.bnfused.forward(
            x,
            None,
            None,
            None,
            None,
            randn(4, 3, 2, dtype=torch.float64),
            True,
            0.1,
            1e-5,
            contract.RELU,
            0.0,
        )


def test_direct_forward_rejects_unknown_activation():
    with pytest.raises(RuntimeError, match="unknown activation code 99"):
        torch.ops.bnfused.forward(
            randn(4, 3), None, None, None, None, None, True, 0.1, 1e-5, 99, 0.0
        )


def _saved(x):
    _, mean, invstd, mask, lo = torch.ops.bnfused.forward(
        x, None, None, None, None, None, True, 0.1, 1e-5, IDENTITY, 0.0
    )
    return mean, invstd, mask, lo


@pytest.mark.parametrize(
    "bad",
    [
        "grad_output shape",
        "grad_output dtype",
        "save_mean size",
        "save_invstd dtype",
        "mask size",
        "output_mask length",
        "weight size",
        "int64 input",
    ],
)
def test_direct_backward_checks_its_arguments(bad):
    x = randn(4, 3, 5)
    mean, invstd, mask, lo = _saved(x)
    dy, weight, flags = randn(4, 3, 5), None, [True, False, False, False]
    if bad == "grad_output shape":
        dy = randn(4, 3, 4)
    elif bad == "grad_output dtype":
        dy = dy.double()
    elif bad == "save_mean size":
        mean = mean[:2]
    elif bad == "save_invstd dtype":
        invstd = invstd.double()
    elif bad == "mask size":
        mask = torch.zeros(3, dtype=torch.uint8, device=DEVICE)
    elif bad == "output_mask length":
        flags = [True, False, False]
    elif bad == "weight size":
        weight = _vec(4)
    elif bad == "int64 input":
        x, dy = x.long(), dy.long()
    error = NotImplementedError if bad == "int64 input" else RuntimeError
    with pytest.raises(error):
        torch.ops.bnfused.backward(
            dy, x, weight, None, mean, invstd, mask, None, True, 1e-5, IDENTITY, 0.0, flags, lo
        )


def test_checked_direct_call_still_computes():
    """The checks pass what torch accepts: half input with float32 parameters."""
    x = randn(4, 3, 5, dtype=torch.bfloat16)
    rm, rv, w = _vec(3), _vec(3, positive=True), _vec(3)
    y, *_ = torch.ops.bnfused.forward(
        x, w, None, rm.clone(), rv.clone(), None, False, 0.1, 1e-5, IDENTITY, 0.0
    )
    torch.testing.assert_close(y, F.batch_norm(x, rm, rv, w, None, False, 0.1, 1e-5))
