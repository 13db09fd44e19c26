"""Where a run happened: device name and slug, versions, git commit, date."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from typing import Dict

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "device"


def git_commit() -> str:
    """Short commit hash, with "+dirty" when tracked files differ from it.

    A copied tree without ``.git`` reports ``$BNFUSED_COMMIT`` (else "unknown")."""
    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    fallback = os.environ.get("BNFUSED_COMMIT", "unknown")
    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        if not commit:
            return fallback
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no")
                         else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "not installed"


def describe(device: torch.device, threads: int) -> Dict[str, str]:
    """Ordered fields for report headers and CSV metadata."""
    import bnfused

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
        "commit": git_commit(),
        "torch": torch.__version__,
        "triton": triton_version(),
        "python": sys.version.split()[0],
        "bnfused backends": ", ".join(available),
    }
