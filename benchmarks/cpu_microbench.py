"""CPU micro-benchmark for the kernel work of issue 6: torch.nn.RNN vs rnnext.RNN, interleaved.

Method: torch.utils.benchmark.Timer.blocked_autorange, median; the two implementations are timed in
alternation (ref, new, ref, new ...) in one process, same weights, same inputs, same thread count.
The machine is shared with other helpers, so absolute numbers are noisy: read the ratios.

    python benchmarks/cpu_microbench.py [--threads 2] [--only tutorial,b1h64,...] [--time 0.2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.utils.benchmark as tb
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnext  # noqa: E402
import rnnext.functional  # noqa: E402

# name: (T, B, F_IN, H, layers, bidirectional)
CASES = {
    "tutorial": (10, 3, 100, 20, 1, False),
    "b1h64": (100, 1, 64, 64, 1, False),
    "b32h128": (100, 32, 128, 128, 1, False),
    "b8h256x2bi": (50, 8, 256, 256, 2, True),
    "b64h256": (50, 64, 256, 256, 1, False),
    "large": (10, 64, 1024, 1024, 1, False),
    # edge shapes for "never slower than nn.RNN"
    "b1h1024": (20, 1, 256, 1024, 1, False),
    "b4h512": (30, 4, 32, 512, 1, False),
    "b2h16": (200, 2, 16, 16, 1, False),
    "b16h64x3": (50, 16, 64, 64, 3, False),
}
DEFAULT = ["tutorial", "b1h64", "b32h128", "b8h256x2bi", "b64h256", "large"]


TIMER = {"timer": timeit.default_timer}


def median_s(fn, t: float) -> float:
    return tb.Timer(stmt="fn()", globals={"fn": fn}, **TIMER).blocked_autorange(min_run_time=t).median


def interleave(fns, t: float, rounds: int = 3):
    """Median of per-round medians for each fn, rounds alternating between the fns."""
    res = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            res[i].append(median_s(f, t / rounds))
    return [statistics.median(r) for r in res]


def run_mode(m, x, mode, h0=None):
    if mode == "fwd":
        with torch.no_grad():
            return m(x, h0)
    y, h = m(x, h0)
    (y.data if isinstance(y, PackedSequence) else y).sum().backward()


def pair(F_IN, H, layers, bi):
    ref = nn.RNN(F_IN, H, layers, bidirectional=bi)
    new = rnnext.RNN(F_IN, H, layers, bidirectional=bi)
    new.load_state_dict(ref.state_dict())
    return ref, new


def bench_case(name, t):
    T, B, F_IN, H, L, bi = CASES[name]
    ref, new = pair(F_IN, H, L, bi)
    x = torch.randn(T, B, F_IN, requires_grad=True)
    torch.testing.assert_close(new(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
    rows = []
    for mode in ("fwd", "fwdbwd"):
        a, b = interleave(
            [lambda m=ref, mode=mode: run_mode(m, x, mode), lambda m=new, mode=mode: run_mode(m, x, mode)], t
        )
        rows.append((name, mode, a, b))
        if name == "large":
            D = 2 if bi else 1
            flops = 2 * T * B * H * (F_IN + H) * D * (3 if mode == "fwdbwd" else 1)
            A = torch.randn(T * B, F_IN + H)
            W = torch.randn(F_IN + H, H)
            g = median_s(lambda A=A, W=W: torch.mm(A, W), t / 2)
            floor = flops / (2 * T * B * (F_IN + H) * H / g)
            rows.append((name, mode + " floor", floor, b))
    return rows


def bench_packed(t):
    T, B, F_IN, H = 100, 32, 128, 128
    torch.manual_seed(1)
    ref, new = pair(F_IN, H, 1, False)
    lengths = torch.randint(T // 2, T + 1, (B,))
    lengths[0] = T
    x = torch.randn(T, B, F_IN, requires_grad=True)
    p0 = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    p = PackedSequence(
        p0.data.clone().requires_grad_(), p0.batch_sizes, p0.sorted_indices, p0.unsorted_indices
    )
    rows = []
    for mode in ("fwd", "fwdbwd"):
        fns = [
            lambda mode=mode: run_mode(ref, p, mode),
            lambda mode=mode: run_mode(new, p, mode),
            lambda mode=mode: run_mode(new, x, mode),
        ]
        a, b, c = interleave(fns, t)
        rows.append(("packed", mode, a, b))
        rows.append(("packed", mode + " new-padded", c, b))
    return rows


def bench_cell(t):
    torch.manual_seed(2)
    ref = nn.RNNCell(100, 20)
    new = rnnext.RNNCell(100, 20)
    new.load_state_dict(ref.state_dict())
    x, h = torch.randn(3, 100), torch.randn(3, 20)
    rows = []
    with torch.no_grad():
        a, b = interleave([lambda: ref(x, h), lambda: new(x, h)], t)
    rows.append(("cell", "fwd", a, b))
    xg = x.clone().requires_grad_()
    a, b = interleave([lambda: ref(xg, h).sum().backward(), lambda: new(xg, h).sum().backward()], t)
    rows.append(("cell", "fwdbwd", a, b))
    return rows


def bench_overhead(t):
    """The tutorial shape, no_grad: module vs functional vs the op alone vs nn.RNN."""
    T, B, F_IN, H = CASES["tutorial"][:4]
    ref, new = pair(F_IN, H, 1, False)
    x = torch.randn(T, B, F_IN)
    h0 = torch.zeros(1, B, H)
    w = [p.detach() for p in new._flat_weights]
    op = torch.ops.rnnext.rnn_forward.default
    with torch.no_grad():
        r = interleave(
            [
                lambda: ref(x),
                lambda: new(x),
                lambda: rnnext.functional.rnn(x, h0, w),
                lambda: op(x, None, h0[0], w[0], w[1], w[2], w[3], False, False),
            ],
            t,
        )
    names = ["nn.RNN", "rnnext.RNN", "functional.rnn", "op direct"]
    return [("overhead", n, r[0], v) for n, v in zip(names, r)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--time", type=float, default=0.6)
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with process CPU time (steadier on a loaded machine; use with --threads 1)",
    )
    args = ap.parse_args()
    if args.cpu_time:
        TIMER["timer"] = time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock = "process CPU time" if args.cpu_time else "wall time"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, threads {threads}, float32, CPU (shared machine), {clock}")
    want = [s for s in args.only.split(",") if s] or DEFAULT + ["packed", "cell", "overhead"]
    print(f"{'case':>11} {'mode':>20} {'ref ms':>9} {'rnnext ms':>10} {'ratio':>7}")
    for name in want:
        if name in CASES:
            rows = bench_case(name, args.time)
        elif name == "packed":
            rows = bench_packed(args.time)
        elif name == "cell":
            rows = bench_cell(args.time)
        elif name == "overhead":
            rows = bench_overhead(args.time)
        else:
            raise SystemExit(f"unknown case {name}")
        for case, mode, a, b in rows:
            print(f"{case:>11} {mode:>20} {a * 1e3:9.4f} {b * 1e3:10.4f} {a / b:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
