"""Terminal table, markdown report, CSV and plot of a benchmark run."""

from __future__ import annotations

import csv
import math
from collections import Counter
from typing import Dict, List, Optional, Sequence

from .budget import group_labels
from .cases import MODES
from .runner import ANCHORS, Row, RowKey, RunResult

CSV_FIELDS = [
    "device",
    "commit",
    "op",
    "shape",
    "dtype",
    "layout",
    "mode",
    "contender",
    "median_ms",
    "min_ms",
    "samples",
    "bytes",
    "gbps",
    "pct_of_copy",
    "speedup_vs_eager",
    "speedup_vs_compile",
    "compile_s",
    "error",
    "reliability",
]


def contenders_of(rows: Sequence[Row]) -> List[str]:
    """Anchors first, then bnfused backends in order of appearance."""
    seen: List[str] = []
    for row in rows:
        for name in list(row.median_s) + list(row.errors):
            if name not in seen:
                seen.append(name)
    return [a for a in ANCHORS if a in seen] + [n for n in seen if n not in ANCHORS]


def _fmt(v: float, spec: str, missing: str = "-") -> str:
    return missing if v is None or math.isnan(v) else format(v, spec)


def row_cells(row: Row, names: Sequence[str], copy_bps: float) -> List[str]:
    """op, shape, dtype, layout, mode, MB, then per contender 'ms' or 'ms x.. x.. %copy'."""
    cells = [
        row.case.op,
        row.case.label,
        row.case.dtype,
        row.case.layout,
        row.mode,
        f"{row.bytes / 1e6:.1f}",
    ]
    for name in names:
        t = row.median_s.get(name)
        if t is None:
            cells.append("err" if name in row.errors else "-")
            continue
        cell = f"{t * 1e3:.3f}"
        if name != "eager":
            cell += f" x{_fmt(row.speedup(name, 'eager'), '.2f')}"
        if name not in ANCHORS and "compile" in row.median_s:
            cell += f" x{_fmt(row.speedup(name, 'compile'), '.2f')}c"
        cell += f" {100 * row.bandwidth(name) / copy_bps:.0f}%"
        cells.append(cell)
    return cells


