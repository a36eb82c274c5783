"""The benchmark grid: named RNN shapes, and the FLOP count each one costs.

A :class:`Case` is one problem: sequence length ``T``, batch ``B``, input size ``I``, hidden size ``H``,
``layers``, ``bidirectional``, and whether the batch is a packed variable-length one. The default grid
(:data:`DEFAULT_CASES`) spans the shapes that issue 5 names; ``--quick`` uses :data:`QUICK_CASES`.

FLOPs (multiply-adds count 2) of one forward pass, summed over layers ``l`` and directions:

.. math::
    F_\\text{fwd} = \\sum_{l,d} 2 N (I_l H + H H), \\quad N = T B \\text{ (padded) or } \\sum_b L_b
    \\text{ (packed)}, \\quad I_0 = I,\\ I_{l>0} = D H

and a forward+backward pass is counted as :math:`3 F_\\text{fwd}` (the backward is about twice the
forward: one GEMM for the input gradient and one for each weight gradient per forward GEMM). The
elementwise work (bias, tanh) is not counted: it is O(N H), small next to the GEMMs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

__all__ = ["Case", "DEFAULT_CASES", "EXTRA_CASES", "QUICK_CASES", "GROUPS", "ALL_CASES", "lengths_for",
           "tokens", "flops", "select"]


@dataclass(frozen=True)
class Case:
    """One benchmark problem.

    ``packed``: the batch is a ``PackedSequence`` of variable lengths (see :func:`lengths_for`).
    ``padded_lengths``: the same variable-length batch as ``packed`` would have, but run padded to ``T``
    (the comparison the packed case is judged against; it costs ``T*B`` steps of work, the packed one
    ``sum(lengths)``).
    ``cells``: also time the step loops over ``RNNCell`` (only single-layer, one-direction, padded).
    """

    name: str
    T: int
    B: int
    I: int  # noqa: E741 - the shape letter torch.nn's docs use
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    padded_lengths: bool = False
    cells: bool = False
    note: str = ""

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def shape(self) -> str:
        """A short human-readable shape: ``T=10 B=3 I=100 H=20`` plus layers/bidir/packed flags."""
        s = f"T={self.T} B={self.B} I={self.I} H={self.H}"
        if self.layers > 1:
            s += f" L={self.layers}"
        if self.bidirectional:
            s += " bidir"
        if self.packed:
            s += " packed"
        if self.padded_lengths:
            s += " padded"
        return s

    def params(self) -> dict:
        """The shape parameters as they appear in every result row."""
        d = asdict(self)
        for k in ("name", "cells", "note", "padded_lengths"):
            d.pop(k)
        return d


def lengths_for(case: Case) -> Optional[list[int]]:
    """The sequence lengths of a variable-length case (``packed`` or ``padded_lengths``), else None.

    Deterministic (a fixed generator) so the packed and the padded case hold the same batch: lengths are
    uniform in ``[T/4, T]``, with the first sequence of length ``T`` (so padding reaches ``T``).
    """
    if not (case.packed or case.padded_lengths):
        return None
    g = torch.Generator().manual_seed(1234)
    lengths = torch.randint(max(1, case.T // 4), case.T + 1, (case.B,), generator=g).tolist()
    lengths[0] = case.T
    return lengths


def tokens(case: Case) -> int:
    """Time steps times batch entries actually computed: ``sum(lengths)`` packed, else ``T*B``."""
    lengths = lengths_for(case)
    return sum(lengths) if (case.packed and lengths is not None) else case.T * case.B


def flops(case: Case, mode: str) -> float:
    """FLOPs of one call in ``mode`` ('inference': forward; 'training': forward + backward = 3x)."""
    n = float(tokens(case))
    total = 0.0
    for layer in range(case.layers):
        i = case.I if layer == 0 else case.directions * case.H
        total += case.directions * 2.0 * n * (i * case.H + case.H * case.H)
    return total * (3.0 if mode == "training" else 1.0)


_MED = dict(T=100, B=32, I=128, H=128)

DEFAULT_CASES: list[Case] = [
    Case("tutorial", T=10, B=3, I=100, H=20, cells=True, note="the PyTorch tutorial shape"),
    Case("cell-step", T=1, B=3, I=100, H=20, cells=True, note="one step: RNNCell per-call cost"),
    Case("latency", T=100, B=1, I=64, H=64, cells=True, note="batch 1, latency-bound"),
    Case("small", T=100, B=8, I=128, H=128, cells=True),
    Case("medium", **_MED, cells=True),
    Case("medium-h256", T=100, B=64, I=256, H=256),
    Case("stack-2l-bidir", T=100, B=32, I=128, H=256, layers=2, bidirectional=True),
    Case("packed", **_MED, packed=True, note="variable lengths in [T/4, T], packed (unsorted)"),
    Case("packed-as-padded", **_MED, padded_lengths=True, note="the packed case's batch, padded to T"),
    Case("large", T=50, B=128, I=1024, H=1024, note="GEMM-bound"),
]

# Not in the default grid; selectable by name with --cases.
EXTRA_CASES: list[Case] = [
    Case("tutorial-2l-bidir", T=10, B=3, I=100, H=20, layers=2, bidirectional=True),
    Case("large-h2048", T=20, B=64, I=2048, H=2048, note="GEMM-bound, H=2048"),
    Case("tiny-packed-bidir", T=12, B=4, I=16, H=16, layers=2, bidirectional=True, packed=True,
         note="smoke: packed, 2 layers, bidirectional, tiny"),
    # Edge shapes for "never slower than torch.nn" (group "edges"): one batch row with a large W_hh,
    # few rows at the BLAS hidden size, tiny and long, three layers, a small bidirectional stack.
    Case("edge-b1-h1024", T=20, B=1, I=256, H=1024, note="batch 1, large H"),
    Case("edge-b4-h512", T=30, B=4, I=32, H=512, note="few rows at H 512"),
    Case("edge-b2-h16", T=200, B=2, I=16, H=16, note="tiny and long"),
    Case("edge-3l", T=50, B=16, I=64, H=64, layers=3, note="three layers"),
    Case("edge-b8-2l-bidir", T=50, B=8, I=256, H=256, layers=2, bidirectional=True),
]

ALL_CASES: dict[str, Case] = {c.name: c for c in DEFAULT_CASES + EXTRA_CASES}

QUICK_CASES: list[str] = ["tutorial", "latency", "tiny-packed-bidir"]

# Names --cases accepts for several cases at once.
GROUPS: dict[str, list[str]] = {
    "default": [c.name for c in DEFAULT_CASES],
    "quick": QUICK_CASES,
    "edges": [c.name for c in EXTRA_CASES if c.name.startswith("edge-")],
}


def select(names: Optional[list[str]], quick: bool) -> list[Case]:
    """The cases and groups named (``--cases``), else the quick or the default grid, each case once.
    Unknown names raise."""
    if not names:
        names = ["quick" if quick else "default"]
    unknown = [n for n in names if n not in ALL_CASES and n not in GROUPS]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {sorted(ALL_CASES)}, groups {sorted(GROUPS)}")
    picked = [m for n in names for m in GROUPS.get(n, [n])]
    return [ALL_CASES[n] for n in dict.fromkeys(picked)]
