"""The two ops of the contract, registered with ``torch.library``.

``bnfused::forward`` and ``bnfused::backward`` exist whether or not the
compiled extension was built: their CPU/CUDA implementations ask
:mod:`bnfused.op.backend` which backend runs (compiled kernels, Triton or the
reference) and call it. Each op has a fake implementation, so
``torch.compile`` traces them without graph breaks, and ``forward`` has an
autograd kernel that calls ``backward``. The running statistics are mutated in
place and annotated as such (``Tensor(a!)``) so functionalization sees it.

Activations are integer codes (:mod:`bnfused.op.contract`).

Two routes lead into the forward, and both end in :func:`_forward_impl`, which
checks the arguments (the op boundary) and runs the chosen backend:

* **direct** (:func:`forward`, plain eager calls, :func:`direct_call_ok`):
  ``_BatchNormFunction.apply`` when a gradient is wanted, else ``_forward_impl``
  itself, skipping the two Python dispatcher hops that cost more than a small
  kernel. ``torch.func`` transforms take ``_FunctorchBatchNormFunction``, the
  same function with ``setup_context``, which they require.
* **dispatcher** (``torch.ops.bnfused.forward``: torch.compile, export, modes,
  tensor subclasses, direct op calls): the Autograd kernel
  :func:`_forward_autograd` applies ``_BatchNormFunction`` or goes below autograd
  to the device kernel, ``_forward_impl``; under tracing the fake
  implementation (:func:`_forward_fake`, same checks) stands in.

Traced or compiled, a call that writes no running statistic (eval) leaves both
routes for standard aten ops (:mod:`bnfused.op.decompose`, same checks), which
export, ONNX and Inductor's freezing read; so does every call under forward-mode
AD. A gradient that autograd differentiates again (``create_graph``) comes from
:mod:`bnfused.op.autodiff`, in differentiable ops.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD

from . import autodiff, backend, contract, cuda_emulated, decompose, reference
from . import torch_compat as tc
from .contract import (
    BACKWARD_SCHEMA,
    FORWARD_SCHEMA,
    IDENTITY,
    SILU,
    check_activation_code,
    check_backward_inputs,
    check_inputs,
    uses_mask,
)

Tensor = torch.Tensor

_lib = torch.library.Library("bnfused", "DEF")
_lib.define(FORWARD_SCHEMA)
_lib.define(BACKWARD_SCHEMA)

# Arguments of each op, from its schema: an autograd backward returns one grad per input.
FORWARD_ARG_COUNT = len(torch.ops.bnfused.forward.default._schema.arguments)
BACKWARD_ARG_COUNT = len(torch.ops.bnfused.backward.default._schema.arguments)


def _implementation(name: str, op: str):
    if name in ("cpu", "cuda"):
        return getattr(torch.ops.bnfused_C, op)
    if name == "triton":
        from . import triton as triton_backend

        return getattr(triton_backend, op)
    if name == "cuda-emulated":
        return getattr(cuda_emulated, op)
    return getattr(reference, op)


def _check_forward(
    input, weight, bias, running_mean, running_var, residual, training, eps, activation
):
    """The op boundary: every route into the forward (direct eager call, dispatcher, fake)
    raises here what ``torch.nn.functional.batch_norm`` raises, whatever the backend."""
    check_inputs(input, running_mean, running_var, weight, bias, training, residual, eps)
    check_activation_code(activation)


def _forward_impl(
    input,
    weight,
    bias,
    running_mean,
    running_var,
    residual,
    training,
    momentum,
    eps,
    activation,
    activation_param,
):
    _check_forward(
        input, weight, bias, running_mean, running_var, residual, training, eps, activation
    )
    run = _implementation(backend.choose(input.device), "forward")
    return run(
        input,
        weight,
        bias,
        running_mean,
        running_var,
        residual,
        training,
        momentum,
        eps,
        activation,
        activation_param,
    )


def _backward_impl(
    grad_output,
    input,
    weight,
    bias,
    save_mean,
    save_invstd,
    mask,
    residual,
    training,
    eps,
    activation,
    activation_param,
    output_mask,
    save_mean_lo=None,
):
    check_backward_inputs(
        grad_output,
        input,
        weight,
        bias,
        save_mean,
        save_invstd,
        mask,
        residual,
        activation,
        output_mask,
        save_mean_lo,
    )
    if tc.forward_ad_active():
        _refuse_tangents(grad_output, input, weight, bias, residual)
    run = _implementation(backend.choose(input.device), "backward")
    return run(
        grad_output,
        input,
        weight,
        bias,
        save_mean,
        save_invstd,
        mask,
        residual,
        training,
        eps,
        activation,
        activation_param,
        list(output_mask),
        save_mean_lo,
    )


def _refuse_tangents(*tensors: Optional[Tensor]) -> None:
    """Raise if a forward-mode tangent reached the backward kernel, which would drop it."""
    if any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            "bnfused::backward has no forward-mode derivative (an input carries a tangent); "
            "apply forward-mode AD to bnfused::forward or the bnfused modules, which run as "
            "torch's batch_norm under it"
        )


_PLAIN = (Tensor, torch.nn.Parameter)


def direct_call_ok(*tensors: Optional[Tensor]) -> bool:
    """Whether an eager call may run the backend directly instead of through the dispatcher.

    Only when nothing could observe or reinterpret the op: no torch.compile or
    jit trace, no functorch transform, no dispatch or function mode, no tensor
    subclass. The result is then the op's result, minus the two Python dispatch
    hops (autograd kernel, device kernel) that cost more than a small kernel.
    """
    if (
        tc.is_compiling()
        or tc.is_tracing()
        or tc.dispatch_mode_depth()
        or tc.function_mode_enabled()
        or tc.functorch_transforms_active()
    ):
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return True


for _key in ("CPU", "CUDA", "CompositeExplicitAutograd"):
    _lib.impl("forward", _forward_impl, _key)
    _lib.impl("backward", _backward_impl, _key)


@torch.library.register_fake("bnfused::forward", lib=_lib)
def _forward_fake(
    input,
    weight,
    bias,
    running_mean,
    running_var,
    residual,
    training,
    momentum,
    eps,
    activation,
    activation_param,
):
    _check_forward(
        input, weight, bias, running_mean, running_var, residual, training, eps, activation
    )
    x = contract.canonical(input)
    acc = contract.acc_dtype(x.dtype)
    channels = x.shape[1]
    mask_len = contract.mask_bytes(x.numel()) if uses_mask(activation, residual is not None) else 0
    return (
        torch.empty_like(x),
        x.new_empty((channels,), dtype=acc),
        x.new_empty((channels,), dtype=acc),
        x.new_empty((mask_len,), dtype=torch.uint8),
        x.new_empty((contract.mean_lo_length(channels, training),), dtype=acc),
    )


@torch.library.register_fake("bnfused::backward", lib=_lib)
def _backward_fake(
    grad_output,
    input,
    weight,
    bias,
    save_mean,
    save_invstd,
    mask,
    residual,
    training,
    eps,
    activation,
    activation_param,
    output_mask,
    save_mean_lo=None,
):
    check_backward_inputs(
        grad_output,
        input,
        weight,
        bias,
        save_mean,
        save_invstd,
        mask,
        residual,
        activation,
        output_mask,
        save_mean_lo,
    )
    x = contract.canonical(input)
    acc = contract.acc_dtype(x.dtype)
    channels = x.shape[1]
    empty = x.new_empty((0,))
    dx = torch.empty_like(x) if output_mask[0] else empty
    dw = (
        x.new_empty((channels,), dtype=weight.dtype if weight is not None else acc)
        if output_mask[1]
        else x.new_empty((0,))
    )
    db = (
        x.new_empty((channels,), dtype=bias.dtype if bias is not None else acc)
        if output_mask[2]
        else x.new_empty((0,))
    )
    dres = torch.empty_like(x) if output_mask[3] else x.new_empty((0,))
    return dx, dw, db, dres


def _function_forward(
    input,
    weight,
    bias,
    running_mean,
    running_var,
    residual,
    training,
    momentum,
    eps,
    activation,
    activation_param,
):
    args = (
        input,
        weight,
        bias,
        running_mean,
        running_var,
        residual,
        training,
        momentum,
        eps,
        activation,
        activation_param,
    )
    if direct_call_ok(input, weight, bias, running_mean, running_var, residual):
        return _forward_impl(*args)
    with tc.below_autograd():
        return torch.ops.bnfused.forward(*args)


def _function_setup_context(ctx, inputs, output):
    input, weight, bias, _, _, residual, training, _, eps, activation, activation_param = inputs
    _, mean, invstd, mask, mean_lo = output
    ctx.mark_non_differentiable(mean, invstd, mask, mean_lo)
    # The residual is needed only to recompute a smooth activation's input;
    # relu-like ones read the bit mask instead.
    keep_residual = residual if activation == SILU else None
    ctx.save_for_backward(input, weight, bias, mean, invstd, mask, keep_residual, mean_lo)
    ctx.has_residual = residual is not None
    ctx.training, ctx.eps = training, eps
    ctx.activation, ctx.activation_param = activation, activation_param


class _BatchNormFunction(torch.autograd.Function):
    """Autograd of ``bnfused::forward``; first order through ``bnfused::backward``.

    ``forward`` takes ``ctx`` (the older style) on purpose: with a separate
    ``setup_context``, ``Function.apply`` binds the arguments through
    ``inspect.signature`` on every call, which costs more than a small kernel.
    """

    @staticmethod
    def forward(ctx, *inputs):
        output = _function_forward(*inputs)
        _function_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_output, _grad_mean, _grad_invstd, _grad_mask, _grad_mean_lo):
        x, weight, bias, mean, invstd, mask, residual, mean_lo = ctx.saved_tensors
        need_x, need_w, need_b, _, _, need_r = ctx.needs_input_grad[:6]
        if grad_output is None:
            return (None,) * FORWARD_ARG_COUNT
        if torch.is_grad_enabled():
            # The gradient is differentiated again: build it from differentiable ops.
            grads = autodiff.backward(
                grad_output,
                x,
                weight,
                bias,
                mean,
                invstd,
                mask,
                residual,
                ctx.training,
                ctx.eps,
                ctx.activation,
                ctx.activation_param,
                [need_x, need_w and weight is not None, need_b and bias is not None, need_r],
            )
        else:
            want_res = need_r and ctx.activation != IDENTITY
            args = (
                grad_output,
                x,
                weight,
                bias,
                mean,
                invstd,
                mask,
                residual,
                ctx.training,
                ctx.eps,
                ctx.activation,
                ctx.activation_param,
                [need_x, need_w and weight is not None, need_b and bias is not None, want_res],
                mean_lo,
            )
            # A batched grad_output (autograd.grad(..., is_grads_batched=True)) or the
            # wrapped tensors of a vjp function run after its transform go through the
            # dispatcher, which unwraps them (and applies the op's batching rule).
            if direct_call_ok(grad_output, x, weight, bias, residual) and not (
                tc.is_functorch_tensor(grad_output) or tc.is_functorch_tensor(x)
            ):
                dx, dw, db, dres = _backward_impl(*args)
            else:
                # No graph is built here, so skip the backward op's own autograd layer.
                with tc.below_autograd():
                    dx, dw, db, dres = torch.ops.bnfused.backward(*args)
            if need_r and ctx.activation == IDENTITY:
                dres = grad_output
            grads = (dx, dw, db, dres)
        dx, dw, db, dres = grads
        return (
            dx if need_x else None,
            dw if need_w else None,
            db if need_b else None,
            None,
            None,
            dres if need_r else None,
            None,
            None,
            None,
            None,
            None,
        )


class _FunctorchBatchNormFunction(torch.autograd.Function):
    """:class:`_BatchNormFunction` with ``setup_context``, which torch.func transforms require.

    Under vmap it runs batched: the ops' batching rules are in :mod:`bnfused.op.vmap`.
    """

    generate_vmap_rule = True
    forward = staticmethod(_function_forward)
    setup_context = staticmethod(_function_setup_context)
    backward = staticmethod(_BatchNormFunction.backward)


def _needs_grad(input, weight, bias, residual) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias, residual)
    )


def _forward_autograd(
    input,
    weight,
    bias,
    running_mean,
    running_var,
    residual,
    training,
    momentum,
    eps,
    activation,
    activation_param,
):
    args = (
        input,
        weight,
        bias,
        running_mean,
        running_var,
        residual,
        training,
        momentum,
        eps,
        activation,
        activation_param,
    )
    if tc.forward_ad_active():
        # Below autograd a tangent would be dropped; torch's own ops carry it.
        return decompose.forward(*args)
    if _needs_grad(input, weight, bias, residual):
        return _BatchNormFunction.apply(*args)
    with tc.below_autograd():
        return torch.ops.bnfused.forward(*args)


_lib.impl("forward", _forward_autograd, "Autograd")


def forward(
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    residual: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    activation: int,
    activation_param: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.bnfused.forward``, the way eager code should call it.

    Same arguments and results as the op (see FORWARD_SCHEMA and DESIGN's op
    contract). In plain eager mode (:func:`direct_call_ok`) it goes straight to
    the autograd function or the backend. Under forward-mode AD, and traced or
    compiled when it writes no running statistic, the call becomes aten ops
    (:mod:`bnfused.op.decompose`);
    otherwise (torch.compile, modes, transforms, subclasses) it calls the
    registered op, which does the same through the dispatcher.
    """
    args = (
        input,
        weight,
        bias,
        running_mean,
        running_var,
        residual,
        training,
        momentum,
        eps,
        activation,
        activation_param,
    )
    if tc.forward_ad_active():
        return decompose.forward(*args)  # tangents carried by torch's own ops
    if direct_call_ok(input, weight, bias, running_mean, running_var, residual):
        if _needs_grad(input, weight, bias, residual):
            return _BatchNormFunction.apply(*args)
        return _forward_impl(*args)
    if decompose.applies(training, running_mean, running_var):
        return decompose.forward(*args)  # traced as aten ops: foldable, exportable
    if (
        not tc.is_compiling()
        and tc.functorch_transforms_active()
        and _needs_grad(input, weight, bias, residual)
    ):
        # torch.func.grad differentiates autograd.Functions applied from Python,
        # not ones applied inside an op's Autograd kernel.
        return _FunctorchBatchNormFunction.apply(*args)
    return torch.ops.bnfused.forward(*args)