def table_header(names: Sequence[str]) -> List[str]:
    return ["op", "shape", "dtype", "layout", "mode", "MB"] + [f"{n} ms" for n in names]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def geomean(values: Sequence[float]) -> float:
    values = [v for v in values if v and not math.isnan(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summary_rows(rows: Sequence[Row], names: Sequence[str], copy_bps: float) -> List[List[str]]:
    """Per mode and contender: geometric-mean speedups and median % of copy bandwidth."""
    out = []
    for mode in MODES:
        sel = [r for r in rows if r.mode == mode]
        for name in names:
            if name == "eager" or not any(name in r.median_s for r in sel):
                continue
            pct = sorted(100 * r.bandwidth(name) / copy_bps for r in sel if name in r.median_s)
            vs_compile = [
                r.speedup(name, "compile")
                for r in sel
                if name in r.median_s and "compile" in r.median_s
            ]
            compile_cell = "" if name == "compile" else _fmt(geomean(vs_compile), ".2f")
            if compile_cell not in ("", "-") and len(vs_compile) < len(pct):
                compile_cell += f" ({len(vs_compile)} rows)"
            vs_eager = [r.speedup(name, "eager") for r in sel if name in r.median_s]
            out.append(
                [
                    mode,
                    name,
                    _fmt(geomean(vs_eager), ".2f"),
                    _fmt(min(vs_eager, default=float("nan")), ".2f"),
                    compile_cell,
                    f"{pct[len(pct) // 2]:.0f}%",
                    str(len(pct)),
                ]
            )
    return out


SUMMARY_HEADER = [
    "mode",
    "contender",
    "x eager (geomean)",
    "x eager (min)",
    "x compile (geomean)",
    "% of copy (median)",
    "rows",
]


def skipped_lines(keys: Sequence[RowKey]) -> List[str]:
    """Rows left out, grouped: ``"bn fp32 nchw: 4x64x56x56, 8x256x14x14 [eval]"``
    (a shape without brackets: all its modes)."""
    modes: Dict[object, List[str]] = {}
    for case, mode in keys:
        modes.setdefault(case, []).append(mode)
    return group_labels(
        [
            (
                f"{c.op} {c.dtype} {c.layout}",
                c.label if len(m) == len(MODES) else f"{c.label} [{', '.join(m)}]",
            )
            for c, m in modes.items()
        ]
    )


def write_csv(
    path: str, rows: Sequence[Row], meta: Dict[str, str], copy_bps: float, reliability: str = "ok"
) -> None:
    """One line per row and contender (long format); ``reliability`` ("ok", or
    "UNRELIABLE: " and why) is repeated on every line, as the device and commit are."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for row in rows:
            for name in contenders_of([row]):
                t = row.median_s.get(name)
                w.writerow(
                    {
                        "device": meta["device_slug"],
                        "commit": meta["commit"],
                        "op": row.case.op,
                        "shape": row.case.label,
                        "dtype": row.case.dtype,
                        "layout": row.case.layout,
                        "mode": row.mode,
                        "contender": name,
                        "median_ms": "" if t is None else f"{t * 1e3:.5f}",
                        "min_ms": "" if t is None else f"{row.min_s[name] * 1e3:.5f}",
                        "samples": row.samples.get(name, 0),
                        "bytes": row.bytes,
                        "gbps": "" if t is None else f"{row.bandwidth(name) / 1e9:.2f}",
                        "pct_of_copy": ""
                        if t is None
                        else f"{100 * row.bandwidth(name) / copy_bps:.1f}",
                        "speedup_vs_eager": _fmt(row.speedup(name, "eager"), ".4f", ""),
                        "speedup_vs_compile": _fmt(row.speedup(name, "compile"), ".4f", ""),
                        "compile_s": ""
                        if row.compile_s is None or name != "compile"
                        else f"{row.compile_s:.2f}",
                        "error": row.errors.get(name, ""),
                        "reliability": reliability,
                    }
                )


def write_plot(path: str, rows: Sequence[Row], title: str) -> Optional[str]:
    """Bar chart: geomean speedup vs eager per shape and contender, one panel per mode.

    Returns None when written, else the reason it was not (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; plot skipped"
    names = [n for n in contenders_of(rows) if n != "eager"]
    modes = [m for m in MODES if any(r.mode == m for r in rows)]
    shapes = list(dict.fromkeys(r.case.label for r in rows))
    fig, axes = plt.subplots(
        len(modes),
        1,
        figsize=(max(8, 0.9 * len(shapes) * len(names)), 3.2 * len(modes)),
        squeeze=False,
    )
    width = 0.8 / max(1, len(names))
    for ax, mode in zip(axes[:, 0], modes):
        for i, name in enumerate(names):
            vals = [
                geomean(
                    [r.speedup(name, "eager") for r in rows if r.mode == mode and r.case.label == s]
                )
                for s in shapes
            ]
            ax.bar(
                [k + (i - (len(names) - 1) / 2) * width for k in range(len(shapes))],
                [v - 1 for v in vals],
                width,
                bottom=1.0,
                label=name,
            )  # bars from 1x
        ax.set_yscale("log", base=2)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(f"{mode}: speedup vs torch eager (geomean over dtype/layout/op)", fontsize=9)
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, rotation=20, fontsize=7)
        ax.set_ylabel("x eager")
        ax.legend(fontsize=7, ncol=len(names))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def markdown(
    meta: Dict[str, str],
    result: RunResult,
    copy_bps: float,
    options: str,
    memory_rows: Optional[List[List[str]]],
    memory_title: str,
    e2e_lines: List[str],
    plot_name: Optional[str],
    run_lines: Sequence[str] = (),
    unreliable: Sequence[str] = (),
    machine_lines: Sequence[str] = (),
) -> str:
    """The full markdown report. ``run_lines``: how the run went (time per section,
    sections cut short or interrupted), shown under the header; ``unreliable``: the
    reasons to distrust the timings (a warning above everything); ``machine_lines``:
    the load and copy-bandwidth samples they were judged from."""
    rows = result.rows
    names = contenders_of(rows)
    out = [f"# bnfused benchmarks: {meta['device']}", ""]
    if unreliable:
        out += [
            "> **UNRELIABLE**: the machine was not quiet while this ran; do not compare "
            "these timings with other runs.",
            ">",
        ]
        out += [f"> - {reason}" for reason in unreliable] + [""]
    out += [f"- **{k}**: {v}" for k, v in meta.items() if k not in ("device_slug", "stamp")]
    out += [
        f"- **copy bandwidth**: {copy_bps / 1e9:.1f} GB/s (`dst.copy_(src)`, read + write)",
        f"- **options**: `{options}`",
        "",
    ]
    if run_lines:
        out += ["## Run", ""] + [f"- {line}" for line in run_lines] + [""]
    if machine_lines:
        out += (
            ["## Machine", ""]
            + [f"- {line}" for line in machine_lines]
            + [f"- verdict: {'UNRELIABLE' if unreliable else 'ok'}", ""]
        )
    out += [
        "Times are medians of interleaved samples. `xN` = anchor time / contender time "
        "vs torch eager, `xNc` vs torch.compile (> 1: faster); `%` = achieved bandwidth "
        "(minimum bytes that must move / time, see `benchmarks/cases.py:bytes_moved`) as a "
        "share of the copy bandwidth above.",
        "",
    ]
    out += [
        "## Summary",
        "",
        markdown_table(SUMMARY_HEADER, summary_rows(rows, names, copy_bps)),
        "",
    ]
    if plot_name:
        out += [f"![speedup per shape]({plot_name})", ""]
    for mode in MODES:
        sel = [r for r in rows if r.mode == mode]
        if sel:
            out += [
                f"## {mode}",
                "",
                markdown_table(table_header(names), [row_cells(r, names, copy_bps) for r in sel]),
                "",
            ]
    if memory_rows:
        out += [
            "## Memory kept for backward",
            "",
            memory_title,
            "",
            markdown_table(
                [
                    "measure",
                    "eager (ReLU in place)",
                    "eager (ReLU out of place)",
                    "bnfused",
                    "bnfused / eager",
                ],
                memory_rows,
            ),
            "",
        ]
    if e2e_lines:
        out += ["## End to end", ""] + e2e_lines + [""]
    errors = Counter(f"{n}: {e}" for r in rows for n, e in r.errors.items())
    notes = result.notes + [f"{count} rows failed with {e}" for e, count in sorted(errors.items())]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if result.skipped:
        out += [
            "## Rows not run (time budget)",
            "",
            f"{len(result.skipped)} of {len(result.skipped) + len(rows)} rows:",
            "",
        ]
        out += [f"- {line}" for line in skipped_lines(result.skipped)] + [""]
    if result.compile_skipped:
        out += [
            "## Rows without the torch.compile anchor",
            "",
            f"{len(result.compile_skipped)} of {len(rows)} rows (time budget, or the "
            "compile limit in the notes):",
            "",
        ]
        out += [f"- {line}" for line in skipped_lines(result.compile_skipped)] + [""]
    return "\n".join(out)
