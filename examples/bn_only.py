"""Train only BatchNorm (Frankle, Schwab & Morcos, ICLR 2021) with bnfused layers.

A CIFAR-style ResNet (depth 6n+2, width w, 2w, 4w; ``examples/resnet.py``) is trained from one random
init in up to four settings: all parameters ("all"), only the BatchNorm weight
and bias ("bn", the paper's setting: the output layer stays random too), the
BatchNorm parameters and the output layer ("bn+output"), and only the output
layer, a linear classifier on the random features ("output"). BatchNorm weights
start uniform in [0, 1) and biases at 0 in every setting, as in the paper, so
all runs share their random convolutions. Prints accuracy per epoch, a final
table beside the paper's CIFAR-10 numbers, the share of BatchNorm channels
whose |weight| is below a threshold (features switched off) at init and at
the end, and a histogram of |weight|; writes JSON and a PNG under
examples/results/.

    python -m examples.bn_only              # ResNet-14 on 16x16 digits, a few minutes
    python -m examples.bn_only --quick      # about a minute
    python -m examples.bn_only --depth 32 --settings bn,bn+output,output
    python -m examples.bn_only --dataset fashion-mnist --depth 8,20 --train-size 15000 --epochs 5
    python -m examples.bn_only --dataset cifar10 --data ~/data/cifar-10-batches-py --depth 20
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import bnfused
from examples.images import (
    FASHION_MNIST_DIR,
    digits_dataset,
    load_cifar10,
    load_fashion_mnist,
    shapes_dataset,
    standardize,
)
from examples.resnet import build_model

SETTINGS = ("all", "bn", "bn+output", "output")
SETTING_NAMES = {
    "all": "all parameters",
    "bn": "BatchNorm only",
    "bn+output": "BatchNorm + output layer",
    "output": "output layer only",
}
SETTING_ALIASES = {"full": "all"}
# Frankle et al. 2021, CIFAR-10, BatchNorm-only test accuracy (%). 82 is stated in
# the abstract (ResNet-866); the other two are approximate readings of the paper's figures.
PAPER_BN_ONLY = {"ResNet-14": "~48", "ResNet-110": "~70", "ResNet-866": "82"}
DATASETS = ("digits", "procedural", "fashion-mnist", "cifar10")
# --quick on the large sets: a training prefix of this size unless --train-size says otherwise.
QUICK_TRAIN_SIZE = 5000


def trainable_for(model: nn.Module, setting: str) -> List[nn.Parameter]:
    """Set ``requires_grad`` for a setting and return the parameters to optimize."""
    setting = SETTING_ALIASES.get(setting, setting)
    if setting == "all":
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())
    if setting == "bn":
        return bnfused.train_only_batchnorm(model).params
    if setting == "bn+output":
        return bnfused.train_only_batchnorm(model, train_classifier=True).params
    if setting == "output":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.fc.parameters():
            p.requires_grad_(True)
        return list(model.fc.parameters())
    raise ValueError(f"unknown setting {setting!r}; choose from {sorted(SETTING_NAMES)}")


def bn_weights(model: nn.Module) -> torch.Tensor:
    """|weight| of every BatchNorm channel in the model, concatenated (float32)."""
    return torch.cat(
        [
            m.weight.detach().abs().float().flatten()
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        ]
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (%) in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return 100.0 * correct / max(1, len(x))


def _progress(label: str, done: int, total: int, loss: float, start: float) -> None:
    width = 24
    filled = width * done // max(1, total)
    line = (
        f"\r  {label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"loss {loss:.3f}  {time.time() - start:5.1f}s"
    )
    sys.stderr.write(line)
    sys.stderr.flush()


def train_setting(
    setting: str,
    data: Dict[str, torch.Tensor],
    depth: int = 14,
    width: int = 16,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1.0,
    weight_decay: float = 5e-4,
    seed: int = 0,
    max_steps: Optional[int] = None,
    threshold: float = 0.05,
    progress: bool = True,
    log: bool = True,
    return_model: bool = False,
):
    """Train one setting; returns its history, final accuracy and BatchNorm |weight| statistics.

    ``data``: ``train_x`` float ``(N, C, H, W)``, ``train_y`` int64 ``(N,)``,
    ``test_x``, ``test_y``. SGD (momentum 0.9, nesterov) with a one-cycle
    learning rate; weight decay on the trained parameters. ``max_steps`` stops
    early (smoke runs). ``progress`` draws a text progress bar on stderr,
    ``log`` prints a line per epoch; ``return_model`` returns ``(result, model)``.
    """
    setting = SETTING_ALIASES.get(setting, setting)
    model = build_model(depth, width, seed, in_channels=data["train_x"].shape[1])
    gamma_init = bn_weights(model)
    params = trainable_for(model, setting)
    count = sum(p.numel() for p in params)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = (len(data["train_x"]) + batch_size - 1) // batch_size
    total = (
        epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, total), pct_start=0.25
    )
    gen = torch.Generator().manual_seed(seed + 1)
    history, step, start = [], 0, time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data["train_x"]), generator=gen)
        loss_sum, seen = 0.0, 0
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(data["train_x"][idx]), data["train_y"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(idx), seen + len(idx)
            if progress:
                _progress(setting, i + 1, steps_per_epoch, loss_sum / seen, start)
        acc = evaluate(model, data["test_x"], data["test_y"])
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(1, seen),
                "test_acc": acc,
                "seconds": time.time() - start,
            }
        )
        if progress:
            sys.stderr.write("\n")
        if log:
            print(
                f"  {setting:<10} epoch {epoch + 1}/{epochs}  loss {loss_sum / max(1, seen):.3f}"
                f"  test acc {acc:5.1f}%",
                flush=True,
            )
        if step >= total:
            break
    gamma = bn_weights(model)
    result = {
        "setting": setting,
        "depth": depth,
        "lr": lr,
        "trainable_params": count,
        "total_params": sum(p.numel() for p in model.parameters()),
        "history": history,
        "test_acc": history[-1]["test_acc"] if history else None,
        "seconds": time.time() - start,
        "threshold": threshold,
        "share_off_init": float((gamma_init < threshold).float().mean()),
        "share_off": float((gamma < threshold).float().mean()),
        "bn_abs_weight": gamma.tolist(),
        "bn_abs_weight_init": gamma_init.tolist(),
    }
    return (result, model) if return_model else result


def histogram_text(values: torch.Tensor, bins: int = 10, top: float = 1.5) -> List[str]:
    """Rows of a text histogram of ``values`` over [0, top] (the last bin takes the rest)."""
    counts = torch.histc(values.clamp(max=top), bins=bins, min=0.0, max=top)
    peak = max(1.0, float(counts.max()))
    step = top / bins
    return [
        f"    [{i * step:4.2f},{(i + 1) * step:4.2f}{')' if i < bins - 1 else '+'} "
        f"{'#' * round(30 * float(c) / peak):<30} {int(c)}"
        for i, c in enumerate(counts)
    ]


def plot(results: List[dict], path: str, title: str = "") -> Optional[str]:
    """Accuracy per epoch and |BN weight| histograms as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    depths = sorted({r["depth"] for r in results})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5 + 0.35 * len(results) / len(depths)))
    bins = [i * 0.05 for i in range(31)]  # [0, 1.5] in steps of 0.05: bin 0 is "switched off"
    colors = {"all": "tab:blue", "bn": "tab:orange", "bn+output": "tab:green", "output": "tab:red"}
    styles = dict(zip(depths, ["-", "--", ":", "-."] * len(depths)))

    def share_hist(values, **kw):  # histogram of shares, so depths with more channels compare
        ax2.hist(
            [min(v, 1.5) for v in values], bins=bins, weights=[1 / len(values)] * len(values), **kw
        )

    first = results[0]
    share_hist(
        first["bn_abs_weight_init"],
        color="0.82",
        label=f"at init, U[0, 1): {100 * first['share_off_init']:.0f}% < {first['threshold']:g}",
    )
    for r in results:
        label = f"ResNet-{r['depth']}, {SETTING_NAMES[r['setting']]}"
        ax1.plot(
            [h["epoch"] for h in r["history"]],
            [h["test_acc"] for h in r["history"]],
            marker="o",
            markersize=3,
            color=colors[r["setting"]],
            linestyle=styles[r["depth"]],
            label=f"{label}: {r['test_acc']:.1f}%",
        )
        if r["setting"] in ("bn", "bn+output"):
            share_hist(
                r["bn_abs_weight"],
                histtype="step",
                linewidth=1.5,
                color=colors[r["setting"]],
                linestyle=styles[r["depth"]],
                label=f"{label}: {100 * r['share_off']:.0f}% < {r['threshold']:g}",
            )
    ax1.axhline(10, color="0.6", linestyle=":", linewidth=1)
    ax1.set(
        xlabel="epoch",
        ylabel="test accuracy (%)",
        title="test accuracy per epoch (dotted: chance)",
        ylim=(0, 100),
    )
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Below the axes, one column per depth: inside, it would cover the curves.
    ax1.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=len(depths),
        title="final test accuracy",
        title_fontsize=8,
        frameon=False,
    )
    ax2.axvline(first["threshold"], color="k", linestyle="--", linewidth=1)
    ax2.set(
        xlabel="|BatchNorm weight| (values above 1.5 in the last bin)",
        ylabel="share of channels",
        title="|BatchNorm weight| after training",
    )
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.abspath(__file__)),
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_data(args) -> Dict[str, torch.Tensor]:
    """Standardized train/test tensors for ``args.dataset``; may fall back to procedural."""
    if args.dataset == "cifar10":
        train_x, train_y, test_x, test_y = load_cifar10(args.data)
    elif args.dataset == "fashion-mnist":
        train_x, train_y, test_x, test_y = load_fashion_mnist(args.data)
    elif args.dataset == "digits":
        try:
            train_x, train_y, test_x, test_y = digits_dataset(args.image_size, seed=args.seed)
        except ImportError:
            print(
                "bn_only: scikit-learn is not installed, so its handwritten digits are not "
                "available; using the procedural shapes instead (pip install scikit-learn "
                "for the default dataset)",
                file=sys.stderr,
                flush=True,
            )
            args.dataset = "procedural"
    if args.dataset == "procedural":
        train_x, train_y = shapes_dataset(args.train_size or 4000, args.image_size, seed=args.seed)
        test_x, test_y = shapes_dataset(
            args.test_size or 1000, args.image_size, seed=args.seed + 10_000
        )
    if args.train_size:
        train_x, train_y = train_x[: args.train_size], train_y[: args.train_size]
    if args.test_size:
        test_x, test_y = test_x[: args.test_size], test_y[: args.test_size]
    train_x, test_x = standardize(train_x, test_x)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def _machine() -> str:
    """CPU model and logical core count, e.g. ``AMD EPYC 7B13, 2 logical cores``."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def build_parser() -> argparse.ArgumentParser:
    """The command line of the experiment."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="about a minute on digits: ResNet-8, 4 epochs (unless given); on "
        f"fashion-mnist and cifar10 also {QUICK_TRAIN_SIZE} training images",
    )
    p.add_argument(
        "--dataset",
        choices=DATASETS,
        default=None,
        help="digits (default: scikit-learn's 8x8 handwritten digits, upsampled), "
        "procedural (shapes generated from a seed), fashion-mnist (28x28 IDX "
        f"files, default --data {FASHION_MNIST_DIR}) or cifar10 (needs --data)",
    )
    p.add_argument(
        "--data",
        metavar="PATH",
        help="folder of the fashion-mnist IDX files or of the cifar10 python "
        "pickle batches (cifar-10-batches-py, or its parent)",
    )
    p.add_argument("--cifar10", metavar="PATH", help="the same as --dataset cifar10 --data PATH")
    p.add_argument(
        "--depth", default=None, help="6n+2, or a comma list of them (default 14,32; --quick 8)"
    )
    p.add_argument("--width", type=int, default=16, help="channels of stage 1 (default 16)")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (--quick 4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--lr",
        type=float,
        default=1.0,
        help="peak of the one-cycle schedule for bn, bn+output, output (default 1.0)",
    )
    p.add_argument(
        "--lr-all",
        type=float,
        default=0.1,
        help="peak learning rate when all parameters train (default 0.1)",
    )
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="a prefix of the training set (procedural: its size, default 4000)",
    )
    p.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="a prefix of the test set (procedural: its size, default 1000)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=16,
        help="digits and procedural (default 16; digits are 8x8, upsampled)",
    )
    p.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help="comma list of " + ", ".join(SETTING_NAMES) + " (default: all four)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help="|BN weight| below this counts as a feature switched off",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    )
    p.add_argument(
        "--stem",
        default=None,
        help="output file name without extension (default bn_only on digits, "
        "bn_only_<dataset> otherwise, e.g. bn_only_fashion_mnist; _quick "
        "appended with --quick)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None):
    """Parsed and checked arguments, with the defaults that depend on others filled in.

    Returns ``(args, depths, settings)``.
    """
    p = build_parser()
    args = p.parse_args(argv)
    if args.cifar10:
        if args.dataset not in (None, "cifar10") or (args.data and args.data != args.cifar10):
            p.error("--cifar10 PATH means --dataset cifar10 --data PATH; give one or the other")
        args.dataset, args.data = "cifar10", args.cifar10
    if args.dataset is None:
        args.dataset = "digits"
    if args.dataset == "cifar10" and not args.data:
        p.error("--dataset cifar10 needs --data PATH (a local copy; nothing is downloaded)")
    if args.dataset == "fashion-mnist" and not args.data:
        args.data = FASHION_MNIST_DIR
    if args.data and args.dataset not in ("fashion-mnist", "cifar10"):
        p.error(f"--data is for --dataset fashion-mnist or cifar10, not {args.dataset}")
    if args.quick and args.train_size is None and args.dataset in ("fashion-mnist", "cifar10"):
        args.train_size = QUICK_TRAIN_SIZE
    if args.depth is None:
        args.depth = "8" if args.quick else "14,32"
    try:
        depths = [int(d) for d in str(args.depth).split(",") if d.strip()]
    except ValueError:
        p.error(f"--depth takes integers 6n+2 separated by commas, got {args.depth!r}")
    for d in depths:
        if d < 8 or (d - 2) % 6:
            p.error(f"--depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {d}")
    if args.epochs is None:
        args.epochs = 4 if args.quick else 10
    settings = [
        SETTING_ALIASES.get(s.strip(), s.strip()) for s in args.settings.split(",") if s.strip()
    ]
    for s in settings:
        if s not in SETTING_NAMES:
            p.error(f"unknown setting {s!r}; choose from {', '.join(SETTING_NAMES)}")
    if args.stem is None:
        args.stem = (
            "bn_only" if args.dataset == "digits" else "bn_only_" + args.dataset.replace("-", "_")
        )
        args.stem += "_quick" if args.quick else ""
    return args, depths, settings


def dataset_label(args) -> str:
    """The dataset's name for tables and titles."""
    return {
        "digits": f"digits {args.image_size}x{args.image_size}",
        "procedural": f"procedural shapes {args.image_size}x{args.image_size}",
        "fashion-mnist": "Fashion-MNIST 28x28",
        "cifar10": "CIFAR-10",
    }[args.dataset]


def print_report(results: List[dict], dataset: str, epochs: int, threshold: float) -> None:
    """The final table beside the paper's numbers, and |BN weight| text histograms."""
    print(f"\n{dataset}: test accuracy after {epochs} epochs")
    print(
        f"  {'model':<11}{'setting':<26}{'trained params':>15}{'peak lr':>8}{'test acc':>10}"
        f"{'|w|<' + format(threshold, 'g') + ' init':>14}{'end':>7}{'time':>8}"
    )
    for r in results:
        print(
            f"  {'ResNet-' + str(r['depth']):<11}{SETTING_NAMES[r['setting']]:<26}"
            f"{r['trainable_params']:>15,}{r['lr']:>8g}"
            f"{r['test_acc']:>9.1f}%{100 * r['share_off_init']:>13.1f}%"
            f"{100 * r['share_off']:>6.1f}%{r['seconds']:>7.0f}s"
        )
    print(
        "  for comparison, the paper on CIFAR-10 (not this dataset), BatchNorm only "
        "(Frankle et al. 2021): "
        + ", ".join(f"{k} {v}%" for k, v in PAPER_BN_ONLY.items())
        + "; about a third of the features switched off"
    )
    for r in results:
        if r["setting"] in ("bn", "bn+output", "all"):
            print(
                f"\n  |BatchNorm weight| after training, ResNet-{r['depth']}, "
                f"{SETTING_NAMES[r['setting']]}:"
            )
            print("\n".join(histogram_text(torch.tensor(r["bn_abs_weight"]))))


def markdown_report(results: List[dict], meta: dict) -> str:
    """The run's settings and its table beside the paper's CIFAR-10 numbers, as markdown."""
    a, t = meta["args"], meta["args"]["threshold"]
    lines = [
        f"# Training only BatchNorm: {meta['dataset']}",
        "",
        f"`{meta['command']}`",
        "",
        f"- data: {meta['dataset']}, {meta['train_size']:,} training images "
        f"({meta['train_subset']}), {meta['test_size']:,} test images",
        f"- models: {', '.join(f'ResNet-{d}' for d in meta['depths'])}, width {a['width']} "
        f"(stages {a['width']}, {2 * a['width']}, {4 * a['width']} channels), one random "
        f"init per depth shared by all settings (seed {a['seed']})",
        f"- training: {a['epochs']} epochs, batch {a['batch_size']}, SGD nesterov momentum 0.9, "
        f"one-cycle peak lr {a['lr_all']:g} (all parameters) / {a['lr']:g} (the others), "
        f"weight decay {a['weight_decay']:g}, no augmentation",
        f"- run: {meta['date']}, commit {meta['commit']}, torch {meta['torch']}, bnfused "
        f"`{meta['backend']}` backend, {meta['threads']} thread{'s' * (meta['threads'] != 1)} "
        f"on {meta['machine']}; "
        f"wall time {meta['wall_seconds'] / 60:.1f} min",
        "",
        f"| model | setting | trained parameters | test accuracy | &#124;gamma&#124; < {t:g} "
        "at init | at the end |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        acc = f"{r['test_acc']:.1f}%"
        acc = f"**{acc}**" if r["setting"] == "bn" else acc
        lines.append(
            f"| ResNet-{r['depth']} | {SETTING_NAMES[r['setting']]} | "
            f"{r['trainable_params']:,} | {acc}"
            f" | {100 * r['share_off_init']:.1f}% | {100 * r['share_off']:.1f}% |"
        )
    for name, acc in PAPER_BN_ONLY.items():
        lines.append(
            f"| paper, CIFAR-10: {name} | BatchNorm only | | {acc}% | | "
            f"{'about a third switched off' if name == 'ResNet-866' else ''} |"
        )
    lines += [
        "",
        "Chance is 10%. The paper's rows are CIFAR-10, 160 epochs on the whole "
        "training set (Frankle, Schwab & Morcos, ICLR 2021): not this dataset or budget.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    wall_start, commit = time.time(), _commit()  # the commit that trains, read before training
    args, depths, settings = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_data(args)
    dataset = dataset_label(args)
    names = ", ".join(f"ResNet-{d}" for d in depths)
    print(
        f"bn_only: {names} width {args.width} on {dataset} "
        f"({len(data['train_x'])} train / {len(data['test_x'])} test), {args.epochs} epochs, "
        f"backend {bnfused.op.backend.choose(torch.device('cpu'))}, seed {args.seed}",
        flush=True,
    )
    results = []
    for depth in depths:
        for s in settings:
            lr = args.lr_all if s == "all" else args.lr
            results.append(
                train_setting(
                    s,
                    data,
                    depth,
                    args.width,
                    args.epochs,
                    args.batch_size,
                    lr,
                    args.weight_decay,
                    args.seed,
                    threshold=args.threshold,
                    progress=not args.no_progress,
                )
            )
    print_report(results, dataset, args.epochs, args.threshold)

    os.makedirs(args.out, exist_ok=True)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "examples.bn_only", *argv_used]),
        "torch": torch.__version__,
        "commit": commit,
        "threads": torch.get_num_threads(),
        "machine": _machine(),
        "backend": bnfused.op.backend.choose(torch.device("cpu")),
        "dataset": dataset,
        "depths": depths,
        "settings": settings,
        "train_size": len(data["train_x"]),
        "test_size": len(data["test_x"]),
        "train_subset": (
            "the first images of the training set" if args.train_size else "the whole training set"
        ),
        "wall_seconds": time.time() - wall_start,
        "paper_bn_only_cifar10": PAPER_BN_ONLY,
        "args": vars(args),
    }
    json_path = os.path.join(args.out, args.stem + ".json")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    md_path = os.path.join(args.out, args.stem + ".md")
    with open(md_path, "w") as f:
        f.write(markdown_report(results, meta))
    print(f"\nwrote {json_path}\nwrote {md_path}")
    title = (
        f"{names}, width {args.width}, {dataset}, {len(data['train_x']):,} "
        f"training images, {args.epochs} epochs, seed {args.seed}"
    )
    png = plot(results, os.path.join(args.out, args.stem + ".png"), title)
    print(
        f"wrote {png}"
        if png
        else "matplotlib is not installed: skipped the plot (pip install matplotlib)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
