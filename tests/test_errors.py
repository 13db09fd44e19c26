"""Bad input raises what torch raises, with a message that names the problem."""

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, randn
from torch import nn

import bnfused


def same_exception(fn_ours, fn_torch):
    with pytest.raises(Exception) as theirs:
        fn_torch()
    with pytest.raises(type(theirs.value)) as ours:
        fn_ours()
    return str(ours.value)


@pytest.mark.parametrize(
    "kind,bad_shape",
    [
        ("2d", (4, 3)),
        ("2d", (2, 3, 4)),
        ("1d", (2, 3, 4, 5)),
        ("3d", (2, 3, 4, 4)),
    ],
)
def test_wrong_number_of_dims(kind, bad_shape):
    ours = {"1d": bnfused.BatchNorm1d, "2d": bnfused.BatchNorm2d, "3d": bnfused.BatchNorm3d}[kind]
    theirs = {"1d": nn.BatchNorm1d, "2d": nn.BatchNorm2d, "3d": nn.BatchNorm3d}[kind]
    x = randn(*bad_shape)
    msg = same_exception(lambda: ours(3, device=DEVICE)(x), lambda: theirs(3, device=DEVICE)(x))
    assert "input" in msg


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 3, 1)])
def test_one_value_per_channel_in_training(shape):
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    ours = {2: bnfused.BatchNorm1d, 3: bnfused.BatchNorm1d, 4: bnfused.BatchNorm2d}[len(shape)]
    x = randn(*shape)
    msg = same_exception(lambda: ours(3, device=DEVICE)(x), lambda: kind(3, device=DEVICE)(x))
    assert "more than 1 value per channel" in msg
    ours(3, device=DEVICE).eval()(x)  # eval mode accepts it, like torch


def test_channel_mismatch_names_both_sizes():
    x = randn(4, 5, 3, 3)
    msg = same_exception(
        lambda: bnfused.BatchNorm2d(3, device=DEVICE)(x),
        lambda: nn.BatchNorm2d(3, device=DEVICE)(x),
    )
    assert "3" in msg and "5" in msg


def test_functional_errors_match_torch():
    x = randn(4, 3)
    rm, rv = torch.zeros(3, device=DEVICE), torch.ones(3, device=DEVICE)
    same_exception(
        lambda: bnfused.functional.batch_norm(x, None, None, training=False),
        lambda: F.batch_norm(x, None, None, training=False),
    )
    same_exception(
        lambda: bnfused.functional.batch_norm(x, rm, rv, weight=torch.ones(4, device=DEVICE)),
        lambda: F.batch_norm(x, rm, rv, weight=torch.ones(4, device=DEVICE)),
    )
    same_exception(
        lambda: bnfused.functional.batch_norm(randn(1, 3), rm, rv, training=True),
        lambda: F.batch_norm(randn(1, 3), rm, rv, training=True),
    )


def test_integer_input_not_implemented():
    x = torch.ones(2, 3, 2, 2, dtype=torch.int32, device=DEVICE)
    same_exception(
        lambda: bnfused.BatchNorm2d(3, device=DEVICE)(x),
        lambda: nn.BatchNorm2d(3, device=DEVICE)(x),
    )


def test_residual_checks():
    m = bnfused.BatchNormAct2d(3, device=DEVICE)
    x = randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"residual of size \(2, 3, 4, 5\)"):
        m(x, randn(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="residual dtype"):
        m(x, randn(2, 3, 4, 4, dtype=torch.float64))


def test_bad_activation_and_backend_names():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        bnfused.BatchNormAct2d(3, activation="tanh")
    with pytest.raises(ValueError, match="unknown bnfused backend"):
        with bnfused.use_backend("fortran"):
            pass


def test_mixed_parameter_dtype():
    x = randn(4, 3)
    rm = torch.zeros(3, dtype=torch.float64, device=DEVICE)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        bnfused.functional.batch_norm(x, rm, rm.clone(), training=True)


def test_unavailable_backend_says_why():
    report = bnfused.backends()
    assert set(report) == {"cuda", "triton", "cpu", "cuda-emulated", "reference"}
    serves = {
        "cpu": DEVICE.type == "cpu",
        "cuda": DEVICE.type == "cuda",
        "triton": DEVICE.type == "cuda",
        "cuda-emulated": DEVICE.type == "cpu",
        "reference": True,
    }
    missing = [name for name, r in report.items() if not r["available"] and serves[name]]
    for name in missing:
        assert report[name]["reason"]
        with bnfused.use_backend(name), pytest.raises(RuntimeError, match=name):
            bnfused.BatchNorm2d(3, device=DEVICE)(randn(2, 3, 2, 2))


def test_forced_backend_leaves_other_devices_alone():
    """BNFUSED_BACKEND=cuda still lets CPU tensors run (with their own backend)."""
    x = torch.randn(4, 3, 2, 2)
    with bnfused.use_backend("cuda"):
        y = bnfused.BatchNorm2d(3)(x)
    torch.testing.assert_close(y, nn.BatchNorm2d(3)(x))


_FUNCTIONAL_CASES = {
    "1-D input, training": lambda: (randn(5), None, None, None, True, 1e-5),
    "1-D input, eval": lambda: (randn(5), randn(5), randn(5).abs(), None, False, 1e-5),
    "0-D input, training": lambda: (randn(1)[0], None, None, None, True, 1e-5),
    "0-D input, eval": lambda: (randn(1)[0], randn(1), randn(1).abs(), None, False, 1e-5),
    "running_mean only, training": lambda: (randn(4, 3), randn(3), None, None, True, 1e-5),
    "running_var only, training": lambda: (randn(4, 3), None, randn(3).abs(), None, True, 1e-5),
    "running_var only, eval": lambda: (randn(4, 3), None, randn(3).abs(), None, False, 1e-5),
    "running_mean of size (1, C)": lambda: (
        randn(4, 3),
        randn(1, 3),
        randn(3).abs(),
        None,
        True,
        1e-5,
    ),
    "eps = 0, training": lambda: (randn(4, 3), None, None, None, True, 0.0),
    "eps < 0, training": lambda: (randn(4, 3, 2), randn(3), randn(3).abs(), randn(3), True, -1e-3),
}


@pytest.mark.parametrize("case", list(_FUNCTIONAL_CASES))
def test_functional_raises_torchs_exception_type(case):
    x, rm, rv, w, training, eps = _FUNCTIONAL_CASES[case]()
    rm2, rv2 = (t.clone() if t is not None else None for t in (rm, rv))
    same_exception(
        lambda: bnfused.functional.batch_norm(x, rm, rv, w, training=training, eps=eps),
        lambda: F.batch_norm(x, rm2, rv2, w, training=training, eps=eps),
    )


@pytest.mark.parametrize("cls", ["BatchNorm2d", "BatchNormAct2d"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_eps_not_positive_in_training(cls, momentum):
    x = randn(2, 3, 4, 4)
    ours = getattr(bnfused, cls)(3, eps=0.0, momentum=momentum, device=DEVICE)
    msg = same_exception(
        lambda: ours(x), lambda: nn.BatchNorm2d(3, eps=0.0, momentum=momentum, device=DEVICE)(x)
    )
    assert "eps must be positive" in msg
    assert (ours.running_var == 1).all() and (ours.running_mean == 0).all()
    ours.eval()(x)  # eval mode accepts eps = 0, like torch
