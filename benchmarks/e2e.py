"""End-to-end: images/s of one ResNet training step, stock vs ``bnfused.convert_model``."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import nn

import bnfused

from . import models
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


def _step(model: nn.Module, images, labels, opt, amp_dtype: Optional[torch.dtype]):
    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
    return run


def measure_e2e(device: torch.device, name: str = "resnet50", batch: int = 8,
                resolution: int = 64, amp_dtype: Optional[torch.dtype] = None,
                channels_last: bool = False, warmup: int = 2, reps: int = 5,
                deadline: Optional[float] = None) -> E2EResult:
    """Training steps (SGD, cross-entropy, random data) of ``name``: stock and converted.

    ``amp_dtype`` runs the forward under ``torch.autocast``; ``channels_last``
    converts model and images. The converted model starts from the stock weights.
    With a ``deadline`` (a ``time.perf_counter()`` value), the first step of each
    model is timed and ``reps`` lowered (to one at least) so the rest fits.
    """
    torch.manual_seed(0)
    stock, source = models.build(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    stock = stock.to(device, memory_format=fmt)
    result = E2EResult(name, source, batch, resolution,
                       "fp32" if amp_dtype is None else f"autocast {amp_dtype}".replace(
                           "torch.", ""), "channels_last" if channels_last else "nchw")
    images = torch.randn(batch, 3, resolution, resolution, device=device).contiguous(
        memory_format=fmt)
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
    steps = {k: _step(m.train(), images, labels,
                      torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), amp_dtype)
             for k, m in contenders.items()}
    errors: Dict[str, str] = {}
    timer = Timer(device, cpu_sample_s=0.0)
    if deadline is not None:
        wanted = reps
        reps, warmup = _fit_reps(steps, timer, warmup, reps, deadline, errors)
        if reps < wanted:
            result.note = f"{reps} timed steps each instead of {wanted} (time budget)"
    times = measure(timer, steps, warmup, reps, errors)
    for k, samples in times.items():
        result.images_per_s[k] = batch / median(samples)
    if errors:
        result.note = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def _fit_reps(steps, timer: Timer, warmup: int, reps: int, deadline: float,
              errors: Dict[str, str]):
    """Time one step of each model (the first warm-up call); (reps, warmup left) that fit."""
    round_s = 0.0
    for name, step in list(steps.items()):
        t0 = time.perf_counter()
        try:
            step()
            timer.sync()
        except Exception as e:      # measure() reports the same error again
            errors[name] = f"{type(e).__name__}: {e}"[:200]
            del steps[name]
            continue
        round_s += time.perf_counter() - t0
    warmup = max(1, warmup - 1)
    fit = int((deadline - time.perf_counter()) / max(round_s, 1e-9)) - warmup
    return max(1, min(reps, fit)), warmup


def e2e_lines(result: E2EResult) -> list:
    """Markdown/terminal lines describing one end-to-end result."""
    what = (f"{result.model} ({result.source}) training step, batch {result.batch}, "
            f"{result.resolution}x{result.resolution}, {result.dtype}, {result.layout}, SGD")
    lines = [f"- {what}: stock {result.images_per_s.get('stock', float('nan')):.1f} images/s"]
    if "bnfused" in result.images_per_s:
        speed = result.images_per_s["bnfused"] / result.images_per_s["stock"]
        lines[0] += (f", bnfused.convert_model(fuse_activations=True) "
                     f"{result.images_per_s['bnfused']:.1f} images/s (x{speed:.2f}, "
                     f"backend {result.backend})")
    if result.note:
        lines.append(f"- note: {result.note}")
    return lines
