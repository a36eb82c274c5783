"""Refresh README.md's Performance section from a results file.

``python -m benchmarks.readme [benchmarks/results/<machine>.json ...]`` rewrites only the text between
the ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` markers of README.md: for each results file,
its machine, the command that produced it, a compact table (:func:`benchmarks.report.compact`), its
notes, and its plot. With no argument it uses every ``benchmarks/results/*.json`` except ``*-quick``,
most threads first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from . import report, targets

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def section(results: list[Path]) -> str:
    out = []
    for path in results:
        r = json.loads(path.read_text())
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        out.append(f"### `{r['machine']}`: {r['device']}")
        out.append("")
        out.append(f"torch {r['torch']}, {r['threads']} threads, commit {r.get('commit', '?')}, "
                   f"{r['started']}. Produced by `{r['command']}`; full table with IQRs, GFLOP/s and "
                   f"skipped extras: [{rel.with_suffix('.md')}]({rel.with_suffix('.md')}), raw rows: "
                   f"[{rel}]({rel}).")
        out.append("")
        for note in r.get("notes", []):
            out.append(f"> {note}")
            out.append("")
        goals = targets.summary(r)
        if goals:
            out.append(goals)
            out.append("")
        for dev in r["devices"]:
            for dt in r["dtypes"]:
                g = r["gemm_gflops"].get(f"{dev}/{dt}")
                if g is None:
                    continue
                p = r.get("fma_peak_gflops", {}).get(f"{dev}/{dt}")
                peak = (f"FMA peak {p['used']:.0f} GFLOP/s ({p['isa']}, {p['threads']} threads), "
                        if p else "FMA peak not measured in this run, ")
                out.append(f"{dev}, {dt} (measured in the run: {peak}torch.mm {g.get('used', 0):.0f} "
                           "GFLOP/s):")
                out.append("")
                out.append(report.compact(r, dev, dt))
                out.append("")
        png = rel.with_suffix(".png")
        if (ROOT / png).exists() or png.exists():
            out.append(f"![rnnext speedup over torch.nn, {r['machine']}]({png})")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a).resolve() for a in args] or sorted(
        (p for p in (ROOT / "benchmarks" / "results").glob("*.json") if not p.stem.endswith("-quick")),
        key=lambda p: (-json.loads(p.read_text()).get("threads", 0), p.name),
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n" + section(paths) + END + tail)
    print(f"README.md: Performance section from {[str(p.name) for p in paths]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
