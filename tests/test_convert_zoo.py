"""convert_model on the torchvision classification models with batch norms (smallest
variant per family) and a timm sample covering the block patterns (random weights).

Each: one float64 SGD step of the converted model equals the original's (outputs,
input and parameter grads, running statistics) to 1e-10 relative, float64 eval outputs
too, and the number of batch norms fused (activation, residual add) is pinned, so a
pattern that stops matching fails here.
"""

import copy

import pytest
import torch
from test_convert import randomize, run_steps

from bnfused import convert_model
from bnfused.tools.coverage import fusion_report

# name: (input shape, batch norms, with activation, with residual add)
TORCHVISION = {
    "resnet18": ((4, 3, 32, 32), 20, 17, 8),
    "mobilenet_v3_small": ((4, 3, 32, 32), 34, 5, 6),
    "regnet_y_400mf": ((2, 3, 64, 64), 53, 49, 16),
    "regnet_x_400mf": ((2, 3, 64, 64), 71, 67, 22),
}
TIMM = {
    "dla34": ((4, 3, 32, 32), 37, 33, 12),
    "repvgg_a0": ((4, 3, 32, 32), 61, 22, 39),
    "skresnet18": ((4, 3, 32, 32), 36, 33, 8),
}


def check(orig, shape, bns, acts, residuals):
    torch.manual_seed(0)
    orig = randomize(orig)
    x = torch.randn(shape)
    report = fusion_report(orig)
    assert (report.converted, report.with_activation, report.with_residual) == (
        bns,
        acts,
        residuals,
    ), str(report)
    orig64 = copy.deepcopy(orig).double()
    conv64 = convert_model(orig64, fuse_activations=True)
    grads = [torch.randn(1, shape[0], 10)]
    torch.manual_seed(1)  # the same dropout masks in both
    want = run_steps(orig64, (x,), grads, 1)[0]
    torch.manual_seed(1)
    got = run_steps(conv64, (x,), grads, 1)[0]
    assert list(got) == list(want)
    for key, w in want.items():
        scale = max(1.0, w.abs().max().item()) if w.is_floating_point() else 1
        torch.testing.assert_close(
            got[key], w, rtol=0, atol=1e-10 * scale, msg=lambda m: f"float64 {key}: {m}"
        )
    with torch.no_grad():
        w = orig64.eval()(x.double())
        torch.testing.assert_close(
            conv64.eval()(x.double()), w, rtol=0, atol=1e-10 * max(1.0, w.abs().max().item())
        )


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision(name):
    models = pytest.importorskip("torchvision.models")
    check(models.get_model(name, weights=None, num_classes=10), *TORCHVISION[name])


@pytest.mark.parametrize("name", list(TIMM))
def test_timm(name):
    timm = pytest.importorskip("timm")
    check(timm.create_model(name, pretrained=False, num_classes=10), *TIMM[name])