def _backward_setup(ctx, inputs, output):
    ctx.save_for_backward(*[t if isinstance(t, Tensor) else None for t in inputs[:8]])
    ctx.flags = inputs[8:]


def _backward_backward(ctx, gdx, gdw, gdb, gdres):
    """Grads of the backward op as a function of its own inputs (via the reference)."""
    saved = ctx.saved_tensors
    wrt = [
        i
        for i, t in enumerate(saved)
        if t is not None and t.is_floating_point() and ctx.needs_input_grad[i]
    ]
    with torch.enable_grad():
        leaves = [
            t.detach().requires_grad_(i in wrt) if t is not None and t.is_floating_point() else t
            for i, t in enumerate(saved)
        ]
        outs = reference.backward(*leaves, *ctx.flags)
        pairs = [
            (o, g)
            for o, g in zip(outs, (gdx, gdw, gdb, gdres))
            if g is not None and o.numel() and o.requires_grad
        ]
        grads = (
            torch.autograd.grad(
                [o for o, _ in pairs],
                [leaves[i] for i in wrt],
                [g for _, g in pairs],
                allow_unused=True,
            )
            if pairs
            else []
        )
    result: List[Optional[Tensor]] = [None] * BACKWARD_ARG_COUNT
    for i, g in zip(wrt, grads):
        result[i] = g
    return tuple(result)


torch.library.register_autograd(
    "bnfused::backward", _backward_backward, setup_context=_backward_setup, lib=_lib
)
