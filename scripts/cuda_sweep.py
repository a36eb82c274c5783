"""GPU micro-benchmarks of the CUDA recurrence (scripts/gpu_check.sh's `sync` and `sweep` stages).
Not a test and not the benchmark suite (that is ``python -m benchmarks``): numbers to choose the
tiled kernel's plan from, on the next GPU session (issue 14).

    python scripts/cuda_sweep.py sync    # per-step cost of the step barrier / exchange per path
    python scripts/cuda_sweep.py sweep   # RNNEXT_CUDA_TILE="C,BT,KS" over shapes, with a check

sync: the forward op at H = 256 float32, B = 1 and 8, for T = 64 and T = 1088; the difference over
1024 steps is the time of one step, most of it the barrier and the exchange of h: "smem" (one CTA,
__syncthreads), "cluster" (C CTAs, scalar DSMEM stores and a cluster barrier) and "tiled" with C = 1,
2, 4, 8 (16-byte DSMEM stores and per-buffer mbarriers).
sweep: for each shape, every valid (C, BT, KS) of the tiled kernel: forward time (median of CUDA
event timings) and the largest difference from the default path's output (float32; the tiled kernel
must agree to rounding); then the default path and cuDNN (nn.RNN) on the same shape.
Each line is printed (flushed) as soon as it is measured, so a run cut short keeps what it did.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch

import rnnext  # noqa: F401 - registers torch.ops.rnnext

FWD = torch.ops.rnnext.rnn_forward.default
BUDGET = float(os.environ.get("CUDA_SWEEP_BUDGET", "40"))  # seconds per subcommand
START = time.monotonic()
MISMATCHES = 0


@contextlib.contextmanager
def env(**kv: str | None):
    old = {k: os.environ.get(k) for k in kv}
    for k, v in kv.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def timed(fn, reps: int = 7) -> float:
    """Median milliseconds of fn() by CUDA events, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def args(T: int, B: int, H: int, In: int = 64, dtype=torch.float32):
    g = torch.Generator(device="cuda").manual_seed(T * 7 + B * 3 + H)
    k = H ** -0.5
    x = torch.randn(T, B, In, device="cuda", dtype=dtype, generator=g)
    h0 = torch.randn(B, H, device="cuda", dtype=dtype, generator=g) * 0.5
    w_ih = torch.randn(H, In, device="cuda", dtype=dtype, generator=g) * k
    w_hh = torch.randn(H, H, device="cuda", dtype=dtype, generator=g) * k
    b = torch.randn(H, device="cuda", dtype=dtype, generator=g) * k
    return x, None, h0, w_ih, w_hh, b, b


def out_of_time() -> bool:
    return time.monotonic() - START > BUDGET


def sync() -> None:
    H = 256
    print(f"# sync: us per step = (t(T=1088) - t(T=64)) / 1024, forward, H={H} float32", flush=True)
    print(f"{'path':<22} {'B':>3} {'plan':<22} {'us/step':>8}", flush=True)
    configs = [("smem", None), ("cluster", None)] + [("tiled", f"{c},4,4") for c in (1, 2, 4, 8)]
    for B in (1, 8):
        short, long_ = args(64, B, H), args(1088, B, H)
        for path, tile in configs:
            if out_of_time():
                print("# time budget spent", flush=True)
                return
            with env(RNNEXT_CUDA_PATH=path, RNNEXT_CUDA_TILE=tile):
                plan = rnnext._C._cuda_path("float32", B, H, False)
                with torch.no_grad():
                    t0 = timed(lambda a=short: FWD(*a, False, False))
                    t1 = timed(lambda a=long_: FWD(*a, False, False))
            name = path + (f" C={tile.split(',')[0]}" if tile else "")
            print(f"{name:<22} {B:>3} {plan:<22} {1000 * (t1 - t0) / 1024:>8.3f}", flush=True)


def sweep() -> None:
    global MISMATCHES
    shapes = [(100, 1, 256), (100, 64, 256), (100, 256, 256), (100, 64, 512), (100, 16, 128)]
    print("# sweep: forward ms (median of 7), float32, In=64; diff = max |tiled - default path|", flush=True)
    print(f"{'T':>4} {'B':>4} {'H':>5}  {'impl':<26} {'ms':>8} {'diff':>9}", flush=True)
    for T, B, H in shapes:
        a = args(T, B, H)
        with torch.no_grad():
            ref, ref_hn = FWD(*a, False, False)
            base = timed(lambda a=a: FWD(*a, False, False))
            plan = rnnext._C._cuda_path("float32", B, H, False)
            print(f"{T:>4} {B:>4} {H:>5}  {'default ' + plan:<26} {base:>8.3f} {0:>9.1e}", flush=True)
            rnn = torch.nn.RNN(64, H).cuda()
            with torch.backends.cudnn.flags(allow_tf32=False):
                cud = timed(lambda a=a, rnn=rnn: rnn(a[0], a[2][None]))
            print(f"{T:>4} {B:>4} {H:>5}  {'cudnn (fp32, no tf32)':<26} {cud:>8.3f} {'':>9}", flush=True)
            for C in (1, 2, 4, 8):
                for BT in (4, 8, 16, 32, 64):
                    if BT > max(4, 4 * -(-B // 4)):
                        continue
                    for KS in (1, 2, 4, 8):
                        if out_of_time():
                            print("# time budget spent", flush=True)
                            return
                        tile = f"{C},{BT},{KS}"
                        with env(RNNEXT_CUDA_PATH="tiled", RNNEXT_CUDA_TILE=tile):
                            name = rnnext._C._cuda_path("float32", B, H, False)
                            if name == "fallback":
                                continue  # this (C, BT, KS) does not fit
                            out, hn = FWD(*a, False, False)
                            diff = max(float((out - ref).abs().max()), float((hn - ref_hn).abs().max()))
                            ms = timed(lambda a=a: FWD(*a, False, False))
                        if not diff < 1e-4:
                            MISMATCHES += 1
                        print(f"{T:>4} {B:>4} {H:>5}  {name + ' ' + tile:<26} {ms:>8.3f} {diff:>9.1e}"
                              + ("  MISMATCH" if not diff < 1e-4 else ""), flush=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_sweep: CUDA is not available", file=sys.stderr)
        return 1
    what = sys.argv[1] if len(sys.argv) > 1 else "sweep"
    {"sync": sync, "sweep": sweep}[what]()
    if MISMATCHES:
        print(f"cuda_sweep: {MISMATCHES} tiled plans disagree with the default path", file=sys.stderr)
    return 2 if MISMATCHES else 0


if __name__ == "__main__":
    sys.exit(main())
