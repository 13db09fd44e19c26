"""configure_test_time_adaptation (TENT): batch statistics, BN-only training, exact undo."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnfused

_BatchNorm = nn.modules.batchnorm._BatchNorm


class _Net(nn.Module):
    """Every kind of batch norm: torch, bnfused, fused with a residual, sync, 1d."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = bnfused.BatchNormAct2d(6, activation="relu")
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn3 = bnfused.SyncBatchNorm(6, momentum=None)
        self.bn4 = bnfused.BatchNorm1d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h), residual=h)
        h = self.bn3(self.conv3(h))
        return self.fc(self.bn4(h.mean((2, 3))))


def _net():
    net = _Net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(torch.randn(8, 3, 5, 5) * 2 + 1)
    return net


def _bns(model):
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def _state(model):
    """Everything configure/undo may touch, copied."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "buffers": {k: v for k, v in model.named_buffers()},  # the same objects back
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "bn": {
            k: (m.momentum, m.track_running_stats)
            for k, m in model.named_modules()
            if isinstance(m, _BatchNorm)
        },
    }


def _assert_restored(model, before):
    after = _state(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, v in before["tensors"].items():
        assert torch.equal(after["tensors"][k], v), k
    for k, v in before["buffers"].items():
        assert after["buffers"][k] is v, k
    for key in ("requires_grad", "training", "bn"):
        assert after[key] == before[key], key


def _shifted(n=16):
    return torch.randn(n, 3, 5, 5) * 0.5 + 2.0


def test_only_batchnorm_affine_trainable():
    net = _net()
    tta = bnfused.configure_test_time_adaptation(net)
    expected = {id(p) for bn in _bns(net) for p in (bn.weight, bn.bias)}
    assert {id(p) for p in tta.params} == expected
    assert {id(p) for p in net.parameters() if p.requires_grad} == expected
    assert tta.layers == ["bn1", "bn2", "bn3", "bn4"]
    net(_shifted()).sum().backward()
    assert all(p.grad is not None for p in tta.params)
    assert net.conv1.weight.grad is None and net.fc.weight.grad is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_statistics_in_any_mode_and_no_update(mode):
    net = _net()
    before = _state(net)
    tta = bnfused.configure_test_time_adaptation(net)
    net.train(mode == "train")
    x = _shifted()
    with torch.no_grad():
        out = net(x)
        # The same forward in torch ops, every layer normalized with the batch's statistics.
        bn = lambda t, m: F.batch_norm(t, None, None, m.weight, m.bias, True, 0.0, m.eps)
        h = torch.relu(bn(net.conv1(x), net.bn1))
        h = torch.relu(bn(net.conv2(h), net.bn2) + h)
        h = bn(net.conv3(h), net.bn3)
        expected = net.fc(bn(h.mean((2, 3)), net.bn4))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert all(m.running_mean is None and m.running_var is None for m in _bns(net))
    tta.undo()  # also brings back the mode the model had (train)
    _assert_restored(net, before)  # running statistics and num_batches_tracked untouched


def test_undo_restores_everything_exactly():
    net = _net()
    net.eval()
    net.bn2.train()
    net.conv2.bias.requires_grad_(False)
    bnfused.freeze_batchnorm(net.bn4)  # frozen: left alone by default
    stale = torch.rand(6) + 0.1
    net.bn1.weight.grad = stale.clone()  # a gradient from before comes back too
    before = _state(net)
    tta = bnfused.configure_test_time_adaptation(net)
    assert "bn4" not in tta.layers and net.bn4.running_mean is not None
    opt = torch.optim.SGD(tta.params, lr=0.05, momentum=0.9)
    net.train()
    for _ in range(3):
        bnfused.softmax_entropy(net(_shifted())).mean().backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(net.bn1.weight, before["tensors"]["bn1.weight"])  # it adapted
    tta.undo()
    _assert_restored(net, before)
    assert torch.equal(net.bn1.weight.grad, stale)
    assert all(p.grad is None for p in tta.params if p is not net.bn1.weight)
    tta.undo()  # twice is harmless
    _assert_restored(net, before)
    net.train()
    assert not net.bn4.training  # still frozen


def test_keep_adapted_reset_and_context_manager():
    net = _net()
    before = _state(net)
    with bnfused.configure_test_time_adaptation(net) as tta:
        opt = torch.optim.SGD(tta.params, lr=0.1)
        bnfused.softmax_entropy(net(_shifted())).mean().backward()
        opt.step()
        tta.reset()  # episodic: back to the source weights, still adapting
        for k in ("bn1.weight", "bn3.bias"):
            assert torch.equal(net.state_dict()[k], before["tensors"][k]), k
        assert net.bn1.running_mean is None
    _assert_restored(net, before)

    tta = bnfused.configure_test_time_adaptation(net)
    opt = torch.optim.SGD(tta.params, lr=0.1)
    bnfused.softmax_entropy(net(_shifted())).mean().backward()
    opt.step()
    adapted = net.bn2.weight.detach().clone()
    tta.undo(keep_adapted=True)
    assert torch.equal(net.bn2.weight, adapted)
    assert not torch.equal(adapted, before["tensors"]["bn2.weight"])
    for k in ("bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked"):
        assert torch.equal(net.state_dict()[k], before["tensors"][k]), k


def test_include_frozen_and_frozen_batchnorm2d():
    net = _net()
    bnfused.freeze_batchnorm(net.bn1)
    net.add_module("extra", bnfused.FrozenBatchNorm2d(6))  # no parameters: never adapted
    before = _state(net)
    tta = bnfused.configure_test_time_adaptation(net, include_frozen=True)
    assert tta.layers == ["bn1", "bn2", "bn3", "bn4"]
    assert net.bn1.weight.requires_grad and net.bn1.running_mean is None
    x = torch.randn(4, 6, 3, 3) + 1
    torch.testing.assert_close(
        net.bn1(x),
        F.batch_norm(x, None, None, net.bn1.weight, net.bn1.bias, True, 0.0, net.bn1.eps),
    )
    tta.undo()
    _assert_restored(net, before)
    assert not net.bn1.weight.requires_grad
    with pytest.raises(ValueError, match="no BatchNorm"):
        bnfused.configure_test_time_adaptation(nn.Sequential(nn.Linear(2, 2)))


def test_tent_steps_reduce_entropy_on_shifted_batch():
    net = _net()
    net.eval()
    tta = bnfused.configure_test_time_adaptation(net)
    opt = torch.optim.SGD(tta.params, lr=0.05)
    x = _shifted(32)
    losses = []
    for _ in range(6):
        loss = bnfused.softmax_entropy(net(x)).mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0], losses
    tta.undo()


def test_softmax_entropy():
    logits = torch.randn(7, 5) * 3
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(bnfused.softmax_entropy(logits), expected)
    torch.testing.assert_close(bnfused.softmax_entropy(logits.t(), dim=0), expected)


def test_example_runs_and_reports_before_and_after(capsys):
    """examples/test_time_adaptation.py end to end, one training epoch: it must finish and
    print the accuracies it promises (the numbers themselves are the example's business)."""
    pytest.importorskip("sklearn")
    from examples import test_time_adaptation

    test_time_adaptation.main(["--epochs", "1", "--width", "8", "--passes", "1"])
    out = capsys.readouterr().out
    assert "TENT" in out and "undo" in out.lower(), out
