"""End-to-end: images/s of one ResNet training step, stock vs ``bnfused.convert_model``."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

import bnfused
from examples import resnet

from .timing import Timer, measure, median


@dataclass
class E2EResult:
    model: str
    source: str
    batch: int
    resolution: int
    dtype: str
    layout: str
    backend: str = ""
    images_per_s: Dict[str, float] = field(default_factory=dict)
    note: str = ""
    kind: str = "training step"


def _step(model: nn.Module, images, labels, opt, amp_dtype: Optional[torch.dtype]):
    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    return run


def measure_e2e(
    device: torch.device,
    name: str = "resnet50",
    batch: int = 8,
    resolution: int = 64,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    warmup: int = 2,
    reps: int = 5,
    deadline: Optional[float] = None,
) -> E2EResult:
    """Training steps (SGD, cross-entropy, random data) of ``name``: stock and converted.

    ``amp_dtype`` runs the forward under ``torch.autocast``; ``channels_last``
    converts model and images. The converted model starts from the stock weights.
    With a ``deadline`` (a ``time.perf_counter()`` value), the first step of each
    model is timed and ``reps`` lowered (to one at least) so the rest fits.
    """
    torch.manual_seed(0)
    stock, source = resnet.build(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    stock = stock.to(device, memory_format=fmt)
    result = E2EResult(
        name,
        source,
        batch,
        resolution,
        "fp32" if amp_dtype is None else f"autocast {amp_dtype}".replace("torch.", ""),
        "channels_last" if channels_last else "nchw",
    )
    images = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(
        memory_format=fmt
    )
    labels = torch.randint(0, 1000, (batch,), device=device)
    contenders = {"stock": stock}
    convert = getattr(bnfused, "convert_model", None)
    if convert is None:
        result.note = "bnfused.convert_model is not available in this build; fused row skipped"
    else:
        fused = copy.deepcopy(stock)
        out = convert(fused, fuse_activations=True)
        contenders["bnfused"] = (out if out is not None else fused).to(device)
        from bnfused.op import backend

        result.backend = backend.choose(device)
    steps = {
        k: _step(
            m.train(),
            images,
            labels,
            torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
            amp_dtype,
        )
        for k, m in contenders.items()
    }
    errors: Dict[str, str] = {}
    timer = Timer(device, cpu_sample_s=0.0)
    if deadline is None:
        times = measure(timer, steps, warmup, reps, errors)
    else:
        times = _measure_within(steps, timer, warmup, reps, deadline, errors, result)
    for k, samples in times.items():
        result.images_per_s[k] = batch / median(samples)
    if errors:
        result.note = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def _measure_within(
    steps,
    timer: Timer,
    warmup: int,
    reps: int,
    deadline: float,
    errors: Dict[str, str],
    result: E2EResult,
) -> Dict[str, list]:
    """:func:`measure` with ``reps`` lowered so it ends by ``deadline``, judged from a
    first (warm-up) step of each model; with no time for one more round, that first
    step is the sample (noted in ``result``)."""
    first: Dict[str, list] = {}
    for name, step in list(steps.items()):
        t0 = time.perf_counter()
        try:
            step()
            timer.sync()
        except Exception as e:  # a model that cannot train: the other still runs
            errors[name] = f"{type(e).__name__}: {e}"[:200]
            del steps[name]
            continue
        first[name] = [time.perf_counter() - t0]
    round_s = max(sum(t[0] for t in first.values()), 1e-9)
    warmup = max(1, warmup - 1)
    fit = min(reps, int((deadline - time.perf_counter()) / round_s) - warmup)
    if fit < 1:
        result.note = "one step each, the first (time budget): includes warm-up costs"
        return first
    if fit < reps:
        result.note = f"{fit} timed steps each instead of {reps} (time budget)"
    return measure(timer, steps, warmup, fit, errors)


def measure_frozen_inference(
    device: torch.device,
    name: str = "resnet50",
    batch: int = 8,
    resolution: int = 112,
    warmup: int = 2,
    reps: int = 5,
    deadline: Optional[float] = None,
) -> E2EResult:
    """Inference (eval, no_grad) under ``torch.compile`` with Inductor's freezing: stock vs
    ``convert_model``. Frozen, Inductor folds each eval batch norm into the convolution
    before it; the converted model must trace to the same foldable graph, so it runs at
    least as fast as the stock one. The first (warm-up) call of each compiles it.
    """
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    stock, source = resnet.build(name)
    result = E2EResult(name, source, batch, resolution, "fp32", "nchw")
    result.kind = "eval under torch.compile with freezing"
    fused = copy.deepcopy(stock)
    out = bnfused.convert_model(fused, fuse_activations=True)
    models = {"stock": stock, "bnfused": out if out is not None else fused}
    images = torch.randn(batch, 3, resolution, resolution, device=device)
    errors: Dict[str, str] = {}
    with torch.no_grad(), inductor_config.patch(freezing=True):
        steps = {}
        for key, model in models.items():
            compiled = torch.compile(model.to(device).eval())
            steps[key] = lambda compiled=compiled: compiled(images)
        timer = Timer(device, cpu_sample_s=0.0)
        if deadline is None:
            times = measure(timer, steps, warmup, reps, errors)
        else:
            times = _measure_within(steps, timer, warmup, reps, deadline, errors, result)
    for key, samples in times.items():
        result.images_per_s[key] = batch / median(samples)
    if errors:
        result.note = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def e2e_lines(result: E2EResult) -> list:
    """Markdown/terminal lines describing one end-to-end result."""
    what = (
        f"{result.model} ({result.source}) {result.kind}, batch {result.batch}, "
        f"{result.resolution}x{result.resolution}, {result.dtype}, {result.layout}"
        + (", SGD" if result.kind == "training step" else "")
    )
    lines = [f"- {what}: stock {result.images_per_s.get('stock', float('nan')):.1f} images/s"]
    if "bnfused" in result.images_per_s:
        speed = result.images_per_s["bnfused"] / result.images_per_s["stock"]
        backend = f", backend {result.backend}" if result.backend else ""
        lines[0] += (
            f", bnfused.convert_model(fuse_activations=True) "
            f"{result.images_per_s['bnfused']:.1f} images/s (x{speed:.2f}{backend})"
        )
    if result.note:
        lines.append(f"- note: {result.note}")
    return lines
