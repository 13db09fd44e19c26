"""Traced, exported and compiled models see standard aten ops where no running statistic is written.

Eval mode (and batch statistics without running ones) goes through
``torch.export``, ONNX, ``torch.jit.trace`` and Inductor's freezing as
``torch.nn.functional.batch_norm`` + add + activation, as a stock model does;
training with running statistics keeps the one fused op that updates them.
"""

import collections
import copy
import re

import pytest
import torch
from torch import nn

import bnfused

torchvision = pytest.importorskip("torchvision")


class Block(nn.Module):
    """conv -> fused ``act(bn(x) + x)``, the ResNet block tail."""

    def __init__(self, activation="relu", channels=8):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = bnfused.BatchNormAct2d(channels, activation=activation)

    def forward(self, x):
        return self.bn(self.conv(x), residual=x)


def randomize(model):
    """Non-trivial running statistics and affine parameters, so eval is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def plain():
    return nn.Sequential(nn.Conv2d(3, 8, 3), bnfused.BatchNorm2d(8), nn.ReLU())


def resnet18():
    model = torchvision.models.resnet18(num_classes=10)
    return bnfused.convert_model(randomize(model), fuse_activations=True)


def efficientnet():
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_efficientnet", pretrained=False)
    return bnfused.convert_model(randomize(model), fuse_activations=True)


MODELS = {
    "plain": (plain, (2, 3, 8, 8)),
    "silu": (
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), bnfused.BatchNormAct2d(8, activation="silu")),
        (2, 3, 8, 8),
    ),
    "relu-residual": (lambda: Block("relu"), (2, 8, 6, 6)),
    "leaky-residual": (lambda: Block("leaky_relu"), (2, 8, 6, 6)),
    "resnet18": (resnet18, (1, 3, 32, 32)),
    "efficientnet": (efficientnet, (1, 3, 32, 32)),
}


def make(name):
    build, shape = MODELS[name]
    return randomize(build()).eval(), torch.randn(shape)


def bnfused_ops(graph):
    return [n.target for n in graph.nodes if n.op == "call_function" and "bnfused" in str(n.target)]


def assert_stock_graph(ep):
    assert bnfused_ops(ep.graph) == []
    assert ep.graph_signature.buffers_to_mutate == {}


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_export_is_aten_without_mutation(name):
    model, x = make(name)
    assert any(type(m).__module__.startswith("bnfused") for m in model.modules())
    ep = torch.export.export(model, (x,))
    assert_stock_graph(ep)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(ep.module()(x), want, rtol=1e-5, atol=1e-5)
        decomposed = ep.run_decompositions()
        assert_stock_graph(decomposed)
        torch.testing.assert_close(decomposed.module()(x), want, rtol=1e-5, atol=1e-5)


def test_eval_export_half_input_with_float32_parameters():
    model = randomize(bnfused.BatchNormAct2d(8, activation="silu")).eval()
    x, r = torch.randn(2, 8, 5, 5).bfloat16(), torch.randn(2, 8, 5, 5).bfloat16()
    ep = torch.export.export(model, (x,), {"residual": r})
    assert_stock_graph(ep)
    with torch.no_grad():
        got, want = ep.module()(x, residual=r), model(x, residual=r)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_training_without_running_stats_exports_as_aten():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), bnfused.BatchNormAct2d(8, track_running_stats=False, activation="relu")
    ).train()
    x = torch.randn(4, 3, 6, 6)
    ep = torch.export.export(model, (x,))
    assert_stock_graph(ep)
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_training_export_updates_running_stats_as_eager():
    model = randomize(Block("relu")).train()
    x = torch.randn(4, 8, 6, 6)
    ep = torch.export.export(copy.deepcopy(model), (x,))
    assert bnfused_ops(ep.graph) == [torch.ops.bnfused.forward.default]
    functional = ep.run_decompositions()  # the running-stat writes become graph outputs
    mutated = set(functional.graph_signature.buffers_to_mutate.values())
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= mutated
    for program in (ep, functional):  # each module on its own copy of the shared state
        eager, exported = copy.deepcopy(model), copy.deepcopy(program.module())
        for _ in range(2):
            torch.testing.assert_close(exported(x), eager(x), rtol=0, atol=0)
        for name, want in eager.state_dict().items():
            assert torch.equal(exported.state_dict()[name], want), name


@pytest.mark.parametrize("name", ["relu-residual", "resnet18"])
def test_onnx_export_runs_in_onnxruntime(name):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model, x = make(name)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


def test_jit_trace_records_aten_batch_norm():
    model, x = make("relu-residual")
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        kinds = [n.kind() for n in traced.inlined_graph.nodes()]
        assert "aten::batch_norm" in kinds and "aten::relu" in kinds
        assert not [k for k in kinds if "bnfused" in k]
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


def _post_grad_targets(model, x):
    """The call targets of Inductor's post-grad graph of ``model`` frozen in eval."""
    import torch._inductor.config as inductor_config

    seen = []

    def record(graph):
        seen.extend(str(n.target) for n in graph.nodes if n.op == "call_function")

    torch._dynamo.reset()
    with inductor_config.patch(freezing=True, post_grad_custom_post_pass=record), torch.no_grad():
        out = torch.compile(model)(x)
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    return seen


def test_inductor_freezing_folds_batch_norm_into_conv():
    x = torch.randn(2, 3, 8, 8)
    stock = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())).eval()
    ours = bnfused.convert_model(copy.deepcopy(stock), fuse_activations=True).eval()
    assert isinstance(ours[1], bnfused.BatchNormAct2d)
    for model in (stock, ours):  # stock shows what folding looks like
        targets = _post_grad_targets(model, x)
        leftover = [
            t
            for t in targets
            if any(
                word in t
                for word in ("batch_norm", "bnfused", "auto_functionalized", "copy_", "sqrt", "sub")
            )
        ]
        assert targets and leftover == [], (type(model[1]).__name__, targets)


def test_frozen_resnet_compiles_to_the_stock_models_code():
    """A converted ResNet (fused relu and residual tails) under torch.compile with freezing
    gives Inductor what the stock model gives it: every batch norm folded, the same
    convolutions with the same fused steps, the same kernels; so the same speed (make
    bench times it, this needs no timing)."""
    from torch._inductor.utils import run_and_get_code

    from examples import resnet

    torch.manual_seed(0)
    stock, _ = resnet.build("resnet10")
    ours = bnfused.convert_model(copy.deepcopy(stock), fuse_activations=True)
    assert any(isinstance(m, bnfused.BatchNormAct2d) for m in ours.modules())
    x = torch.randn(2, 3, 16, 16)
    code = {}
    for name, model in (("stock", stock), ("bnfused", ours)):
        torch._dynamo.reset()
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            out, source = run_and_get_code(torch.compile(model.eval()), x)
        # The same ops with the same fused pointwise steps, and the same generated kernels.
        # (Not the same text: in a downsampling block the converted graph computes the
        # shortcut first, and Inductor fuses the add into that convolution instead.)
        text = re.sub(r"#.*", "", "\n".join(source))
        code[name] = collections.Counter(
            re.findall(r"torch\.ops\.[\w.]+|'(?:relu|none|add)'|\bcpp_fused_\w+\b", text)
        )
        torch.testing.assert_close(out, stock.eval()(x), rtol=1e-4, atol=1e-4)
    assert not any("batch_norm" in op for op in code["bnfused"])
    assert code["bnfused"] == code["stock"]
