"""convert_model / to_torch: converted models compute, train and save like the originals.

Two numeric checks per model:

* float64, three SGD steps: the converted model equals the original (outputs,
  input and parameter grads, parameters, running statistics) to float64
  rounding. Any wrong rewrite shows up here as an O(1) difference.
* float32, one step, per the project policy: the fused model's error against
  the float64 original is at most 2x the error of the same model with unfused
  bnfused batch norms (separate add and activation), plus an atol of a few
  fp32 ulps of the reference's magnitude: fusing costs no accuracy. (Each
  batch norm against torch is the modules' own test; through a network the
  per-layer 2x allowance compounds, so torch is not the baseline here.)
"""

import copy
import pickle

import pytest
import torch
from convert_models import (
    BasicBlock,
    Functional,
    MobileNetish,
    NotFusable,
    SmallResNet,
    Untraceable,
)
from torch import nn

import bnfused
from bnfused import modules as bnm

FUSED = (bnm.BatchNormAct1d, bnm.BatchNormAct2d, bnm.BatchNormAct3d)
STOCK_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize(model):
    """Non-trivial affine parameters and running statistics in every batch norm."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    return model


def outputs(out):
    return out if isinstance(out, tuple) else (out,)


def run_steps(model, inputs, grads, steps):
    """Everything a training step produces, by name, after each of ``steps`` SGD steps."""
    dtype = next(model.parameters()).dtype
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    records = []
    for step in range(steps):
        rec = {}
        xs = tuple(t.detach().to(dtype).clone().requires_grad_() for t in inputs)
        outs = outputs(model(*xs))
        torch.autograd.backward(outs, [g[step].to(dtype) for g in grads])
        rec.update({f"output {i}": o.detach() for i, o in enumerate(outs)})
        rec.update({f"input {i} grad": x.grad for i, x in enumerate(xs)})
        rec.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
        rec.update({n: p.detach().clone() for n, p in model.named_parameters()})
        rec.update({n: b.clone() for n, b in model.named_buffers()})
        records.append(rec)
    return records


def train_parity(make, inputs, steps=3, **convert_kwargs):
    """The float64 and float32 checks of the module docstring; returns the fp32 models."""
    torch.manual_seed(0)
    orig = randomize(make())
    shapes = [o.shape for o in outputs(copy.deepcopy(orig)(*inputs))]
    grads = [torch.randn(steps, *s) for s in shapes]
    orig64 = copy.deepcopy(orig).double()
    conv64 = bnfused.convert_model(orig64, fuse_activations=True, **convert_kwargs)
    ref = run_steps(orig64, inputs, grads, steps)
    for step, (got, want) in enumerate(zip(run_steps(conv64, inputs, grads, steps), ref)):
        assert list(got) == list(want)
        for name, w in want.items():
            if w is None:
                assert got[name] is None, name
            else:
                scale = max(1.0, w.abs().max().item()) if w.is_floating_point() else 1
                torch.testing.assert_close(
                    got[name],
                    w,
                    rtol=0,
                    atol=1e-10 * scale,
                    msg=lambda m: f"float64 step {step} {name}: {m}",
                )
    conv = bnfused.convert_model(orig, fuse_activations=True, **convert_kwargs)
    fused = run_steps(copy.deepcopy(conv), inputs, grads, 1)[0]
    unfused = run_steps(bnfused.convert_model(orig), inputs, grads, 1)[0]
    for name, w in ref[0].items():
        if w is None or not w.is_floating_point():
            continue
        err = (fused[name].double() - w).abs().max().item()
        base = (unfused[name].double() - w).abs().max().item()
        # The suite-wide float32 floor (conftest.ATOL): grads here are sums of many terms.
        atol = 1e-5 * max(1.0, w.abs().max().item())
        assert err <= 2 * base + atol, f"float32 {name}: {err:.3g} > 2 * {base:.3g} + {atol:.3g}"
    return conv, orig


def count(model, types):
    return sum(type(m) in types for m in model.modules())


def test_small_resnet_fuses_and_trains():
    conv, orig = train_parity(SmallResNet, (torch.randn(4, 3, 8, 8),))
    # stem, every bn1/bn2 of the blocks and both residual tails; downsample BNs stay plain
    assert count(conv, FUSED) == 8 and count(conv, (bnm.BatchNorm2d,)) == 2
    assert count(conv, STOCK_BN) == 0
    block = conv.layer1[1]
    assert block.bn2.activation == "relu" and block.stride == 2
    assert [n for n in block.code.split() if "relu" in n] == []  # the three ReLU calls are gone
    assert list(conv.state_dict()) == list(orig.state_dict())


def test_mobilenet_style_silu():
    conv, _ = train_parity(MobileNetish, (torch.randn(3, 3, 10, 10),))
    assert isinstance(conv.stem, nn.Sequential) and type(conv.stem[2]) is nn.Identity
    assert conv.stem[1].activation == "leaky_relu" and conv.stem[1].negative_slope == 0.25
    assert conv.blocks[0].expand[1].activation == "silu"
    assert conv.blocks[0].bn.activation == "identity"  # x + bn(...): the add alone is fused


def test_functional_activations_and_adds():
    conv, _ = train_parity(Functional, (torch.randn(5, 2, 3, 4, 3),))
    acts = {n: getattr(m, "activation", None) for n, m in conv.named_modules()}
    assert acts == {
        **acts,
        "bn3d": "relu",
        "bn3d_b": "relu",
        "bn1d": "leaky_relu",
        "bn1d_b": "silu",
        "bn1d_c": "relu",
    }
    assert conv.bn1d.negative_slope == 0.25


def test_untraceable_falls_back_with_warning():
    with pytest.warns(UserWarning, match=r"cannot trace <root> \(Untraceable\).*TraceError"):
        train_parity(Untraceable, (torch.randn(4, 3, 5, 5),), steps=1)
    conv = bnfused.convert_model(Untraceable())
    assert type(conv.bn) is bnm.BatchNorm2d and type(conv) is Untraceable


def test_training_dependent_forward_is_not_fused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return torch.relu(self.bn(x)) if self.training else self.bn(x)

    with pytest.warns(UserWarning, match="depends on self.training"):
        conv = bnfused.convert_model(Branchy(), fuse_activations=True)
    assert type(conv.bn) is bnm.BatchNorm1d and type(conv) is Branchy


def test_illegal_patterns_stay_unfused():
    x, wide = torch.randn(2, 4, 3, 3), torch.randn(3, 2, 4, 3, 3)
    orig = randomize(NotFusable())
    conv = bnfused.convert_model(orig, fuse_activations=True, example_inputs=(x, wide))
    assert count(conv, FUSED) == 0 and count(conv, (bnm.BatchNorm2d,)) == 3
    for a, b in zip(conv(x, wide), orig(x, wide)):
        torch.testing.assert_close(a, b)
    # Without example inputs the larger sum is fused and refused when it runs.
    conv = bnfused.convert_model(orig, fuse_activations=True)
    assert type(conv.bn_broadcast) is bnm.BatchNormAct2d
    with pytest.raises(RuntimeError, match="example_inputs"):
        conv(x, wide)


def test_broadcast_residual_is_expanded():
    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x, r):
            return torch.relu(self.bn(x) + r)

    train_parity(Bias, (torch.randn(3, 4, 5, 5), torch.randn(4, 1, 1)), steps=1)


def test_state_mode_and_requires_grad_preserved():
    model = randomize(SmallResNet())
    model.bn1.weight.requires_grad_(False)
    model.layer1[0].bn2.eval()
    model.layer1[1].eval()
    hook_calls = []
    model.layer2[0].bn1.register_forward_hook(lambda *a: hook_calls.append(1))
    conv = bnfused.convert_model(model, fuse_activations=True)
    for (n, a), (_, b) in zip(conv.named_modules(), model.named_modules()):
        assert a.training == b.training, n
    for (n, a), (_, b) in zip(conv.named_parameters(), model.named_parameters()):
        assert a.requires_grad == b.requires_grad and a.dtype == b.dtype, n
    for name in ("eps", "momentum", "affine", "track_running_stats", "num_features"):
        assert getattr(conv.layer2[0].bn3, name) == getattr(model.layer2[0].bn3, name)
    assert type(conv.layer2[0].bn1) is bnm.BatchNorm2d  # hooked: converted, not fused
    conv(torch.randn(2, 3, 6, 6))
    assert hook_calls == [1]
    # state_dict loads both ways
    assert list(conv.state_dict()) == list(model.state_dict())
    model.load_state_dict(conv.state_dict(), strict=True)
    conv.load_state_dict(model.state_dict(), strict=True)
    # inplace=True shares the tensors
    same = bnfused.convert_model(model, fuse_activations=True, inplace=True)
    assert same.layer1[0].bn1.weight is model.layer1[0].bn1.weight


def test_copy_and_pickle_keep_structure():
    conv = bnfused.convert_model(SmallResNet(), fuse_activations=True)
    for other in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):
        assert list(other.state_dict()) == list(conv.state_dict())
        assert other.layer1[1].stride == 2 and type(other.layer1[1].bn2) is bnm.BatchNormAct2d
        conv.eval(), other.eval()
        x = torch.randn(2, 3, 6, 6)
        torch.testing.assert_close(other(x), conv(x), rtol=0, atol=0)


def test_already_bnfused_and_single_module():
    model = nn.Sequential(bnfused.BatchNorm2d(3), nn.BatchNorm1d(2))
    conv = bnfused.convert_model(model, inplace=True)
    assert conv[0] is model[0] and type(conv[1]) is bnm.BatchNorm1d
    single = bnfused.convert_model(nn.BatchNorm3d(2, eps=1e-3))
    assert type(single) is bnm.BatchNorm3d and single.eps == 1e-3
    with pytest.raises(TypeError, match=r"nn\.Module"):
        bnfused.convert_model(torch.zeros(2))


def test_sync_batchnorm():
    model = nn.Sequential(nn.Conv2d(2, 3, 1), nn.SyncBatchNorm(3, momentum=0.3))
    conv = bnfused.convert_model(model)
    assert type(conv[1]) is bnfused.SyncBatchNorm and conv[1].momentum == 0.3
    assert isinstance(conv[1], nn.modules.batchnorm._BatchNorm)  # see bnfused.SyncBatchNorm
    assert type(bnfused.to_torch(conv)[1]) is nn.SyncBatchNorm


def test_to_torch_round_trip():
    torch.manual_seed(1)
    orig = randomize(SmallResNet()).eval()
    conv = bnfused.convert_model(orig, fuse_activations=True)
    back = bnfused.to_torch(conv)
    assert all(type(m).__module__.startswith("torch.") for m in back.modules())
    data = pickle.dumps(back)
    assert b"bnfused" not in data
    assert list(back.state_dict()) == list(orig.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(pickle.loads(data)(x), orig(x), rtol=0, atol=0)
    mob = bnfused.convert_model(MobileNetish(), fuse_activations=True)
    back = bnfused.to_torch(mob)
    assert isinstance(back.stem, nn.Sequential) and type(back.stem[2]) is nn.LeakyReLU
    assert back.stem[2].negative_slope == 0.25
    with pytest.raises(ValueError, match="bare"):
        bnfused.to_torch(bnfused.BatchNormAct2d(3))


def test_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    conv = bnfused.convert_model(
        randomize(nn.Sequential(BasicBlock(4, 6, 2))), fuse_activations=True
    )
    ref = copy.deepcopy(conv)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    compiled(x).square().sum().backward()
    ref(xr).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(conv[0].bn2.running_var, ref[0].bn2.running_var)


def test_export_eval():
    conv = bnfused.convert_model(randomize(SmallResNet()), fuse_activations=True).eval()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(conv, (x,))
    torch.testing.assert_close(exported.module()(x), conv(x))


def torchvision_parity(orig, x):
    """float64, eval: the converted torchvision model equals the original to fp64 rounding."""
    orig = randomize(orig).double().eval()
    conv = bnfused.convert_model(orig, fuse_activations=True)
    assert count(conv, STOCK_BN) == 0
    assert list(conv.state_dict()) == list(orig.state_dict())
    x = x.double()
    with torch.no_grad():
        want = orig(x)
        tol = 1e-10 * max(1.0, want.abs().max().item())
        torch.testing.assert_close(conv(x), want, rtol=0, atol=tol)
        torch.testing.assert_close(bnfused.to_torch(conv)(x), want, rtol=0, atol=tol)
    return conv


def test_torchvision_resnet50():
    models = pytest.importorskip("torchvision.models")
    conv = torchvision_parity(models.resnet50(), torch.randn(1, 3, 64, 64))
    assert count(conv, (bnm.BatchNorm2d,)) == 4 and count(conv, FUSED) == 49


def test_torchvision_mobilenet_v3():
    models = pytest.importorskip("torchvision.models")
    torchvision_parity(models.mobilenet_v3_small(), torch.randn(2, 3, 64, 64))
