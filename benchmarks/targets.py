"""Issue 11's CPU targets, read off a results file.

``python -m benchmarks.targets RESULTS.json [...]`` prints, for each file, every target, how many of
the run's rows it covers and which of them miss it, and exits 1 where any row misses (0 where all
meet them). The benchmark report (:func:`benchmarks.report.markdown`) and the README's section
(:mod:`benchmarks.readme`) carry the same check, so a run on a new machine says at once where it
stands.

The targets, on the CPU, each share against the FMA peak measured in the same run (issue 11 sets
them at 2 threads; a run on another thread count is checked all the same and says so):

- GEMM-bound rows (B >= 16 and H >= 128; any I, layers, directions, packed or padded): float32
  forward >= 70% of the float32 peak, float32 forward + backward >= 60%, float64 forward >= 60% of
  the float64 peak;
- every row: ``rnnext.RNN`` faster than ``torch.nn.RNN`` (medians of the same interleaved rounds),
  and in inference faster than ONNX Runtime where it was timed.

The tiny and latency shapes' "keep what they have" compares runs of two commits and is not read
off one file.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["SHARES", "THREADS", "Check", "gemm_bound", "check", "markdown", "summary"]

THREADS = 2  # the thread count issue 11 sets its shares at


@dataclass(frozen=True)
class Share:
    """rnnext.RNN's GEMM-bound rows of ``dtype`` in ``mode`` at ``least`` of the FMA peak."""

    name: str
    dtype: str
    mode: str
    least: float


SHARES = (
    Share("float32 forward", "float32", "inference", 0.70),
    Share("float32 forward + backward", "float32", "training", 0.60),
    Share("float64 forward", "float64", "inference", 0.60),
)


@dataclass
class Check:
    """One target over one results file: the rows it covers and those that miss it."""

    target: str
    rows: int = 0
    misses: list[str] = field(default_factory=list)


def gemm_bound(row: dict) -> bool:
    """The issue's GEMM-bound shapes: B >= 16 and H >= 128."""
    return row["B"] >= 16 and row["H"] >= 128


def check(result: dict) -> list[Check]:
    """Every target over the CPU rows of a results file (an empty list where it has none)."""
    rows = [r for r in result["rows"] if r["device"] == "cpu"]
    if not rows:
        return []
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["dtype"], r["case"], r["mode"]), {})[r["impl"]] = r
    out = []
    for s in SHARES:
        c = Check(f"{s.name} >= {s.least:.0%} of the FMA peak, B >= 16 and H >= 128")
        for (dtype, case, mode), impls in by_key.items():
            new = impls.get("rnnext.RNN")
            if dtype != s.dtype or mode != s.mode or new is None or not gemm_bound(new):
                continue
            if new.get("peak_share") is None:
                continue
            c.rows += 1
            if new["peak_share"] < s.least:
                # rounded down, so that a miss never prints as its floor
                c.misses.append(f"{case} {math.floor(1000 * new['peak_share']) / 10:.1f}%")
        out.append(c)
    for other, modes in (("torch.nn.RNN", ("inference", "training")), ("onnxruntime", ("inference",))):
        c = Check(f"faster than {other}" + (" (inference)" if modes == ("inference",) else ""))
        for (dtype, case, mode), impls in by_key.items():
            new, ref = impls.get("rnnext.RNN"), impls.get(other)
            if mode not in modes or new is None or ref is None:
                continue
            c.rows += 1
            if new["median_ms"] >= ref["median_ms"]:
                c.misses.append(f"{dtype} {case} {mode} {ref['median_ms'] / new['median_ms']:.2f}x")
        out.append(c)
    return out


def _threads_note(result: dict) -> str:
    t = result.get("threads")
    return "" if t == THREADS else f" (issue 11 sets them at {THREADS} threads; this run has {t})"


def markdown(result: dict) -> Optional[str]:
    """The targets as a markdown section, or None for a run without CPU rows."""
    checks = check(result)
    if not checks:
        return None
    lines = ["## Issue 11's targets (`benchmarks/targets.py`)", "",
             f"Read off this run's rows{_threads_note(result)}.", "",
             "| target | rows | met | misses |", "|---|---|---|---|"]
    for c in checks:
        if c.rows == 0:
            lines.append(f"| {c.target} | 0 | — | not in this run |")
        else:
            lines.append(f"| {c.target} | {c.rows} | {c.rows - len(c.misses)} | "
                         f"{', '.join(c.misses) or '—'} |")
    return "\n".join(lines) + "\n"


def summary(result: dict) -> Optional[str]:
    """One line: every covered target met, or the misses; None for a run without CPU rows."""
    checks = [c for c in check(result) if c.rows > 0]
    if not checks:
        return None
    rows = sum(c.rows for c in checks)
    missed = [c for c in checks if c.misses]
    if not missed:
        return f"Issue 11's targets: met by every row they cover ({rows} checks){_threads_note(result)}."
    parts = "; ".join(f"{c.target}: {', '.join(c.misses)}" for c in missed)
    return (f"Issue 11's targets: {rows - sum(len(c.misses) for c in missed)} of {rows} checks met"
            f"{_threads_note(result)}; missed: {parts}.")


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m benchmarks.targets RESULTS.json [...]", file=sys.stderr)
        return 2
    missed = False
    for arg in args:
        result = json.loads(Path(arg).read_text())
        md = markdown(result)
        print(f"{arg}: {result.get('device', '?')}, {result.get('threads', '?')} threads, commit "
              f"{result.get('commit', '?')}, kernels {result.get('cpu_isa', '?')}")
        print(md if md is not None else "no CPU rows\n")
        missed = missed or any(c.misses for c in check(result))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
