"""Test-time adaptation with TENT (Wang et al., ICLR 2021) on shifted handwritten digits.

Trains a small CIFAR-style ResNet (bnfused layers) on half of scikit-learn's
8 x 8 handwritten digits, then evaluates it on the other half with lower
contrast and Gaussian noise, three ways: as trained (running statistics), with
every BatchNorm on the test batch's statistics, and after adapting the
BatchNorm scale and shift by entropy minimization (TENT), with
:func:`bnfused.configure_test_time_adaptation`. Needs scikit-learn; about ten
seconds on 2 CPU cores.

    python -m examples.test_time_adaptation
    python -m examples.test_time_adaptation --noise 0.3 --contrast 1.0 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import bnfused
from examples.images import digits_dataset
from examples.resnet import build_model


def row(label, *accuracies):
    print(f"{label + ':':42s}" + ", ".join(f"{a:5.1f}%" for a in accuracies))


def batches(x, y, size):
    return zip(x.split(size), y.split(size))


@torch.no_grad()
def accuracy(model, x, y, size=128):
    """Top-1 accuracy in %, batch by batch (BatchNorm on batch statistics when adapting)."""
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in batches(x, y, size))
    return 100.0 * correct / len(y)


def train(model, x, y, epochs, seed):
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = epochs * ((len(y) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for xb, yb in batches(x[order], y[order], 64):
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            opt.zero_grad()
            sched.step()


def shift(x, noise, contrast, seed):
    """Lower contrast around the image mean, plus Gaussian pixel noise."""
    g = torch.Generator().manual_seed(seed)
    mean = x.mean((1, 2, 3), keepdim=True)
    return mean + contrast * (x - mean) + noise * torch.randn(x.shape, generator=g)


def tent(model, x, y, size, lr, passes):
    """Online TENT: predict each batch, then take one entropy step on it."""
    tta = bnfused.configure_test_time_adaptation(model)
    opt = torch.optim.Adam(tta.params, lr=lr, betas=(0.9, 0.999))
    online = []
    for _ in range(passes):
        correct = 0
        for xb, yb in batches(x, y, size):
            logits = model(xb)
            correct += (logits.argmax(1) == yb).sum().item()
            bnfused.softmax_entropy(logits).mean().backward()
            opt.step()
            opt.zero_grad()
        online.append(100.0 * correct / len(y))
    return tta, online


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument(
        "--test-size",
        type=int,
        default=897,
        help="test images (of 1797); a large test set gives TENT more steps",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--noise", type=float, default=0.2, help="std of the Gaussian noise")
    p.add_argument("--contrast", type=float, default=0.5, help="contrast factor")
    p.add_argument("--batch", type=int, default=64, help="test batch size")
    p.add_argument("--lr", type=float, default=3e-3, help="TENT learning rate (Adam)")
    p.add_argument("--passes", type=int, default=3, help="online passes over the test set")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    start = time.time()
    torch.manual_seed(args.seed)
    try:
        train_x, train_y, test_x, test_y = digits_dataset(
            args.image_size, args.test_size, args.seed
        )
    except ImportError:
        sys.exit("this example needs scikit-learn (its 8 x 8 digits): pip install scikit-learn")
    model = build_model(args.depth, args.width, args.seed, in_channels=1)
    train(model, train_x, train_y, args.epochs, args.seed)
    shifted = shift(test_x, args.noise, args.contrast, args.seed)

    model.eval()
    print(
        f"ResNet-{args.depth} trained on {len(train_y)} digits, tested on {len(test_y)} "
        f"({args.image_size} x {args.image_size}), {args.epochs} epochs "
        f"(bnfused backend: {bnfused.op.backend.choose(test_x.device)})"
    )
    row("clean test images, running statistics", accuracy(model, test_x, test_y))
    print(f"shifted (noise {args.noise}, contrast {args.contrast}):")
    row("  source model, running statistics", accuracy(model, shifted, test_y))
    with bnfused.configure_test_time_adaptation(model):
        row("  test-batch statistics, no training", accuracy(model, shifted, test_y, args.batch))
    tta, online = tent(model, shifted, test_y, args.batch, args.lr, args.passes)
    row("  TENT, online, per pass", *online)
    row("  after TENT", accuracy(model, shifted, test_y, args.batch))
    tta.undo()
    row("undone; clean test images again", accuracy(model, test_x, test_y))
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
