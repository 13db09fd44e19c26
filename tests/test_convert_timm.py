"""convert_model / to_torch / freezing on timm networks (random weights, nothing downloaded).

timm builds its EfficientNets, MobileNetV3s and RegNets from ``BatchNormAct2d``
(batch norm, drop, activation in one module) and its ResNets from plain
``nn.BatchNorm2d`` + activation modules. Each converted network is checked

* in training mode in float64: one SGD step (outputs, input and parameter
  grads, parameters after the step, running statistics) equals the original's
  to float64 rounding, so any wrong rewrite shows as an O(1) difference;
* in eval mode in float32 against the float64 original, per the project
  policy: outputs within 2x the unconverted torch model's error (+ conftest's
  atol). Gradients are compared in float64 only: a network's float32 grads
  jump where a 1-ulp change flips a ReLU or max-pool decision (replacing one
  ResNet-50 batch norm by torch's own explicit formula moves its float32
  input grad by 1e-2), and in training mode at batch 2 rounding is amplified
  chaotically. The float32 grads of single layers are judged in
  test_batch_norm_act_layer and the module tests.

then for state_dict keys and the way back to stock modules.
"""

import copy

import pytest
import timm  # a test dependency (requirements-dev.txt); the package never imports it
import torch
from conftest import assert_policy
from test_convert import FUSED, randomize, run_steps
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn

import bnfused
from bnfused import modules as bnm

INPUT = (2, 3, 64, 64)


def types_by_path(model, types=None):
    return {n: type(m) for n, m in model.named_modules() if types is None or type(m) in types}


def assert_same_eval(conv, orig, x):
    """float32 eval output of ``conv`` matches the float64 original as well as ``orig``'s
    own float32 output does."""
    with torch.no_grad():
        oracle = copy.deepcopy(orig).double().eval()(x.double())
        assert_policy("eval output", conv.eval()(x), orig.eval()(x), oracle, torch.float32)


def assert_float64_step(orig, x):
    """Training mode, float64: one SGD step of the converted model equals the original's."""
    orig64 = copy.deepcopy(orig).double()
    conv64 = bnfused.convert_model(orig64, fuse_activations=True)
    grads = [torch.randn(1, 2, 1000)]  # the classifier's output
    want = run_steps(orig64, (x,), grads, 1)[0]
    got = run_steps(conv64, (x,), grads, 1)[0]
    assert list(got) == list(want)
    for name, w in want.items():
        scale = max(1.0, w.abs().max().item()) if w.is_floating_point() else 1
        torch.testing.assert_close(
            got[name], w, rtol=0, atol=1e-10 * scale, msg=lambda m: f"float64 {name}: {m}"
        )


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize(
    "name, fused, acts",
    [
        ("resnet50", 49, {"relu"}),  # nn.BatchNorm2d + ReLU modules, through torch.fx
        ("efficientnet_b0", 49, {"silu", "identity"}),  # BatchNormAct2d, SiLU or no activation
        ("regnety_002", 44, {"relu", "identity"}),  # BatchNormAct2d, ReLU or no activation
    ],
)
def test_timm_model_converts_trains_and_round_trips(name, fused, acts):
    torch.manual_seed(0)
    orig = randomize(timm.create_model(name, pretrained=False))
    x = torch.randn(INPUT)
    assert_float64_step(orig, x)
    conv = bnfused.convert_model(orig, fuse_activations=True)
    assert not any(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in conv.modules())
    found = [m.activation for m in conv.modules() if isinstance(m, FUSED)]
    assert len(found) == fused and set(found) == acts, found
    assert list(conv.state_dict()) == list(orig.state_dict())
    for key, value in orig.state_dict().items():
        assert conv.state_dict()[key].shape == value.shape, key
    assert_same_eval(conv, orig, x)

    back = bnfused.to_torch(conv)
    stock = (nn.BatchNorm2d, BatchNormAct2d)
    assert types_by_path(back, stock) == types_by_path(orig, stock)
    assert not any(type(m).__module__.startswith("bnfused") for m in back.modules())
    assert list(back.state_dict()) == list(orig.state_dict())
    torch.testing.assert_close(back.eval()(x), orig.eval()(x), rtol=0, atol=0)


def test_efficientnet_layers_become_fused_modules():
    orig = randomize(timm.create_model("efficientnet_b0", pretrained=False))
    conv = bnfused.convert_model(orig, fuse_activations=True)
    before = {n: m for n, m in orig.named_modules() if type(m) is BatchNormAct2d}
    after = dict(conv.named_modules())
    assert before
    for path, m in before.items():
        new = after[path]
        assert isinstance(new, bnm.BatchNormAct2d), path
        want = "silu" if type(m.act) is nn.SiLU else "identity"
        assert new.activation == want, path
        assert type(new.drop) is nn.Identity
    # without fuse_activations: bnfused batch norms, the activation a separate module
    plain = bnfused.convert_model(orig)
    layer = plain.get_submodule(next(iter(before)))
    assert type(layer) is bnm.BatchNormDropAct2d and layer.activation == "identity"
    assert type(layer.act) is nn.SiLU
    assert_same_eval(plain, orig, torch.randn(INPUT))


