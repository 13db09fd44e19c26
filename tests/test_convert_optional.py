"""convert_model on forwards with optional arguments and on batch norms one module down."""

import copy

import pytest
import torch
from convert_models import BranchSum, CallsWithAndWithout, OptionalBranch
from test_convert import FUSED, count, train_parity

from bnfused import modules as bnm


def assert_same_eval(conv, orig, x):
    """float64 eval outputs of the converted and the original model agree."""
    conv, orig = copy.deepcopy(conv).double().eval(), copy.deepcopy(orig).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(conv(x.double()), orig(x.double()), rtol=1e-10, atol=1e-12)


def test_optional_shortcut_is_kept_for_both_calls():
    """``if shortcut is None: shortcut = x`` stays a branch of the fused graph; a forward
    whose optional argument adds an op is left unfused, with a warning naming it."""
    with pytest.warns(UserWarning, match=r"cannot trace c \(OptionalBranch\).*whether extra"):
        conv, orig = train_parity(CallsWithAndWithout, (torch.randn(4, 4, 5, 5),))
    assert conv.a.bn.activation == "relu" and conv.b.bn.activation == "relu"
    assert type(conv.c.bn) is bnm.BatchNorm2d and type(conv.c) is OptionalBranch
    assert_same_eval(conv, orig, torch.randn(2, 4, 5, 5))


def test_sum_of_branches_fuses_one_batch_norm_with_the_rest():
    conv, orig = train_parity(BranchSum, (torch.randn(4, 4, 5, 5),))
    assert_same_eval(conv, orig, torch.randn(2, 4, 5, 5))
    acts = sorted(m.activation for m in conv.modules() if type(m) in FUSED)
    assert acts == ["identity", "relu"] and count(conv, (bnm.BatchNorm2d,)) == 1
    assert list(conv.state_dict()) == list(BranchSum().state_dict())
