"""A run's header fields: the package's environment facts plus what only a run has.

Versions, CPU name and git commit come from :mod:`bnfused.tools.environment` (the
``python -m bnfused`` report); this adds the device as the run uses it, its file-name
slug, the thread count and the date.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from typing import Dict

import torch

import bnfused
from bnfused.tools.environment import cpu_name, git_commit, triton_version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "device"


def describe(device: torch.device, threads: int) -> Dict[str, str]:
    """Ordered fields for report headers and CSV metadata."""
    name = device_name(device)
    now = datetime.datetime.now()
    if device.type == "cuda":
        device_slug = slug(name)
        where = f"{name} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} visible)"
    else:
        device_slug = "cpu-" + slug(name) + f"-{threads}t"
        where = f"{name}, {threads} threads (torch.set_num_threads), {os.cpu_count()} cores seen"
    available = [k for k, v in bnfused.backends().items() if v["available"]]
    return {
        "device": where,
        "device_slug": device_slug,
        "date": now.strftime("%Y-%m-%d %H:%M:%S"),
        "stamp": now.strftime("%Y-%m-%d-%H%M"),
        "commit": git_commit(REPO),
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": sys.version.split()[0],
        "bnfused backends": ", ".join(available),
    }
