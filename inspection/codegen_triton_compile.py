"""Ahead-of-time compilation of the Triton specializations, and what the compiler made of them.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` needs no
GPU; the cubin is read with cuobjdump and the PTX accesses traced to the kernel
parameters (``codegen_inspect``). ``JITFunction._pack_args`` (signature,
constexprs and divisibility attributes from a launch's arguments) is a Triton
internal, identical in Triton 3.6 and 3.8.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from inspection import codegen_inspect as ci
from inspection.codegen_triton import ARCHS, Specialization, _bind


@dataclass
class Compiled:
    """What the compiler made of one specialization for one target."""

    spec: Specialization
    arch: int
    resources: ci.Resources
    num_warps: int
    shared: int  # bytes per program, static + Triton's dynamic shared memory
    sass: Dict[Tuple[str, int], int]
    streaming_loads: Dict[str, Dict[int, int]]  # argument -> {bits: count} in the PTX
    streaming_stores: Dict[str, Dict[int, int]]
    local_ops: int
    scalar: Tuple[str, ...] = ()  # "ld x_ptr" ...: hot accesses not vectorized

    @property
    def vectorized(self) -> bool:
        """Every whole-tensor argument's hot loads and stores are vector accesses (see
        :func:`codegen_inspect.hot_vectorized`)."""
        return not self.scalar

    @property
    def spills(self) -> bool:
        return self.resources.spills or self.local_ops > 0


def compile_spec(spec: Specialization, arch: int, workdir: Optional[str] = None) -> Compiled:
    """Compiles ``spec`` for sm_``arch``; raises whatever Triton raises when it cannot."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    bound, specialization, options = _bind(spec.kernel, backend, spec.args, spec.kwargs)
    options, signature, constexprs, attrs = spec.kernel._pack_args(
        backend, spec.kwargs, bound, specialization, options
    )
    kernel = triton.compile(
        ASTSource(spec.kernel, signature, constexprs, attrs),
        target=target,
        options=options.__dict__,
    )
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        text = ci.cuobjdump("-res-usage", "-sass", path)
    resources, sass = ci.parse_res_usage(text), ci.parse_sass(text)
    (res,), (insns,) = resources.values(), sass.values()
    counts = ci.sass_memory_ops(insns)
    runtime = [n for n, t in signature.items() if t != "constexpr"]
    accesses = ci.ptx_global_accesses(kernel.asm["ptx"])
    loads, stores, scalar = {}, {}, []
    for name in spec.streaming:
        if name in runtime:
            i = runtime.index(name)
            loads[name] = ci.ptx_param_widths(accesses, i, "ld")
            stores[name] = ci.ptx_param_widths(accesses, i, "st")
            for kind in ("ld", "st"):
                if not ci.hot_vectorized(ci.ptx_param_accesses(accesses, i, kind)):
                    scalar.append(f"{kind} {name}")
    return Compiled(
        spec,
        arch,
        res,
        kernel.metadata.num_warps,
        res.shared + kernel.metadata.shared,
        dict(counts),
        loads,
        stores,
        ci.local_memory_ops(counts),
        tuple(scalar),
    )


_POOL_SPECS: List[Specialization] = []


def _compile_job(job: Tuple[int, int]):
    index, arch = job
    try:
        c = compile_spec(_POOL_SPECS[index], arch)
        c.spec = None  # the kernel object stays in the parent
        return index, arch, c, None
    except Exception as e:  # the test reports every failure, not only the first
        return index, arch, None, f"{type(e).__name__}: {e}".strip()[-2000:]


def compile_all(
    specs: Sequence[Specialization], archs: Sequence[int] = ARCHS, processes: Optional[int] = None
) -> Tuple[List[Compiled], List[Tuple[Specialization, int, str]]]:
    """Compiles every spec for every arch in parallel, in a fresh Triton cache.

    Returns ``(compiled, failures)``; a failure is ``(spec, arch, error message)``."""
    import multiprocessing

    global _POOL_SPECS
    jobs = [(i, a) for i in range(len(specs)) for a in archs]
    processes = processes or min(len(jobs), os.cpu_count() or 1)
    compiled: List[Compiled] = []
    failures: List[Tuple[Specialization, int, str]] = []
    with tempfile.TemporaryDirectory(prefix="bnfused-triton-cache-") as cache:
        saved = os.environ.get("TRITON_CACHE_DIR")
        os.environ["TRITON_CACHE_DIR"] = cache
        _POOL_SPECS = list(specs)
        try:
            if processes > 1:
                with multiprocessing.get_context("fork").Pool(processes) as pool:
                    results = pool.map(_compile_job, jobs, chunksize=1)
            else:
                results = [_compile_job(j) for j in jobs]
        finally:
            _POOL_SPECS = []
            if saved is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = saved
    for index, arch, c, error in results:
        if c is None:
            failures.append((specs[index], arch, error))
        else:
            c.spec = specs[index]
            compiled.append(c)
    return compiled, failures
