"""torch.ao.quantization flows on models holding bnfused batch norms."""

import copy

import pytest
import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.intrinsic.qat as nniqat
from torch import nn
from torch.ao.quantization import (
    fuse_modules,
    fuse_modules_qat,
    get_default_qat_qconfig,
    prepare_qat,
)

import bnfused


def model(bn):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), bn, nn.ReLU())
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
    return m


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("fused", [False, True])
def test_fuse_modules_folds_eval_batch_norm(fused):
    m = model(bnfused.BatchNorm2d(8)).eval()
    if fused:  # conv -> BatchNormAct2d(relu) -> Identity, as convert_model leaves it
        m = bnfused.convert_model(m, fuse_activations=True).eval()
        names = [["0", "1"]]
    else:
        names = [["0", "1", "2"]]
    want = m(X)
    out = fuse_modules(m, names)
    assert isinstance(out[0], nni.ConvReLU2d)
    assert not any(type(c).__module__.startswith("bnfused") for c in out.modules())
    torch.testing.assert_close(out(X), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_fuse_modules_qat_then_prepare_qat(fused):
    m = model(
        bnfused.BatchNormAct2d(8, activation="relu") if fused else bnfused.BatchNorm2d(8)
    ).train()
    names = [["0", "1"]] if fused else [["0", "1", "2"]]
    if fused:
        m[2] = nn.Identity()
    out = fuse_modules_qat(m, names)
    assert isinstance(out[0], nni.ConvBnReLU2d)
    out.qconfig = get_default_qat_qconfig("fbgemm")
    qat = prepare_qat(out)
    assert isinstance(qat[0], nniqat.ConvBnReLU2d)
    assert torch.equal(qat[0].bn.running_var, m[1].running_var)
    qat(X).sum().backward()


def test_fusing_an_activation_torch_cannot_fuse_names_to_torch():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), bnfused.BatchNormAct2d(8, activation="silu")).eval()
    with pytest.raises(NotImplementedError, match=r"bnfused\.to_torch"):
        fuse_modules(m, [["0", "1"]])


def test_fx_graph_mode_quantization_names_to_torch():
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    m = model(bnfused.BatchNorm2d(8)).train()
    with pytest.raises(TypeError, match=r"bnfused\.to_torch"):
        prepare_qat_fx(copy.deepcopy(m), get_default_qat_qconfig_mapping("fbgemm"), (X,))
    prepared = prepare_qat_fx(bnfused.to_torch(m), get_default_qat_qconfig_mapping("fbgemm"), (X,))
    assert any(isinstance(c, nniqat.ConvBnReLU2d) for c in prepared.modules())