@pytest.mark.parametrize(
    "act_layer, fused",
    [
        (nn.ReLU, "relu"),
        (nn.SiLU, "silu"),
        (nn.LeakyReLU, "leaky_relu"),
        (nn.GELU, None),
        (nn.Hardswish, None),
        (nn.PReLU, None),
    ],
)
@pytest.mark.parametrize("drop", [None, nn.Dropout])
def test_batch_norm_act_layer(act_layer, fused, drop):
    """One BatchNormAct2d: fused where bnfused has the activation and no drop sits before
    it; else a bnfused batch norm with the drop and activation kept as modules."""
    layer = BatchNormAct2d(6, drop_layer=drop)
    layer.act = (
        act_layer(6)
        if act_layer is nn.PReLU
        else (act_layer(0.2) if act_layer is nn.LeakyReLU else act_layer())
    )
    if drop is not None:
        layer.drop.p = 0.0  # kept, but deterministic in train mode
    model = randomize(nn.Sequential(nn.Conv2d(3, 6, 1), layer))
    conv = bnfused.convert_model(model, fuse_activations=True)
    new = conv[1]
    assert type(new) is bnm.BatchNormDropAct2d and isinstance(new, bnm.BatchNormAct2d)
    if fused and drop is None:
        assert new.activation == fused and type(new.act) is nn.Identity
        assert new.negative_slope == (0.2 if fused == "leaky_relu" else new.negative_slope)
    else:
        assert new.activation == "identity" and type(new.act) is act_layer
    assert type(new.drop) is (drop or nn.Identity)
    assert list(conv.state_dict()) == list(model.state_dict())  # PReLU's act.weight too
    x = torch.randn(4, 3, 5, 5)
    back = bnfused.to_torch(conv)
    assert type(back[1]) is BatchNormAct2d and type(back[1].act) is act_layer
    assert type(back[1].drop) is (drop or nn.Identity)
    assert list(back.state_dict()) == list(model.state_dict())
    torch.testing.assert_close(back.eval()(x), model.eval()(x), rtol=0, atol=0)
    for mode in (True, False):
        conv.train(mode), model.train(mode)
        x64 = x.double().requires_grad_()
        oracle = copy.deepcopy(model).double()(x64)
        xs = [x.clone().requires_grad_() for _ in range(2)]
        ours, theirs = conv(xs[0]), model(xs[1])
        assert_policy(f"train={mode} output", ours, theirs, oracle, torch.float32)
        grad = torch.randn_like(oracle, dtype=torch.float32)
        ours.backward(grad), theirs.backward(grad), oracle.backward(grad.double())
        assert_policy(f"train={mode} input grad", xs[0].grad, xs[1].grad, x64.grad, torch.float32)


def test_frozen_layers_convert_and_round_trip():
    """timm.layers.freeze_batch_norm_2d gives FrozenBatchNormAct2d (and torchvision's
    FrozenBatchNorm2d for plain batch norms): both become bnfused.FrozenBatchNorm2d."""
    orig = randomize(timm.create_model("efficientnet_b0", pretrained=False)).eval()
    frozen = timm.layers.freeze_batch_norm_2d(copy.deepcopy(orig))
    assert any(type(m) is FrozenBatchNormAct2d for m in frozen.modules())
    conv = bnfused.convert_model(frozen, fuse_activations=True)
    assert not any(type(m) is FrozenBatchNormAct2d for m in conv.modules())
    acts = {m.activation for m in conv.modules() if isinstance(m, bnm.FrozenBatchNorm2d)}
    assert acts == {"silu", "identity"}
    assert list(conv.state_dict()) == list(frozen.state_dict())
    x = torch.randn(INPUT)
    assert_same_eval(conv, frozen, x)
    back = bnfused.to_torch(conv)
    assert types_by_path(back) == types_by_path(frozen)
    torch.testing.assert_close(back(x), frozen(x), rtol=0, atol=0)


def test_convert_frozen_batchnorm_keeps_the_activation():
    orig = randomize(timm.create_model("efficientnet_b0", pretrained=False)).eval()
    for model in (copy.deepcopy(orig), bnfused.convert_model(orig, fuse_activations=True)):
        frozen = bnfused.convert_frozen_batchnorm(model)
        assert not batch_norms(frozen)
        silu = [
            m
            for m in frozen.modules()
            if isinstance(m, bnm.FrozenBatchNorm2d)
            and (m.activation == "silu" or type(getattr(m, "act", None)) is nn.SiLU)
        ]
        assert len(silu) == sum(
            type(m) is BatchNormAct2d and type(m.act) is nn.SiLU for m in orig.modules()
        )
        assert_same_eval(frozen, orig, torch.randn(INPUT))


def test_freeze_batchnorm_on_converted_timm_model():
    orig = randomize(timm.create_model("regnety_002", pretrained=False))
    conv = bnfused.convert_model(orig, fuse_activations=True)
    bnfused.freeze_batchnorm(conv)
    conv.train()
    stats = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(INPUT)
    oracle = copy.deepcopy(orig).double().eval()(x.double())
    assert_policy("frozen output", conv(x), orig.eval()(x), oracle, torch.float32)
    for k, v in conv.state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert all(not p.requires_grad for bn in batch_norms(conv) for p in bn.parameters())
