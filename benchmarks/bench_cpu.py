"""CPU benchmark: bnfused C++ kernels against torch eager batch norm.

Both sides run interleaved in one process on the same tensors: for every
repetition each implementation is timed once, and the median is reported.
torch eager is written as ResNet writes it: ``F.batch_norm`` then in-place
``+= residual`` and ``relu_``. bnfused is called through torch.ops.bnfused_C
(forward/backward), with a small autograd.Function for forward+backward.

Achieved GB/s counts the bytes a fused implementation must move (forward
train: x twice, residual, y, mask; backward: dy and x twice, dx, dresidual)
and is compared with a measured large ``dst.copy_(src)`` (read + write).

By default glibc's allocator is told to keep freed memory (no trim, mmap only
above 32 MB): otherwise it hands freed outputs back to the OS and the next
call page-faults them in again, a cost that lands at random on either side
and swung single cases by up to 5x. PyTorch's CPU tuning guide recommends a
caching allocator (jemalloc, tcmalloc) for the same reason. ``--system-malloc``
measures with glibc's defaults. Tensors over 32 MB are mapped afresh either way.

    PYTHONPATH=. python benchmarks/bench_cpu.py [--quick] [--threads 2] [--dtype float32]
"""
import argparse
import ctypes
import math
import statistics
import time

import torch
import torch.nn.functional as F

import bnfused._C  # noqa: F401  (registers torch.ops.bnfused_C)

OPS = torch.ops.bnfused_C
ACT = {"bn": 0, "bn+relu": 1, "bn+add+relu": 1}
MODES = ("fwd-train", "fwd+bwd", "eval")

SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (128, 512, 7, 7), (32, 256, 56, 56),
          (32, 128, 28, 28), (64, 2048, 7, 7)]
QUICK_SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (128, 512, 7, 7), (32, 128, 28, 28)]


class FusedBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, rm, rv, r, training, act):
        y, mean, invstd, mask = OPS.forward(x, w, b, rm, rv, r, training, 0.1, 1e-5, act, 0.0)
        keep_res = r if mask.numel() == 0 else None
        ctx.save_for_backward(x, w, b, mean, invstd, mask, keep_res)
        ctx.training, ctx.act, ctx.has_res = training, act, r is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, b, mean, invstd, mask, r = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2],
                ctx.has_res and ctx.needs_input_grad[5]]
        dx, dw, db, dr = OPS.backward(dy.contiguous(memory_format=_fmt(x)), x, w, b, mean, invstd,
                                      mask, r, ctx.training, 1e-5, ctx.act, 0.0, need)
        return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None,
                None, None, dr if need[3] else None, None, None)


def _fmt(x):
    if x.dim() == 4 and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def torch_forward(x, w, b, rm, rv, r, training, op):
    y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
    if op == "bn+add+relu":
        y += r
    if op != "bn":
        y.relu_()
    return y


def fused_forward(x, w, b, rm, rv, r, training, op):
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return FusedBN.apply(x, w, b, rm, rv, r, training, ACT[op])
    return OPS.forward(x, w, b, rm, rv, r, training, 0.1, 1e-5, ACT[op], 0.0)[0]


def make_case(shape, channels_last, dtype, op, mode):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    C = shape[1]
    w, b = torch.rand(C) + 0.5, torch.randn(C)
    r = torch.randn_like(x) if op == "bn+add+relu" else None
    dy = torch.randn_like(x)
    rm, rv = torch.zeros(C), torch.ones(C)
    if mode == "fwd+bwd":
        x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
        if r is not None:
            r.requires_grad_()

    def run(fn):
        if mode == "fwd+bwd":
            y = fn(x, w, b, rm, rv, r, True, op)
            y.backward(dy)
            x.grad = w.grad = b.grad = None
            if r is not None:
                r.grad = None
        else:
            with torch.no_grad():
                fn(x, w, b, rm, rv, r, mode == "fwd-train", op)

    return run, x


