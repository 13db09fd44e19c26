"""The Triton kernel specializations the launcher picks on a GPU, compiled ahead of time.

The launcher (``bnfused.op.triton._ops``) is driven over the op's input domain
(dtypes, parameter dtypes, layouts, shapes, activations, residual, affine
parts, training/eval, running stats, backward output masks, pointer alignment)
on ``meta`` tensors, with every ``@triton.jit`` kernel it launches replaced by a
recorder. Each recorded launch is turned into Triton's own specialization key
(constexprs, dtypes, the divisibility-by-16 and equal-to-1 hints of its
integer and pointer arguments, num_warps) by Triton's binder, exactly as a
launch on a GPU would. Distinct keys are the specializations the launcher can
reach; ``covering`` picks a subset in which every value of every argument's
specialization occurs, and every pair of values of the code-shaping arguments
(constexprs other than tile sizes, the first pointer's dtype) that occurs in
some reachable key. ``codegen_triton_compile`` compiles them.

The binder (``create_function_from_signature``) is a Triton internal,
identical in Triton 3.6 and 3.8.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import torch

ARCHS = (90, 80)
SM_COUNT = 132  # H100/H200 SXM: sets the reduction splits, i.e. which loop counts are 1

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# label: (shape, channels_last, aligned sizes)
_SHAPES = {
    "nchw": ((16, 64, 8, 8), False, True),
    "nhwc": ((16, 64, 8, 8), True, True),
    "nc": ((256, 64), False, True),
    "nchw-odd": ((3, 5, 7, 5), False, False),
    "nhwc-odd": ((3, 5, 7, 5), True, False),
    "nc-odd": ((7, 5), False, False),
    "nchw-64bit": ((2**16, 64, 32, 16), False, True),
    "nhwc-64bit": ((2**16, 64, 32, 16), True, True),
}
_AFFINE = ((True, True), (False, False), (True, False), (False, True))
_MODES = (("train", True, True), ("train-no-running", True, False), ("eval", False, True))


def supported() -> Tuple[bool, str]:
    """``(ok, reason)``: Triton importable with the compile-without-GPU internals used here."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource, make_backend  # noqa: F401
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except Exception as e:  # ImportError, or an API that moved
        return False, f"Triton ahead-of-time compilation unavailable ({type(e).__name__}: {e})"
    if not hasattr(JITFunction, "_pack_args"):
        return (
            False,
            f"Triton {triton.__version__}: JITFunction._pack_args missing (3.6-3.8 have it)",
        )
    return True, f"Triton {triton.__version__}"


@dataclass
class Specialization:
    """One distinct specialization of one kernel, with a launch that reaches it."""

    kernel: object  # the JITFunction
    args: tuple
    kwargs: dict
    key: str
    features: FrozenSet[str]
    streaming: Tuple[str, ...]  # pointer arguments that address a whole input-sized tensor
    shaping: FrozenSet[str] = frozenset()  # arguments whose pairs the cover must keep
    aligned: bool = False  # reached with 16-byte aligned pointers and sizes
    scenarios: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def label(self) -> str:
        """Short description: first pointer's dtype, constexprs, num_warps, the runtime
        arguments specialized as 1 and those without the divisible-by-16 hint."""
        f = dict(x.split("=", 1) for x in self.features)
        params = [p.name for p in self.kernel.params]
        runtime = [p.name for p in self.kernel.params if not p.is_constexpr]
        ones = [n for n in runtime if f[n].startswith("constexpr")]
        odd = [
            n
            for n in runtime
            if not f[n].startswith(("constexpr", "fp")) and not f[n].endswith(":D")
        ]
        parts = [f"{params[0]}={f[params[0]].split(':')[0].lstrip('*')}"]
        parts += [
            f"{k}={_short(v)}" for k, v in self.kwargs.items() if k.isupper() or k == "num_warps"
        ]
        if ones:
            parts.append("=1:" + ",".join(ones))
        if odd:
            parts.append("not16:" + ",".join(odd))
        return " ".join(parts)


