"""How much of a model :func:`bnfused.convert_model` fuses, and why the rest is not.

``fusion_report(model)`` converts a copy with ``fuse_activations=True`` and
lists every batch norm: the activation fused into it, whether the residual add
was fused too, or why it was left alone. From a shell::

    python -m bnfused.tools.coverage torchvision:resnet18 timm:dla34 [--details]
"""

from __future__ import annotations

import argparse
import collections
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from torch import nn

from .convert import convert_model
from .fusion_log import FusionLog


@dataclass
class BatchNormFusion:
    """One batch norm of a converted model: ``activation`` ("identity" when none is fused),
    ``residual`` (its residual add is fused), ``reason`` (why nothing is, else "")."""

    path: str
    activation: str
    residual: bool
    reason: str


@dataclass
class FusionReport:
    """Per batch norm (:class:`BatchNormFusion`) and in total, what conversion fused."""

    batch_norms: List[BatchNormFusion] = field(default_factory=list)

    @property
    def converted(self) -> int:
        """Batch norms replaced by a bnfused class (all of them)."""
        return len(self.batch_norms)

    @property
    def with_activation(self) -> int:
        """Batch norms with a fused activation."""
        return sum(b.activation != "identity" for b in self.batch_norms)

    @property
    def with_residual(self) -> int:
        """Batch norms with a fused residual add."""
        return sum(b.residual for b in self.batch_norms)

    @property
    def fused(self) -> int:
        """Batch norms with a fused activation, residual add, or both."""
        return sum(b.activation != "identity" or b.residual for b in self.batch_norms)

    def reasons(self) -> Dict[str, int]:
        """{reason: how many unfused batch norms it holds back}, most frequent first."""
        counts = collections.Counter(_short(b.reason) for b in self.batch_norms if b.reason)
        return dict(counts.most_common())

    def __str__(self) -> str:
        lines = [
            f"{self.converted} batch norms converted, {self.fused} fused: "
            f"{self.with_activation} with an activation, {self.with_residual} with a "
            "residual add"
        ]
        lines += [f"  {n:4d}  {why}" for why, n in self.reasons().items()]
        return "\n".join(lines)

    def details(self) -> str:
        """One line per batch norm."""
        return "\n".join(
            f"{b.path}: " + (b.reason or f"{b.activation}" + (" + residual" if b.residual else ""))
            for b in self.batch_norms
        )


def _short(reason: str) -> str:
    """A reason without the module path, so equal causes count together."""
    if reason.startswith("untraceable module"):
        return "untraceable module (" + reason.split("(", 1)[1].split(":", 1)[0] + ")"
    return reason


def fusion_report(model: nn.Module, example_inputs: Any = None) -> FusionReport:
    """What ``convert_model(model, fuse_activations=True, example_inputs=...)`` fuses.

    ``model`` is not changed (a copy is converted). For each batch norm, by
    path: the fused activation, whether its residual add is fused, and for one
    with neither, the reason: no activation follows, an unsupported activation
    (named), its output or the sum used elsewhere, an untraceable calling
    module (named, with torch.fx's error), hooks, sharing...
    """
    log = FusionLog()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = convert_model(model, fuse_activations=True, example_inputs=example_inputs, _log=log)
    report = FusionReport()
    for path, m in conv.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) and not hasattr(m, "running_var"):
            continue
        if path in log.fused:
            activation, _, residual = log.fused[path]
            report.batch_norms.append(BatchNormFusion(path, activation, residual, ""))
            continue
        activation = getattr(m, "activation", "identity")
        reason = "" if activation != "identity" else _layer_reason(m, log.reasons.get(path))
        report.batch_norms.append(BatchNormFusion(path, activation, False, reason))
    return report


def _layer_reason(m: nn.Module, logged: Optional[str]) -> str:
    act, drop = getattr(m, "act", None), getattr(m, "drop", None)
    if isinstance(act, nn.Module) and type(act) is not nn.Identity:  # a timm BatchNormAct2d
        if isinstance(drop, nn.Module) and type(drop) is not nn.Identity:
            return f"a {type(drop).__name__} sits between it and its activation"
        return f"unsupported activation {type(act).__name__}"
    return logged or "no caller was traced (called outside a module's forward)"


def _build(spec: str) -> nn.Module:
    source, _, name = spec.partition(":")
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    raise SystemExit(f"{spec}: expected timm:NAME or torchvision:NAME")


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m bnfused.tools.coverage SOURCE:NAME ... [--details]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="timm:NAME or torchvision:NAME")
    parser.add_argument("--details", action="store_true", help="one line per batch norm")
    args = parser.parse_args(argv)
    for spec in args.models:
        report = fusion_report(_build(spec))
        print(f"{spec}: {report}")
        if args.details:
            print(report.details())


if __name__ == "__main__":
    main()
