"""Reports: the markdown/console table, the JSON results file and the speedup plot.

``python -m benchmarks.report RESULTS.json`` re-renders the ``.md`` and ``.png`` beside a results file
(after a change to this module, say) without re-running anything.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from . import targets

__all__ = ["markdown", "write_json", "plot", "COLUMNS"]

# Implementations in table order: the four of issue 5, then the extras.
COLUMNS = (
    "torch.nn.RNN",
    "rnnext.RNN",
    "rnnext.RNN fallback",
    "torch.nn.RNNCell loop",
    "rnnext.RNNCell loop",
    "torch.compile(nn.RNN)",
    "onnxruntime",
)


CELLS = ("torch.nn.RNNCell loop", "rnnext.RNNCell loop")

NOISY = 0.5  # IQR above this share of the median: the cell is marked "~" (noisy)


def _ms(row: Optional[dict]) -> str:
    if row is None:
        return "—"
    m, q = row["median_ms"], row["iqr_ms"]
    digits = 3 if m < 10 else (2 if m < 100 else 1)
    mark = " ~" if q > NOISY * m else ""
    return f"{m:.{digits}f} ±{q:.{digits}f}{mark}"


def _ratio(num: Optional[dict], den: Optional[dict]) -> str:
    if num is None or den is None or den["median_ms"] <= 0:
        return "—"
    return f"{num['median_ms'] / den['median_ms']:.2f}x"


def _pct(row: Optional[dict], key: str) -> str:
    return f"{100 * row[key]:.0f}%" if row is not None and row.get(key) is not None else "—"


def _groups(rows: list[dict]) -> OrderedDict:
    """rows grouped by (device, dtype) then (case, mode) then impl, in first-seen order."""
    out: OrderedDict = OrderedDict()
    for r in rows:
        g = out.setdefault((r["device"], r["dtype"]), OrderedDict())
        g.setdefault((r["case"], r["mode"]), {})[r["impl"]] = r
    return out


def markdown(result: dict) -> str:
    """The results as markdown: a header, one table per (device, dtype), then the skip notes.

    Each time cell is ``median ±IQR`` in milliseconds per call. ``speedup`` is torch.nn.RNN's median
    over rnnext.RNN's (higher is better for rnnext); ``cell speedup`` the same for the RNNCell loops.
    ``GFLOP/s`` is rnnext.RNN's achieved rate; ``% peak`` its share of the FMA peak measured in the same
    run on the same threads (the ceiling; ``floor ms`` = the case's FLOPs at that peak) and ``% mm``
    its share of torch.mm's rate (the BLAS torch uses, a second reference, not the ceiling). ``path``:
    what rnnext ran (on the CPU, the ISA of its kernels).
    """
    lines = [f"# rnnext benchmarks: `{result['machine']}`", ""]
    lines.append(f"- device: {result['device']}")
    lines.append(f"- torch {result['torch']}, rnnext {result['rnnext']} (commit {result.get('commit', '?')}"
                 f"), threads {result['threads']}, python {result['python']}")
    lines.append(f"- command: `{result['command']}`")
    lines.append(f"- started {result['started']}, took {result['duration_s']:.0f} s; "
                 f"load average at start/end {result['loadavg_start']} / {result['loadavg_end']}")
    for key, g in result.get("fma_peak_gflops", {}).items():
        samples = g["samples"]
        lines.append(f"- FMA peak ({key}, {g['isa']} register-only FMA chains on {g['threads']} threads, "
                     f"csrc/cpu/peak.cpp): {g['used']:.1f} GFLOP/s, the highest of {len(samples)} "
                     f"measurements in the run (start {g['start']:.1f}, end {g['end']:.1f}, lowest "
                     f"{min(samples):.1f}): the ceiling")
    for key, g in result["gemm_gflops"].items():
        samples = g.get("samples", [g["start"], g["end"]])
        lines.append(f"- torch.mm rate ({key}, {g.get('n', '?')}x{g.get('n', '?')}, the BLAS torch uses; a "
                     f"reference, not the ceiling): {g['used']:.1f} GFLOP/s, the highest of {len(samples)} "
                     f"measurements in the run (start {g['start']:.1f}, end {g['end']:.1f}, lowest "
                     f"{min(samples):.1f})")
    cuda = result.get("cuda")
    if cuda:
        lines.append(f"- CUDA {cuda['cuda']}, cuDNN {cuda['cudnn']}, {cuda['gpu']} ({cuda['sms']} SMs); "
                     f"cudnn.allow_tf32={cuda['cudnn_allow_tf32']} (torch.nn.RNN's float32 may run in TF32; "
                     "rnnext's never does); timed with CUDA events; `path`: the CUDA planner's choice, from "
                     "the extension (`fwd/bwd` where they differ); `rnnext.RNN fallback`: forced onto the "
                     "per-step GEMM path")
    # Files written before the thread fix (2026-12-01) have no fma_peak_gflops: their blocks ran on 1.
    threads_note = ("every block on the run's threads" if "fma_peak_gflops" in result
                    else "every block on ONE thread (Timer's default; before the fix of 2026-12-01)")
    if result.get("cpu_isa"):
        lines.append(f"- rnnext's CPU kernels ran {result['cpu_isa']} code (the `path` column)")
    lines.append("- method: outputs (inference) or all gradients (training) checked against torch.nn.RNN "
                 "before timing; warm-up; blocks of calls (CPU: torch.utils.benchmark.Timer; CUDA: CUDA "
                 f"events), {threads_note}, implementations interleaved across rounds (onnxruntime, whose "
                 "threads spin after each run, timed after them on its own); cells are median "
                 f"±IQR in ms per call, `~` where the IQR exceeds {NOISY:.0%} of the median (noisy)")
    lines.append("- speedup = torch.nn.RNN ms / rnnext.RNN ms (cell speedup: the same for the RNNCell "
                 "loops); rnnext GFLOP/s counts 2*T*B*(I*H + H*H) per layer and direction forward, 3x "
                 "that for training; % peak = that rate over the FMA peak = floor ms / rnnext ms; % mm = "
                 "that rate over torch.mm's; floor ms = the case's FLOPs at the FMA peak, or at torch.mm's "
                 "rate where no peak was measured (CUDA; results from before 2026-12-01)")
    for note in result.get("notes", []):
        lines.append(f"- note: {note}")
    lines.append("")
    for (device, dtype), cases in _groups(result["rows"]).items():
        present = [c for c in COLUMNS if any(c in impls for impls in cases.values())]
        lines.append(f"## {device}, {dtype}")
        lines.append("")
        head = ["case", "shape", "mode"] + [f"{c} ms" for c in present]
        head += ["speedup", "path", "rnnext GFLOP/s", "% peak", "% mm", "floor ms"]
        if any(c in present for c in CELLS):
            head.append("cell speedup")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for (case, mode), impls in cases.items():
            any_row = next(iter(impls.values()))
            new = impls.get("rnnext.RNN")
            cells = [case, any_row["shape"], mode] + [_ms(impls.get(c)) for c in present]
            cells.append(_ratio(impls.get("torch.nn.RNN"), new))
            cells.append((new.get("path") or "—") if new else "—")
            cells.append(f"{new['gflops']:.1f}" if new else "—")
            cells.append(_pct(new, "peak_share"))
            cells.append(_pct(new, "gemm_share"))
            cells.append(f"{any_row['floor_ms']:.3f}")
            if any(c in present for c in CELLS):
                cells.append(_ratio(impls.get("torch.nn.RNNCell loop"), impls.get("rnnext.RNNCell loop")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    goals = targets.markdown(result)
    if goals:
        lines.append(goals)
    if result.get("skipped"):
        lines.append("Not measured (implementation: reason: where):")
        lines.append("")
        where: OrderedDict = OrderedDict()
        for sk in result["skipped"]:
            key = (sk["impl"], sk["reason"])
            where.setdefault(key, []).append(f"{sk['case']}/{sk['mode']} ({sk['device']}, {sk['dtype']})")
        for (impl, reason), places in where.items():
            lines.append(f"- {impl}: {reason}: {', '.join(places)}")
        lines.append("")
    return "\n".join(lines)


def compact(result: dict, device: str = "cpu", dtype: str = "float32") -> str:
    """A narrower markdown table for the README: medians in ms, speedups, rnnext's GEMM share."""
    cases = _groups(result["rows"]).get((device, dtype))
    if not cases:
        return f"(no {device}/{dtype} rows)"
    head = ["case", "shape", "mode", "torch.nn.RNN ms", "rnnext.RNN ms", "speedup", "rnnext % peak",
            "rnnext % mm",
            "RNNCell loop ms (torch.nn / rnnext)", "torch.compile ms", "onnxruntime ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ms(r: Optional[dict]) -> str:
        if r is None:
            return "—"
        m = r["median_ms"]
        return f"{m:.3f}" if m < 10 else (f"{m:.2f}" if m < 100 else f"{m:.1f}")

    for (case, mode), impls in cases.items():
        new = impls.get("rnnext.RNN")
        tc, nc = impls.get("torch.nn.RNNCell loop"), impls.get("rnnext.RNNCell loop")
        cells = [case, next(iter(impls.values()))["shape"], mode, ms(impls.get("torch.nn.RNN")), ms(new),
                 _ratio(impls.get("torch.nn.RNN"), new),
                 _pct(new, "peak_share"), _pct(new, "gemm_share"),
                 f"{ms(tc)} / {ms(nc)}" if (tc or nc) else "—",
                 ms(impls.get("torch.compile(nn.RNN)")), ms(impls.get("onnxruntime"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")


def plot(result: dict, path: Path) -> Optional[str]:
    """A PNG of rnnext's speedup over torch.nn per case and mode (bars: rnnext.RNN over torch.nn.RNN;
    diamonds: rnnext.RNNCell loop over torch.nn.RNNCell loop), one panel per (device, dtype).
    Returns None when written, else why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    groups = _groups(result["rows"])
    if not groups:
        return "no rows to plot"
    n_cases = max(len(g) for g in groups.values()) / 2
    fig, axes = plt.subplots(len(groups), 1, figsize=(max(8.0, 1.1 * n_cases + 3), 4.2 * len(groups)),
                             squeeze=False)
    colors = {"inference": "#4C72B0", "training": "#DD8452"}
    for ax, ((device, dtype), cases) in zip(axes[:, 0], groups.items()):
        names = list(OrderedDict.fromkeys(c for c, _ in cases))
        modes = list(OrderedDict.fromkeys(m for _, m in cases))
        width = 0.8 / max(1, len(modes))
        for j, mode in enumerate(modes):
            xs, ys, cx, cy = [], [], [], []
            for i, name in enumerate(names):
                impls = cases.get((name, mode), {})
                x = i + (j - (len(modes) - 1) / 2) * width
                if "torch.nn.RNN" in impls and "rnnext.RNN" in impls:
                    xs.append(x)
                    ys.append(impls["torch.nn.RNN"]["median_ms"] / impls["rnnext.RNN"]["median_ms"])
                if "torch.nn.RNNCell loop" in impls and "rnnext.RNNCell loop" in impls:
                    cx.append(x)
                    cy.append(impls["torch.nn.RNNCell loop"]["median_ms"]
                              / impls["rnnext.RNNCell loop"]["median_ms"])
            bars = ax.bar(xs, ys, width=width, color=colors.get(mode), label=f"rnnext.RNN, {mode}")
            for b, y in zip(bars, ys):
                ax.annotate(f"{y:.2g}x", (b.get_x() + b.get_width() / 2, y), ha="center", va="bottom",
                            fontsize=7)
            if cx:
                ax.scatter(cx, cy, marker="D", color="black", facecolors="none", zorder=3,
                           label="rnnext.RNNCell loop over torch.nn.RNNCell loop" if j == 0 else None)
        ax.axhline(1.0, color="gray", lw=1, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("speedup over torch.nn (x)")
        ax.set_title(f"{result['machine']}: {device}, {dtype}, {result['threads']} threads, "
                     f"torch {result['torch']} (bars: rnnext.RNN over torch.nn.RNN)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.5), max(hi, 2.0))
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.0f}s"



def main(argv: Optional[list[str]] = None) -> int:
    import sys

    for arg in (sys.argv[1:] if argv is None else argv):
        path = Path(arg)
        result = json.loads(path.read_text())
        path.with_suffix(".md").write_text(markdown(result) + "\n")
        why_not = plot(result, path.with_suffix(".png"))
        made = f" ({why_not})" if why_not else f", {path.with_suffix('.png')}"
        print(f"{path.with_suffix('.md')}{made}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
