"""recalibrate_batchnorm: exact population statistics of each BatchNorm layer's inputs."""

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

import bnfused

_BatchNorm = nn.modules.batchnorm._BatchNorm
BN_CLASSES = {
    "torch": nn.BatchNorm2d,
    "bnfused": bnfused.BatchNorm2d,
    "act": bnfused.BatchNormAct2d,
    "sync": bnfused.SyncBatchNorm,
}
SIZES = (5, 9, 0, 1, 7)  # uneven, one empty batch
NET_SIZES = (5, 9, 0, 2, 7)  # BatchNorm1d in training refuses one value per channel
RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _population(inputs):
    """Mean and unbiased variance per channel of the concatenated inputs, in float64."""
    x = torch.cat([t.double() for t in inputs])
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=True)


def _assert_exact(bn, inputs, dtype, rtol=None):
    mean, var = _population(inputs)
    rtol = rtol or RTOL[dtype]
    torch.testing.assert_close(
        bn.running_mean.double(), mean, rtol=rtol, atol=rtol * mean.abs().max().item()
    )
    torch.testing.assert_close(bn.running_var.double(), var, rtol=rtol, atol=0)


def _relative_error(bn, inputs):
    mean, var = _population(inputs)
    return (
        ((bn.running_mean.double() - mean).abs() / var.sqrt()).max().item(),
        ((bn.running_var.double() - var).abs() / var).max().item(),
    )


def _shifted_batches(channels, dtype, sizes=SIZES, spatial=(3, 4)):
    """Batches whose means differ by several standard deviations from one batch to the next."""
    batches = []
    for n in sizes:
        shift = torch.randn(1, channels, 1, 1, dtype=torch.float64) * 4
        scale = torch.rand(1, channels, 1, 1, dtype=torch.float64) + 0.5
        batches.append(
            (torch.randn(n, channels, *spatial, dtype=torch.float64) * scale + shift + 3).to(dtype)
        )
    return batches


