"""Timing: interleaved blocks of calls, the references (FMA peak, torch.mm rate), median and IQR.

A *block* is ``number`` back-to-back calls of one implementation, timed as a whole; one block gives
one sample, seconds per call. The clock depends on the device:

- CPU: ``torch.utils.benchmark.Timer.timeit(number)``;
- CUDA: a pair of CUDA events recorded on the current stream around the block, after a device
  synchronisation, read after the end event completes (the calls inside a block queue
  asynchronously, as they would in a real program; the host's launch overhead counts only where
  it starves the GPU).

Method, per (case, mode):

1. warm-up: each implementation runs ``warmup_calls`` times, or fewer if that takes over
   ``warmup_s`` (at least once; the equivalence check before it has already run it once);
2. calibration: per implementation, the number of calls per block is chosen so that one block takes
   about ``block_s`` (one call per block for calls longer than that);
3. rounds: in each round every implementation times one block, in an order rotated every round, so
   slow drifts in the machine's speed (other processes, frequency) hit every implementation alike;
   rounds go on until at least ``min_rounds`` are done and ``budget_s`` has passed (at most
   ``max_rounds``); for slow calls (seconds each) rounds stop after ``cap_s`` once ``floor_rounds``
   are done;
4. the result is the median of the samples and their interquartile range (IQR = 75th - 25th
   percentile).

An implementation whose idle worker threads spin after each call (ONNX Runtime's default) would
take a core from whichever block follows it; such a one (``Impl.alone``) is timed after the others,
in rounds of its own, with ``SETTLE_S`` of quiet before and after.

Threads: ``torch.utils.benchmark.Timer`` sets torch's intra-op thread count around every timed block
to its ``num_threads`` argument, which defaults to **1**, whatever ``torch.set_num_threads`` said
before. Every block here (CPU or CUDA), its warm-up and its calibration run on the run's thread count
(``threads``, default ``torch.get_num_threads()`` at the call), so a timed block runs on the threads
the results report (tests/test_benchmarks.py checks what a block sees).
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.utils.benchmark as tb

__all__ = ["TimingConfig", "Stats", "interleaved", "gemm_gflops", "fma_peak", "stats", "SETTLE_S"]

# Seconds to wait after an implementation whose idle threads spin after each call (ONNX Runtime:
# ~30 ms of CPU after its last run) before another is timed.
SETTLE_S = 0.1


@dataclass(frozen=True)
class TimingConfig:
    """How long to time: per-block target, rounds, per-(case, mode) time budget, warm-up calls."""

    block_s: float = 0.02
    min_rounds: int = 5
    max_rounds: int = 200
    budget_s: float = 2.0
    warmup_calls: int = 3
    warmup_s: float = 0.3
    cap_s: float = 30.0
    floor_rounds: int = 3

    @staticmethod
    def quick() -> TimingConfig:
        return TimingConfig(block_s=0.005, min_rounds=3, max_rounds=20, budget_s=0.1, warmup_calls=1,
                            warmup_s=0.05, cap_s=5.0, floor_rounds=3)


@dataclass(frozen=True)
class Stats:
    """Seconds per call: median, IQR, number of samples (blocks) and calls per block."""

    median: float
    iqr: float
    samples: int
    number: int


def stats(samples: list[float], number: int) -> Stats:
    """Median and IQR (``statistics.quantiles``, inclusive method) of the per-call samples."""
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = samples[0]
    return Stats(statistics.median(samples), q3 - q1, len(samples), number)


def _threads(threads: Optional[int]) -> int:
    return torch.get_num_threads() if threads is None else threads


@contextlib.contextmanager
def on_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Blocks:
    """Times blocks of ``number`` calls of ``fn`` on ``threads`` threads: seconds per call."""

    def __init__(self, fn: Callable[[], object], threads: int, device: torch.device) -> None:
        self.fn, self.threads, self.cuda = fn, threads, device.type == "cuda"
        self.timer = None if self.cuda else tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)

    def __call__(self, number: int) -> float:
        if self.timer is not None:
            return self.timer.timeit(number).mean
        with on_threads(self.threads):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                self.fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3 / number

    def calibrate(self, block_s: float) -> int:
        """Calls per block so that a block lasts about ``block_s`` (at least 1)."""
        number = 1
        while True:
            per_call = self(number)
            if per_call * number >= block_s / 5 or number >= 1_000_000:
                return max(1, min(1_000_000, math.ceil(block_s / max(per_call, 1e-9))))
            number *= 10


def interleaved(
    fns: dict[str, Callable[[], object]],
    cfg: TimingConfig,
    on_round: Callable[[int], None] = lambda r: None,
    threads: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> dict[str, Stats]:
    """Time every callable in ``fns`` in interleaved rounds (see the module docstring) on ``device``'s
    clock (default: the CPU), on ``threads`` intra-op threads (default: ``torch.get_num_threads()`` now)."""
    threads = _threads(threads)
    device = torch.device("cpu") if device is None else device
    names = list(fns)
    with on_threads(threads):  # the warm-up too runs on the timed thread count
        for name in names:
            t0 = time.perf_counter()
            for _ in range(max(1, cfg.warmup_calls)):
                fns[name]()
                if time.perf_counter() - t0 > cfg.warmup_s:
                    break
    blocks = {name: _Blocks(fns[name], threads, device) for name in names}
    numbers = {name: blocks[name].calibrate(cfg.block_s) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while True:
        elapsed = time.perf_counter() - start
        if rounds >= cfg.max_rounds or (rounds >= cfg.floor_rounds and elapsed > cfg.cap_s):
            break
        if rounds >= cfg.min_rounds and elapsed >= cfg.budget_s:
            break
        k = rounds % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(blocks[name](numbers[name]))
        rounds += 1
        on_round(rounds)
    return {name: stats(samples[name], numbers[name]) for name in names}


def gemm_gflops(dtype: torch.dtype, device: torch.device, min_run_time: float = 1.0,
                threads: Optional[int] = None) -> float:
    """torch's GEMM rate: ``torch.mm`` on square matrices (n = 2048 on CPU, 8192 on CUDA) at this dtype
    on ``threads`` threads, timed as the implementations are; GFLOP/s = 2 n^3 / median seconds / 1e9.
    A second reference (the BLAS torch uses: MKL on x86 CPUs, which may take a narrower ISA than the
    CPU runs), not the ceiling: see :func:`fma_peak`."""
    n = 2048 if device.type == "cpu" else 8192
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    cfg = TimingConfig(block_s=min_run_time / 5, min_rounds=3, max_rounds=20, budget_s=min_run_time,
                       warmup_calls=2, warmup_s=min_run_time, cap_s=3 * min_run_time, floor_rounds=3)
    st = interleaved({"mm": lambda: torch.mm(a, b)}, cfg, threads=threads, device=device)["mm"]
    return 2.0 * n**3 / st.median / 1e9


def fma_peak(dtype: torch.dtype, seconds: float = 0.2, threads: Optional[int] = None,
             isa: str = "") -> tuple[float, int, str]:
    """The CPU's FMA peak in GFLOP/s at ``dtype`` (float32 / float64): register-only FMA chains on
    ``threads`` of torch's threads, the widest ISA the CPU runs unless ``isa`` names one
    (``rnnext._C._fma_peak``, csrc/cpu/peak.cpp). Returns (GFLOP/s, threads that ran, ISA)."""
    from rnnext import _C

    with on_threads(_threads(threads)):
        return _C._fma_peak(str(dtype).replace("torch.", ""), isa, seconds)