def _short(v) -> str:
    s = str(v)
    return s.replace("triton.language.", "").replace("True", "1").replace("False", "0")


def _launcher():
    from bnfused.op.triton import _launch, _ops

    return _ops, _launch


@contextlib.contextmanager
def _recording(sink: List[tuple]):
    """Replaces the launcher's kernels by recorders of (kernel, args, kwargs); no GPU queried."""
    from triton.runtime.jit import JITFunction

    ops, launch = _launcher()

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: sink.append((self.kernel, args, kwargs))

    saved = {n: v for n, v in vars(ops).items() if isinstance(v, JITFunction)}
    saved_sm, saved_dev = launch._sm_count, torch.cuda.current_device
    try:
        for n, v in saved.items():
            setattr(ops, n, Recorder(v))
        launch._sm_count = lambda index: SM_COUNT
        torch.cuda.current_device = lambda: 0
        yield
    finally:
        for n, v in saved.items():
            setattr(ops, n, v)
        launch._sm_count, torch.cuda.current_device = saved_sm, saved_dev


def _tensor(shape, dtype, channels_last=False, misaligned=False):
    numel = 1
    for d in shape:
        numel *= d
    if misaligned:  # one element past a 16-byte boundary, as a view into a larger buffer
        base = torch.empty(numel + 1, dtype=dtype, device="meta")[1:]
        if channels_last and len(shape) == 4:
            n, c, h, w = shape
            return base.view(n, h, w, c).permute(0, 3, 1, 2)
        return base.view(shape)
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=fmt)


def _scenarios() -> Iterator[Tuple[str, bool, Callable]]:
    """(name, aligned, call) for each situation the op can be called in."""
    from bnfused.op.contract import IDENTITY, LEAKY_RELU, RELU, SILU

    ops, _ = _launcher()
    activations = (IDENTITY, RELU, LEAKY_RELU, SILU)

    def call(shape, cl, dtype, pdtype, act, res, affine, mode, misaligned):
        _, training, running = mode

        def run():
            x = _tensor(shape, dtype, cl, misaligned)
            C = shape[1]
            w = _tensor((C,), pdtype, misaligned=misaligned) if affine[0] else None
            b = _tensor((C,), pdtype, misaligned=misaligned) if affine[1] else None
            rm = _tensor((C,), pdtype, misaligned=misaligned) if running else None
            rv = _tensor((C,), pdtype, misaligned=misaligned) if running else None
            r = _tensor(shape, dtype, cl, misaligned) if res else None
            y, mean, invstd, mask, _ = ops.forward(
                x, w, b, rm, rv, r, training, 0.1, 1e-5, act, 0.01
            )
            dy = _tensor(shape, dtype, cl, misaligned)
            for out_mask in (
                (True, True, True, res),
                (True, False, False, False),
                (False, True, True, False),
                (False, False, False, res),
            ):
                ops.backward(
                    dy, x, w, b, mean, invstd, mask, r, training, 1e-5, act, 0.01, out_mask
                )
            return tuple(shape)

        return run

    for label, (shape, cl, sizes_aligned) in _SHAPES.items():
        for misaligned in (False, True) if sizes_aligned and "64bit" not in label else (False,):
            for dtype in _DTYPES:
                for pdtype in sorted({dtype, torch.float32}, key=str):
                    for act, res, affine, mode in itertools.product(
                        activations, (False, True), _AFFINE, _MODES
                    ):
                        name = (
                            f"{label}{'-misaligned' if misaligned else ''} {dtype} params "
                            f"{pdtype} act={act} res={int(res)} w,b={affine} {mode[0]}"
                        )
                        yield (
                            name,
                            sizes_aligned and not misaligned,
                            call(shape, cl, dtype, pdtype, act, res, affine, mode, misaligned),
                        )
    # Reduction tiles follow the shape: rows R = N*S and channels C in every power of two.
    for cl, dtype in itertools.product((False, True), _DTYPES):
        for r_exp, c_exp in itertools.product(range(0, 13), range(0, 12)):
            shape = (2 ** max(0, r_exp - 6), 2**c_exp, 2 ** min(r_exp, 6), 1)
            name = f"tiles R=2^{r_exp} C=2^{c_exp} {'nhwc' if cl else 'nchw'} {dtype}"
            yield (
                name,
                False,
                call(shape, cl, dtype, dtype, RELU, True, (True, True), _MODES[0], False),
            )


