"""Train only BatchNorm (Frankle, Schwab & Morcos, ICLR 2021) with bnfused layers.

A CIFAR-style ResNet (depth 6n+2, width w, 2w, 4w) is trained from one random
init in three settings: all parameters ("full"), only the BatchNorm weight and
bias ("bn"), and only the output layer on random features ("output"). BatchNorm
weights start uniform in [0, 1) in every setting, as in the paper, so the three
runs share their random convolutions. Prints accuracy per epoch, a final
table beside the paper's CIFAR-10 numbers, the share of BatchNorm channels
whose |weight| ends below a threshold (features switched off) and a histogram
of |weight|; writes JSON and a PNG under benchmarks/results/.

    python benchmarks/bn_only.py              # ResNet-8 on procedural shapes, a few minutes
    python benchmarks/bn_only.py --quick      # about a minute
    python benchmarks/bn_only.py --cifar10 ~/data/cifar-10-batches-py --depth 20 --epochs 30
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bnfused  # noqa: E402
from bn_only_data import load_cifar10, shapes_dataset, standardize  # noqa: E402
from cifar_resnet import CifarResNet, build_model  # noqa: E402,F401

SETTINGS = ("full", "bn", "output")
SETTING_NAMES = {"full": "all parameters", "bn": "BatchNorm only",
                 "output": "output layer only", "bn+output": "BatchNorm + output layer"}
# Frankle et al. 2021, CIFAR-10, BatchNorm-only test accuracy (%). 82 is stated in
# the abstract (ResNet-866); the other two are approximate readings of the paper's figures.
PAPER_BN_ONLY = {"ResNet-14": "~48", "ResNet-110": "~70", "ResNet-866": "82"}


def trainable_for(model: nn.Module, setting: str) -> List[nn.Parameter]:
    """Set ``requires_grad`` for a setting and return the parameters to optimize."""
    if setting == "full":
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
    return torch.cat([m.weight.detach().abs().float().flatten() for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      and m.weight is not None])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (%) in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / max(1, len(x))


def _progress(label: str, done: int, total: int, loss: float, start: float) -> None:
    width = 24
    filled = width * done // max(1, total)
    line = (f"\r  {label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"loss {loss:.3f}  {time.time() - start:5.1f}s")
    sys.stderr.write(line)
    sys.stderr.flush()


def train_setting(setting: str, data: Dict[str, torch.Tensor], depth: int = 8, width: int = 16,
                  epochs: int = 6, batch_size: int = 128, lr: float = 0.1,
                  weight_decay: float = 1e-4, seed: int = 0, max_steps: Optional[int] = None,
                  threshold: float = 0.05, progress: bool = True, log: bool = True,
                  return_model: bool = False):
    """Train one setting; returns its history, final accuracy and BatchNorm |weight| statistics.

    ``data``: ``train_x`` float ``(N, 3, H, W)``, ``train_y`` int64 ``(N,)``,
    ``test_x``, ``test_y``. SGD (momentum 0.9, nesterov) with a one-cycle
    learning rate; weight decay on the trained parameters. ``max_steps`` stops
    early (smoke runs). ``progress`` draws a text progress bar on stderr,
    ``log`` prints a line per epoch; ``return_model`` returns ``(result, model)``.
    """
    model = build_model(depth, width, seed)
    gamma_init = bn_weights(model)
    params = trainable_for(model, setting)
    count = sum(p.numel() for p in params)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = (len(data["train_x"]) + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps,
                                                                  epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total),
                                                pct_start=0.25)
    gen = torch.Generator().manual_seed(seed + 1)
    history, step, start = [], 0, time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data["train_x"]), generator=gen)
        loss_sum, seen = 0.0, 0
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[i * batch_size:(i + 1) * batch_size]
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
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
                        "test_acc": acc, "seconds": time.time() - start})
        if progress:
            sys.stderr.write("\n")
        if log:
            print(f"  {setting:<10} epoch {epoch + 1}/{epochs}  loss {loss_sum / max(1, seen):.3f}"
                  f"  test acc {acc:5.1f}%", flush=True)
        if step >= total:
            break
    gamma = bn_weights(model)
    result = {"setting": setting, "trainable_params": count,
            "total_params": sum(p.numel() for p in model.parameters()),
            "history": history, "test_acc": history[-1]["test_acc"] if history else None,
            "seconds": time.time() - start, "threshold": threshold,
            "share_off_init": float((gamma_init < threshold).float().mean()),
            "share_off": float((gamma < threshold).float().mean()),
            "bn_abs_weight": gamma.tolist()}
    return (result, model) if return_model else result


def histogram_text(values: torch.Tensor, bins: int = 10, top: float = 1.5) -> List[str]:
    """Rows of a text histogram of ``values`` over [0, top] (the last bin takes the rest)."""
    counts = torch.histc(values.clamp(max=top), bins=bins, min=0.0, max=top)
    peak = max(1.0, float(counts.max()))
    step = top / bins
    return [f"    [{i * step:4.2f},{(i + 1) * step:4.2f}{')' if i < bins - 1 else '+'} "
            f"{'#' * int(round(30 * float(c) / peak)):<30} {int(c)}" for i, c in enumerate(counts)]


def plot(results: List[dict], path: str) -> Optional[str]:
    """Accuracy per epoch and |BN weight| histograms as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        ax1.plot([h["epoch"] for h in r["history"]], [h["test_acc"] for h in r["history"]],
                 marker="o", label=SETTING_NAMES[r["setting"]])
        if r["setting"] != "output":
            ax2.hist(r["bn_abs_weight"], bins=40, alpha=0.5, label=SETTING_NAMES[r["setting"]])
    ax1.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy per epoch")
    ax1.legend()
    ax2.axvline(results[0]["threshold"], color="k", linestyle="--", linewidth=1)
    ax2.set(xlabel="|BatchNorm weight|", ylabel="channels", title="|weight| after training")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_data(args) -> Dict[str, torch.Tensor]:
    if args.cifar10:
        train_x, train_y, test_x, test_y = load_cifar10(args.cifar10)
        if args.train_size:
            train_x, train_y = train_x[:args.train_size], train_y[:args.train_size]
        if args.test_size:
            test_x, test_y = test_x[:args.test_size], test_y[:args.test_size]
    else:
        train_x, train_y = shapes_dataset(args.train_size, args.image_size, seed=args.seed)
        test_x, test_y = shapes_dataset(args.test_size, args.image_size, seed=args.seed + 10_000)
    train_x, test_x = standardize(train_x, test_x)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="about a minute: less data, 2 epochs")
    p.add_argument("--cifar10", metavar="PATH", help="local CIFAR-10 (python pickle batches)")
    p.add_argument("--depth", type=int, default=8, help="6n+2 (default 8; 20 is ResNet-20)")
    p.add_argument("--width", type=int, default=16, help="channels of stage 1 (default 16)")
    p.add_argument("--epochs", type=int, default=None, help="default 6 (--quick 2)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--train-size", type=int, default=None,
                   help="shapes: default 4000 (--quick 2000); CIFAR-10: a prefix, default all")
    p.add_argument("--test-size", type=int, default=None,
                   help="shapes: default 1000 (--quick 500); CIFAR-10: default all")
    p.add_argument("--image-size", type=int, default=16, help="shapes only (default 16)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma list of full, bn, output, bn+output")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="|BN weight| below this counts as a feature switched off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 6
    if not args.cifar10:
        args.train_size = args.train_size or (2000 if args.quick else 4000)
        args.test_size = args.test_size or (500 if args.quick else 1000)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTING_NAMES:
            p.error(f"unknown setting {s!r}; choose from {', '.join(SETTING_NAMES)}")

    torch.manual_seed(args.seed)
    data = load_data(args)
    dataset = "cifar10" if args.cifar10 else f"shapes{args.image_size}"
    print(f"bn_only: ResNet-{args.depth} width {args.width} on {dataset} "
          f"({len(data['train_x'])} train / {len(data['test_x'])} test), {args.epochs} epochs, "
          f"backend {bnfused.backend.choose(torch.device('cpu'))}, seed {args.seed}", flush=True)
    results = []
    for s in settings:
        results.append(train_setting(s, data, args.depth, args.width, args.epochs,
                                     args.batch_size, args.lr, args.weight_decay, args.seed,
                                     threshold=args.threshold, progress=not args.no_progress))

    print(f"\nResNet-{args.depth}, {dataset}: test accuracy after {args.epochs} epochs")
    print(f"  {'setting':<26}{'trained params':>15}{'test acc':>10}"
          f"{'|w|<' + format(args.threshold, 'g') + ' init':>14}{'end':>7}{'time':>8}")
    for r in results:
        print(f"  {SETTING_NAMES[r['setting']]:<26}{r['trainable_params']:>15,}"
              f"{r['test_acc']:>9.1f}%{100 * r['share_off_init']:>13.1f}%"
              f"{100 * r['share_off']:>6.1f}%{r['seconds']:>7.0f}s")
    print("  paper, CIFAR-10, BatchNorm only (Frankle et al. 2021): " +
          ", ".join(f"{k} {v}%" for k, v in PAPER_BN_ONLY.items()) +
          "; they find about a third of the features switched off")
    for r in results:
        if r["setting"] in ("bn", "bn+output", "full"):
            print(f"\n  |BatchNorm weight| after training, {SETTING_NAMES[r['setting']]}:")
            print("\n".join(histogram_text(torch.tensor(r["bn_abs_weight"]))))

    os.makedirs(args.out, exist_ok=True)
    stem = "bn_only_quick" if args.quick else "bn_only"
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "commit": _commit(), "threads": torch.get_num_threads(),
            "backend": bnfused.backend.choose(torch.device("cpu")), "dataset": dataset,
            "paper_bn_only_cifar10": PAPER_BN_ONLY, "args": vars(args)}
    json_path = os.path.join(args.out, stem + ".json")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"\nwrote {json_path}")
    png = plot(results, os.path.join(args.out, stem + ".png"))
    print(f"wrote {png}" if png else "matplotlib is not installed: skipped the plot "
          "(pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
