"""torch.jit.script of bnfused modules and of models holding them.

A scripted module runs ``torch.nn.BatchNorm*d``'s own forward plus the residual
add and the activation (:mod:`bnfused.modules.scripted`): it must match the
eager module in training and in eval, output, input gradient and running
statistics (``num_batches_tracked`` and ``momentum=None`` included), and hold
no bnfused op, so it loads and runs where bnfused cannot be imported.
"""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import bnfused
from bnfused.modules import BatchNormDropAct2d

TOL = dict(rtol=1e-10, atol=1e-10)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

MODULES = {
    "bn1d": (lambda: bnfused.BatchNorm1d(4), (6, 4, 3), False),
    "bn2d": (lambda: bnfused.BatchNorm2d(4), (3, 4, 5, 2), False),
    "bn3d": (lambda: bnfused.BatchNorm3d(4), (3, 4, 2, 3, 2), False),
    "relu_residual": (lambda: bnfused.BatchNormAct2d(4, activation="relu"), (3, 4, 5, 2), True),
    "leaky_relu": (
        lambda: bnfused.BatchNormAct2d(4, activation="leaky_relu", negative_slope=0.2),
        (3, 4, 5, 2),
        False,
    ),
    "silu_residual": (lambda: bnfused.BatchNormAct2d(4, activation="silu"), (3, 4, 5, 2), True),
    "momentum_none": (lambda: bnfused.BatchNormAct1d(4, momentum=None), (6, 4), False),
    "no_running_stats": (
        lambda: bnfused.BatchNormAct2d(4, track_running_stats=False),
        (3, 4, 5, 2),
        True,
    ),
    "drop_act": (
        lambda: BatchNormDropAct2d(4, activation="relu", act=nn.Tanh()),
        (3, 4, 5, 2),
        False,
    ),
    "frozen": (lambda: bnfused.FrozenBatchNorm2d(4, activation="silu"), (3, 4, 5, 2), True),
}


def randomized(module):
    module = module.double()
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.uniform_(-0.5, 1.5 if name.endswith("weight") else 0.5)
    return module


def run(module, x, residual):
    """(output, input gradient) of one forward and backward."""
    x = x.clone().requires_grad_(True)
    y = module(x, residual) if residual is not None else module(x)
    (gx,) = torch.autograd.grad(y.square().sum(), x)
    return y.detach(), gx


def assert_same_state(ours, theirs):
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        torch.testing.assert_close(a, b, **TOL, msg=name)


@pytest.mark.parametrize("name", MODULES)
def test_scripted_module_matches_eager(name):
    build, shape, with_residual = MODULES[name]
    eager = randomized(build())
    scripted = torch.jit.script(copy.deepcopy(eager))
    for train in (True, True, False):
        eager.train(train)
        scripted.train(train)
        x = torch.randn(*shape, dtype=torch.float64) * 2 + 0.5
        r = torch.randn_like(x) if with_residual else None
        for got, expected in zip(run(scripted, x, r), run(eager, x, r)):
            torch.testing.assert_close(got, expected, **TOL)
        assert_same_state(scripted, eager)


class Block(nn.Module):
    """conv -> BatchNormAct2d(relu) -> conv -> BatchNormAct2d(relu, residual) -> BatchNorm2d."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = bnfused.BatchNormAct2d(3, activation="relu")
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = bnfused.BatchNormAct2d(3, activation="relu")
        self.out = bnfused.BatchNorm2d(3)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        return self.out(self.bn2(self.conv2(y), x))


def test_scripted_model_matches_eager_and_holds_no_bnfused_op(tmp_path):
    eager = randomized(Block())
    scripted = torch.jit.script(copy.deepcopy(eager))
    graph = str(scripted.inlined_graph)
    assert "bnfused::" not in graph and "bnfused_C::" not in graph
    assert "aten::batch_norm" in graph
    for train in (True, False):
        eager.train(train)
        scripted.train(train)
        x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
        for got, expected in zip(run(scripted, x, None), run(eager, x, None)):
            torch.testing.assert_close(got, expected, **TOL)
        assert_same_state(scripted, eager)
    path = tmp_path / "block.pt"
    torch.jit.save(scripted, str(path))
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    torch.save(x, str(tmp_path / "x.pt"))
    code = (
        "import sys; sys.modules['bnfused'] = None; import torch; "
        f"m = torch.jit.load({str(path)!r}); "
        f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    torch.testing.assert_close(torch.load(str(tmp_path / "y.pt")), eager(x), **TOL)