def _key_backend():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", ARCHS[0], 32))


_BINDERS: Dict[tuple, Callable] = {}


def _bind(kernel, backend, args, kwargs):
    """Triton's own ``(bound_args, specialization, options)`` for a launch of ``kernel``."""
    from triton.runtime.jit import create_function_from_signature

    key = (id(kernel), id(backend))
    if key not in _BINDERS:
        _BINDERS[key] = create_function_from_signature(kernel.signature, kernel.params, backend)
    return _BINDERS[key](*args, **kwargs)


def reachable() -> List[Specialization]:
    """Every distinct specialization the launcher launches over the op's input domain."""
    backend = _key_backend()
    specs: Dict[str, Specialization] = {}
    for name, aligned, run in _scenarios():
        sink: List[tuple] = []
        with _recording(sink):
            shape = run()
        for kernel, args, kwargs in sink:
            _, specialization, options = _bind(kernel, backend, args, kwargs)
            names = [p.name for p in kernel.params]
            key = f"{kernel.fn.__name__}{specialization}{options.get('num_warps')}"
            spec = specs.get(key)
            if spec is None:
                feats = {
                    f"{n}={_short(s[0])}:{_short(s[1])}" for n, s in zip(names, specialization)
                }
                feats.add(f"num_warps={options.get('num_warps')}")
                streaming = tuple(
                    n
                    for n, a in zip(names, args)
                    if isinstance(a, torch.Tensor) and tuple(a.shape) == shape
                )
                shaping = {p.name for p in kernel.params if p.is_constexpr} - set(_TILE)
                shaping.add(names[0])
                spec = specs[key] = Specialization(
                    kernel, args, dict(kwargs), key, frozenset(feats), streaming, frozenset(shaping)
                )
            spec.aligned |= aligned
            if len(spec.scenarios) < 3:
                spec.scenarios.append(name)
    return list(specs.values())


_TILE = ("BLOCK_R", "BLOCK_C", "BLOCK_B")


def _requirements(spec: Specialization) -> set:
    """What compiling ``spec`` covers: each argument specialization alone, and each pair of
    code-shaping ones (constexprs but the tile sizes, and the input pointer's dtype)."""
    feats = sorted(spec.features)
    shaping = [f for f in feats if f.split("=", 1)[0] in spec.shaping]
    return set(feats) | set(itertools.combinations(shaping, 2))


def covering(specs: Sequence[Specialization]) -> List[Specialization]:
    """A subset of ``specs`` that covers every requirement (see :func:`_requirements`) some
    spec of the same kernel has: lazy greedy set cover, deterministic."""
    chosen: List[int] = []
    by_kernel: Dict[str, List[int]] = {}
    for i, s in enumerate(specs):
        by_kernel.setdefault(s.name, []).append(i)
    for members in by_kernel.values():
        reqs = {i: _requirements(specs[i]) for i in members}
        uncovered = set().union(*reqs.values())
        heap = [(-len(reqs[i]), i) for i in members]
        heapq.heapify(heap)
        while uncovered and heap:
            _, i = heapq.heappop(heap)
            gain = len(reqs[i] & uncovered)
            if heap and gain < -heap[0][0]:
                heapq.heappush(heap, (-gain, i))
                continue
            if gain:
                chosen.append(i)
                uncovered -= reqs[i]
    return [specs[i] for i in sorted(chosen)]


def specializations(full: Optional[bool] = None) -> List[Specialization]:
    """The specializations to compile: the pairwise cover, or all reachable ones when ``full``
    (default: ``BNFUSED_CODEGEN_ALL=1``)."""
    if full is None:
        full = os.environ.get("BNFUSED_CODEGEN_ALL") == "1"
    specs = reachable()
    return specs if full else covering(specs)