def _randomize(model):
    """Non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for m in model.modules():
            is_bn = isinstance(m, (_BatchNorm, bnfused.FrozenBatchNorm2d))
            if is_bn and m.running_mean is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kind", list(BN_CLASSES))
def test_exact_where_update_bn_is_not(kind, dtype):
    assert not (dist.is_available() and dist.is_initialized())  # SyncBatchNorm: one process
    cls = BN_CLASSES[kind]
    kwargs = {"activation": "identity"} if kind == "act" else {}
    ours = _randomize(nn.Sequential(cls(6, **kwargs)).to(dtype))
    theirs = _randomize(nn.Sequential(cls(6, **kwargs)).to(dtype))
    batches = _shifted_batches(6, dtype)

    counts = bnfused.recalibrate_batchnorm(ours, batches)
    update_bn(batches, theirs)

    assert counts == {"0": sum(SIZES) * 12}
    _assert_exact(ours[0], batches, dtype)
    mean_err, var_err = _relative_error(theirs[0], batches)
    assert mean_err > 0.05 and var_err > 0.5, (mean_err, var_err)  # update_bn misses it
    # num_batches_tracked counts the layer's calls, empty batch included, as update_bn's.
    assert ours[0].num_batches_tracked.item() == theirs[0].num_batches_tracked.item() == len(SIZES)


class _Net(nn.Module):
    """conv, BN, conv, BN+leaky_relu with a residual, pooled, BatchNorm1d."""

    def __init__(self, first=bnfused.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.bn1 = first(5)
        self.conv2 = nn.Conv2d(5, 5, 3, padding=1)
        self.bn2 = bnfused.BatchNormAct2d(
            5, momentum=None, activation="leaky_relu", negative_slope=0.2
        )
        self.bn3 = nn.BatchNorm1d(5)

    def forward(self, x):
        h = self.bn1(self.conv1(x))
        y = self.bn2(self.conv2(h), residual=h)
        return self.bn3(y.mean((2, 3)))


def _train_bn(x, bn):
    return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def _eval_bn(x, bn):
    return F.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
    )


def _layer_inputs(net, batches, first_frozen=False):
    """Each layer's inputs per batch, every layer on batch statistics (or bn1 on its
    running statistics when ``first_frozen``), in torch ops only."""
    inputs = {"bn1": [], "bn2": [], "bn3": []}
    with torch.no_grad():
        for x in batches:
            a = net.conv1(x)
            h = _eval_bn(a, net.bn1) if first_frozen else _train_bn(a, net.bn1)
            if getattr(net.bn1, "activation", "identity") == "relu":
                h = h.relu()
            b = net.conv2(h)
            y = F.leaky_relu(_train_bn(b, net.bn2) + h, 0.2)
            for name, t in zip(inputs, (a, b, y.mean((2, 3)))):
                inputs[name].append(t)
    return inputs


def test_each_layer_sees_batch_normalized_inputs_float64():
    net = _randomize(_Net()).double()
    net.eval()
    net.bn2.train()  # mixed modes, restored afterwards
    modes = {name: m.training for name, m in net.named_modules()}
    batches = _shifted_batches(3, torch.float64, NET_SIZES, spatial=(4, 4))
    expected = _layer_inputs(net, batches)

    counts = bnfused.recalibrate_batchnorm(net, batches)

    n = sum(NET_SIZES)
    assert counts == {"bn1": n * 16, "bn2": n * 16, "bn3": n}
    for name, inputs in expected.items():
        _assert_exact(getattr(net, name), inputs, torch.float64)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert net.bn2.momentum is None and net.bn1.momentum == 0.1
    assert all(not m._forward_pre_hooks for m in net.modules())
    # What a layer sees depends on no running statistic: a second pass changes nothing.
    before = _snapshot(net)
    bnfused.recalibrate_batchnorm(net, batches)
    _assert_same_state(net, before)


def test_float32_model():
    net = _randomize(_Net())
    batches = _shifted_batches(3, torch.float32, NET_SIZES, spatial=(4, 4))
    expected = _layer_inputs(net, batches)
    bnfused.recalibrate_batchnorm(net, batches)
    _assert_exact(net.bn1, expected["bn1"], torch.float32)
    # Downstream, the float32 roundings of the model's layers and of the torch ops
    # above differ (~1e-7) and the pooled input of bn3 has a small variance.
    for name in ("bn2", "bn3"):
        _assert_exact(getattr(net, name), expected[name], torch.float32, rtol=1e-5)


@pytest.mark.parametrize("include_frozen", [False, True])
@pytest.mark.parametrize("frozen", ["freeze_batchnorm", "FrozenBatchNorm2d"])
def test_frozen_layers(frozen, include_frozen):
    if frozen == "FrozenBatchNorm2d":
        net = _randomize(_Net(lambda c: bnfused.FrozenBatchNorm2d(c, activation="relu")))
    else:
        net = _randomize(_Net())
        bnfused.freeze_batchnorm(net.bn1)
    net.double().train()
    batches = _shifted_batches(3, torch.float64, NET_SIZES, spatial=(4, 4))
    expected = _layer_inputs(net, batches, first_frozen=not include_frozen)
    first_before = {k: v.clone() for k, v in net.bn1.state_dict().items()}

    counts = bnfused.recalibrate_batchnorm(net, batches, include_frozen=include_frozen)

    assert ("bn1" in counts) == include_frozen
    names = ("bn1", "bn2", "bn3") if include_frozen else ("bn2", "bn3")
    for name in names:
        _assert_exact(getattr(net, name), expected[name], torch.float64)
    if not include_frozen:
        for k, v in net.bn1.state_dict().items():
            assert torch.equal(v, first_before[k]), k
    if frozen == "freeze_batchnorm":
        assert not net.bn1.training
        net.train()
        assert not net.bn1.training  # still frozen


def test_batch_structures_device_and_limit():
    batches = _shifted_batches(3, torch.float32, sizes=(4, 6, 5), spatial=(4, 4))
    reference = _randomize(_Net())
    inputs = _layer_inputs(reference, batches[:2])
    structures = {
        "tuple": [(x, torch.zeros(len(x))) for x in batches],
        "list": [[x] for x in batches],
        "dict": [{"x": x} for x in batches],
    }
    for kind, data in structures.items():
        net = _randomize(_Net())
        net.load_state_dict(reference.state_dict())
        counts = bnfused.recalibrate_batchnorm(net, data, device="cpu", num_batches=2)
        assert counts["bn3"] == 10, kind
        for name in ("bn1", "bn2", "bn3"):
            _assert_exact(getattr(net, name), inputs[name], torch.float32)
    seen = []
    net = _randomize(_Net())
    net.load_state_dict(reference.state_dict())
    bnfused.recalibrate_batchnorm(
        net,
        [{"pixels": x} for x in batches[:2]],
        forward_fn=lambda model, batch: seen.append(model(batch["pixels"])),
    )
    assert len(seen) == 2
    _assert_exact(net.bn2, inputs["bn2"], torch.float32)


def test_dropout_off_unless_train_mode():
    model = nn.Sequential(nn.Dropout(0.5), bnfused.BatchNorm1d(4))
    batches = [torch.randn(50, 4) * 2 + 1 for _ in range(4)]
    bnfused.recalibrate_batchnorm(model, batches)
    _assert_exact(model[1], batches, torch.float32)
    assert model[0].training  # the mode it had
    bnfused.recalibrate_batchnorm(model, batches, train_mode=True)
    mean, var = _population(batches)
    assert (model[1].running_var.double() / var).min() > 1.2  # dropout's variance inflation


def test_exception_restores_everything():
    net = _randomize(_Net())
    net.eval()
    net.bn1.train()
    net.bn1.momentum = None
    before = _snapshot(net)
    modes = {name: m.training for name, m in net.named_modules()}
    batches = _shifted_batches(3, torch.float32, sizes=(4, 6, 5), spatial=(4, 4))

    def forward_fn(model, batch):
        if len(batch) == 5:
            raise RuntimeError("bad batch")
        return model(batch)

    with pytest.raises(RuntimeError, match="bad batch"):
        bnfused.recalibrate_batchnorm(net, batches, forward_fn=forward_fn)
    _assert_same_state(net, before)
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert net.bn1.momentum is None and net.bn2.momentum is None and net.bn3.momentum == 0.1
    assert all(not m._forward_pre_hooks for m in net.modules())


def test_unreached_and_untracked_layers():
    body = nn.Sequential(bnfused.BatchNorm2d(3), nn.BatchNorm2d(3, track_running_stats=False))
    unused = nn.BatchNorm2d(3)
    model = _randomize(nn.ModuleDict({"body": body, "unused": unused}))
    before = {k: v.clone() for k, v in unused.state_dict().items()}
    batches = [torch.randn(4, 3, 2, 2) + 1 for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = bnfused.recalibrate_batchnorm(model, batches, forward_fn=lambda m, x: m["body"](x))
    assert counts == {"body.0": 32, "unused": 0}
    assert any("unused" in str(w.message) for w in caught)
    for k, v in unused.state_dict().items():
        assert torch.equal(v, before[k]), k
    _assert_exact(model["body"][0], batches, torch.float32)
    assert bnfused.recalibrate_batchnorm(nn.Linear(2, 2), batches) == {}