def bytes_moved(x, op, mode):
    e = x.numel() * x.element_size()
    res = op == "bn+add+relu"
    if mode == "eval":
        return e * (2 + res)
    fwd = e * (3 + res) + (x.numel() / 8 if res else 0)
    if mode == "fwd-train":
        return fwd
    # backward: reduction reads dy, x (or mask); elementwise reads them again, writes dx (, dres).
    src = x.numel() / 8 if res else e
    return fwd + 2 * (e + src) + e * (1 + res)


def time_once(run, inner):
    t0 = time.perf_counter()
    for _ in range(inner):
        run()
    return (time.perf_counter() - t0) / inner


def copy_bandwidth(reps):
    src = torch.randn(64 * 1024 * 1024)  # 256 MB
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [time_once(lambda: dst.copy_(src), 1) for _ in range(reps)]
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def bench_case(shape, cl, dtype, op, mode, reps):
    run_t, x = make_case(shape, cl, dtype, op, mode)
    run_f, _ = make_case(shape, cl, dtype, op, mode)
    torch_run, fused_run = (lambda: run_t(torch_forward)), (lambda: run_f(fused_forward))
    for _ in range(2):
        torch_run(), fused_run()
    t_probe = time_once(fused_run, 1)
    inner = max(1, int(0.02 / max(t_probe, 1e-6)))
    t_torch, t_fused = [], []
    for rep in range(reps):
        # Alternate which goes first: on a shared machine a fixed order biases the medians.
        if rep % 2:
            t_fused.append(time_once(fused_run, inner))
            t_torch.append(time_once(torch_run, inner))
        else:
            t_torch.append(time_once(torch_run, inner))
            t_fused.append(time_once(fused_run, inner))
    return statistics.median(t_torch), statistics.median(t_fused), bytes_moved(x, op, mode)


def keep_freed_memory():
    """Ask glibc to keep freed blocks (see the module docstring); False where it cannot."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(
        libc.mallopt(m_mmap_threshold, 32 << 20))


def geomean(v):
    return math.exp(sum(math.log(a) for a in v) / len(v)) if v else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repetitions (< 2 min)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--shapes", default=None,
                    help="comma-separated NxCxHxW shapes instead of the ResNet-50 set")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--ops", default="bn,bn+relu,bn+add+relu")
    ap.add_argument("--system-malloc", action="store_true",
                    help="keep glibc's trim and mmap defaults (outputs re-fault per call)")
    args = ap.parse_args()
    kept = not args.system_malloc and keep_freed_memory()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    reps = args.reps or (5 if args.quick else 11)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    modes, ops = args.modes.split(","), args.ops.split(",")
    for name, given, known in (("--modes", modes, MODES), ("--ops", ops, tuple(ACT))):
        unknown = [v for v in given if v not in known]
        if unknown:
            ap.error(f"{name}: unknown {unknown}; choose from {','.join(known)}")

    copy_gbs = copy_bandwidth(5)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"copy bandwidth {copy_gbs:.1f} GB/s (256 MB dst.copy_(src), read+write), "
          f"malloc {'keeps freed memory' if kept else 'glibc defaults'}")
    head = (f"{'shape':>18} {'layout':>6} {'op':>12} {'mode':>9} {'torch ms':>9} "
            f"{'fused ms':>9} {'speedup':>8} {'GB/s':>6} {'%copy':>6}")
    print(head)
    print("-" * len(head))
    speedups = {}
    for mode in modes:
        for op in ops:
            for shape in shapes:
                for cl in (False, True):
                    tt, tf, nbytes = bench_case(shape, cl, dtype, op, mode, reps)
                    gbs = nbytes / tf / 1e9
                    speedups.setdefault((op, mode), []).append(tt / tf)
                    print(f"{str(shape):>18} {'NHWC' if cl else 'NCHW':>6} {op:>12} {mode:>9} "
                          f"{tt * 1e3:9.3f} {tf * 1e3:9.3f} {tt / tf:7.2f}x {gbs:6.1f} "
                          f"{100 * gbs / copy_gbs:5.0f}%", flush=True)
    print("\ngeometric-mean speedup (torch eager time / bnfused time), min in brackets")
    for (op, mode), v in speedups.items():
        print(f"  {op:>12} {mode:>9}: {geomean(v):5.2f}x  [min {min(v):.2f}x]")


if __name__ == "__main__":
    main()
