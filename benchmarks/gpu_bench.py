"""GPU benchmark: rnnext.RNN against torch.nn.RNN (cuDNN) on the same GPU, with the same weights.

torch.nn.RNN runs cuDNN for the dtypes torch.backends.cudnn.is_acceptable accepts, else ATen's
native CUDA implementation; the results record which.

Method: CUDA-event timing of single calls, implementations interleaved call by call, after a warm-up;
the median and the inter-quartile range over the repeats are reported. Outputs are compared before
anything is timed. "fwd" is a forward under no_grad; "fwd+bwd" is a forward plus
torch.autograd.grad of the input and every parameter (no .grad accumulation). rnnext is timed with
its automatic path choice and, as a third column, forced onto its per-step GEMM fallback
(RNNEXT_CUDA_PATH=fallback), which shows what the persistent kernel buys.

torch's default math settings are kept (cuDNN may use TF32 for float32 when
torch.backends.cudnn.allow_tf32 is True, the default; rnnext's float32 never does): the JSON records
the flags. GFLOP/s counts 2 * rows * (I*H + H*H) per layer and direction (forward) and three times
that for fwd+bwd.

    python benchmarks/gpu_bench.py [--out DIR] [--quick] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnext

CASES = [  # T, B, I, H, layers, bidirectional, packed
    dict(T=10, B=3, I=100, H=20),
    dict(T=100, B=1, I=64, H=64),
    dict(T=100, B=32, I=128, H=128),
    dict(T=100, B=64, I=256, H=256),
    dict(T=50, B=128, I=1024, H=1024),
    dict(T=100, B=32, I=128, H=128, layers=2, bidirectional=True),
    dict(T=100, B=32, I=128, H=128, packed=True),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FALLBACK_ENV = "RNNEXT_CUDA_PATH"
DEVICE = "cuda"  # tests of this script may point it elsewhere


def _case_name(c: dict) -> str:
    s = f"T={c['T']} B={c['B']} I={c['I']} H={c['H']}"
    if c.get("layers", 1) > 1:
        s += f" L={c['layers']}"
    if c.get("bidirectional"):
        s += " bidir"
    if c.get("packed"):
        s += " packed"
    return s


def predicted_path(B: int, H: int, dtype: torch.dtype) -> str:
    """Mirror of make_plan() in csrc/cuda/rnn_kernels.cu (automatic choice), for the table only."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    smem = getattr(props, "shared_memory_per_block_optin", 227 * 1024)
    sms = props.multi_processor_count
    acc = 8 if dtype == torch.float64 else 4
    if acc == 4 and H <= 128 and -(-B // sms) <= 8:
        return "regs"
    w_size = 2 if dtype in (torch.float16, torch.bfloat16) else acc  # W_hh kept in its own dtype
    for C in (1, 2, 4, 8) if props.major >= 9 else (1,):
        R = -(-H // C)
        tile = -(-B * C // sms)
        w_bytes, entry = (R * (H + 31) * w_size + 15) // 16 * 16, 2 * H * acc
        if w_bytes + entry > smem:
            continue
        if tile > (smem - w_bytes) // entry or tile > 16:
            continue
        return "smem" if C == 1 else f"cluster{C}"
    return "fallback"


def flops(c: dict, rows: int) -> float:
    D = 2 if c.get("bidirectional") else 1
    total, inp = 0.0, c["I"]
    for _ in range(c.get("layers", 1)):
        total += D * 2.0 * rows * (inp * c["H"] + c["H"] * c["H"])
        inp = D * c["H"]
    return total


def time_interleaved(fns: dict[str, Callable[[], None]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Milliseconds per call for each function, timed with CUDA events, interleaved call by call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[k].append(start.elapsed_time(end))
    return times


def _stats(ts: list[float]) -> dict:
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "n": len(ts)}


class _ForcedPath:
    """Context manager setting RNNEXT_CUDA_PATH (read by the C++ glue at every call)."""

    def __init__(self, value: Optional[str]):
        self.value, self.old = value, None

    def __enter__(self):
        self.old = os.environ.get(FALLBACK_ENV)
        if self.value is None:
            os.environ.pop(FALLBACK_ENV, None)
        else:
            os.environ[FALLBACK_ENV] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop(FALLBACK_ENV, None)
        else:
            os.environ[FALLBACK_ENV] = self.old


def bench_case(c: dict, dtype_name: str, warmup: int, reps: int) -> list[dict]:
    dtype = DTYPES[dtype_name]
    dev = DEVICE
    T, B, In, H = c["T"], c["B"], c["I"], c["H"]
    kw = dict(num_layers=c.get("layers", 1), bidirectional=c.get("bidirectional", False))
    torch.manual_seed(0)
    ref = nn.RNN(In, H, **kw).to(dev, dtype)
    new = rnnext.RNN(In, H, **kw).to(dev, dtype)
    new.load_state_dict(ref.state_dict())
    D = 2 if kw["bidirectional"] else 1
    h0 = torch.randn(kw["num_layers"] * D, B, H, device=dev, dtype=dtype) * 0.5
    if c.get("packed"):
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[0] = T
        padded = torch.randn(T, B, In, device=dev, dtype=dtype)
        p0 = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        data = p0.data.detach().clone().requires_grad_(True)
        x = PackedSequence(data, p0.batch_sizes, p0.sorted_indices, p0.unsorted_indices)
        leaf, rows = data, int(lengths.sum())
    else:
        x = torch.randn(T, B, In, device=dev, dtype=dtype, requires_grad=True)
        leaf, rows = x, T * B

    # Correctness first (loose: bf16 and TF32 cuDNN differ from rnnext by rounding).
    with torch.no_grad():
        o_ref, h_ref = ref(x, h0)
        o_new, h_new = new(x, h0)
    o_ref = o_ref.data if isinstance(o_ref, PackedSequence) else o_ref
    o_new = o_new.data if isinstance(o_new, PackedSequence) else o_new
    max_diff = max(float((o_ref.float() - o_new.float()).abs().max()),
                   float((h_ref.float() - h_new.float()).abs().max()))

    def out_of(m):
        o, h = m(x, h0)
        return (o.data if isinstance(o, PackedSequence) else o), h

    with torch.no_grad():
        go_shape = out_of(ref)[0].shape
    go = torch.randn(go_shape, device=dev, dtype=dtype)
    ghn = torch.randn_like(h0)

    def fwd(m):
        def run():
            with torch.no_grad():
                m(x, h0)
        return run

    def fwd_bwd(m):
        params = [leaf] + list(m.parameters())

        def run():
            o, h = out_of(m)
            torch.autograd.grad([o, h], params, [go, ghn])
        return run

    def fallback(fn):
        def run():
            with _ForcedPath("fallback"):
                fn()
        return run

    rows_out = []
    for mode, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        fns = {"torch_nn": make(ref), "rnnext": make(new), "rnnext_fallback": fallback(make(new))}
        times = time_interleaved(fns, warmup, reps)
        st = {k: _stats(v) for k, v in times.items()}
        work = flops(c, rows) * (1 if mode == "fwd" else 3)
        rows_out.append({
            "case": _case_name(c), **c, "dtype": dtype_name, "mode": mode,
            "path": predicted_path(B, H, dtype), "max_abs_diff_fwd": max_diff,
            "torch_nn_uses_cudnn": bool(torch.backends.cudnn.is_acceptable(leaf.detach())),
            "torch_nn": st["torch_nn"], "rnnext": st["rnnext"], "rnnext_fallback": st["rnnext_fallback"],
            "speedup": st["torch_nn"]["median_ms"] / st["rnnext"]["median_ms"],
            "rnnext_gflops": work / (st["rnnext"]["median_ms"] * 1e-3) / 1e9,
        })
    return rows_out


def environment() -> dict:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "gpu": props.name, "sms": props.multi_processor_count,
        "smem_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "python": sys.version.split()[0],
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [
        f"# rnnext vs torch.nn.RNN (cuDNN) on {env['gpu']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['time']}; "
        f"cudnn.allow_tf32={env['cudnn_allow_tf32']}. Median ms per call (IQR) over CUDA-event timed "
        "repeats after warm-up, implementations interleaved. `path`: rnnext's automatic choice.",
        "",
        "`torch.nn` is nn.RNN: cuDNN where torch.backends.cudnn.is_acceptable (`cudnn` column), "
        "else ATen's native CUDA RNN.",
        "",
        "| case | dtype | mode | path | torch.nn ms | cudnn | rnnext ms | rnnext fallback ms | speedup | "
        "rnnext GFLOP/s | max diff |",
        "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['dtype']} | - | - | error: {r['error']} | | | | | | |")
            continue

        def cell(s):
            return f"{s['median_ms']:.3f} ({s['q1_ms']:.3f}-{s['q3_ms']:.3f})"

        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['mode']} | {r['path']} | {cell(r['torch_nn'])} | "
            f"{'yes' if r['torch_nn_uses_cudnn'] else 'no'} | "
            f"{cell(r['rnnext'])} | {cell(r['rnnext_fallback'])} | {r['speedup']:.2f}x | "
            f"{r['rnnext_gflops']:.0f} | {r['max_abs_diff_fwd']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def smoke() -> None:
    """A few small calls of every kernel (both paths, padded and packed, forward and backward), for
    compute-sanitizer (memcheck / racecheck) runs."""
    fwd, bwd = torch.ops.rnnext.rnn_forward.default, torch.ops.rnnext.rnn_backward.default
    torch.manual_seed(0)
    for path in ("persistent", "smem", "cluster", "fallback"):
        with _ForcedPath(path):
            for dtype in (torch.float32, torch.float16):
                for packed in (False, True):
                    T, B, In, H = 5, 3, 4, 19
                    if packed:
                        bs = torch.tensor([3, 3, 2, 1, 1])
                        x = torch.randn(int(bs.sum()), In, device="cuda", dtype=dtype)
                    else:
                        bs, x = None, torch.randn(T, B, In, device="cuda", dtype=dtype)
                    h0 = torch.randn(B, H, device="cuda", dtype=dtype)
                    w_ih = torch.randn(H, In, device="cuda", dtype=dtype) * 0.3
                    w_hh = torch.randn(H, H, device="cuda", dtype=dtype) * 0.3
                    b = torch.randn(H, device="cuda", dtype=dtype)
                    for reverse in (False, True):
                        out, hn = fwd(x, bs, h0, w_ih, w_hh, b, b, False, reverse)
                        bwd(torch.randn_like(out), torch.randn_like(hn), x, bs, h0, w_ih, w_hh, out,
                            False, reverse, [True] * 5)
    torch.cuda.synchronize()
    print("smoke: ok")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--smoke", action="store_true", help="only run every kernel once (for sanitizers)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench: CUDA is not available", file=sys.stderr)
        return 1
    if args.smoke:
        smoke()
        return 0
    warmup, reps = (3, 10) if args.quick else (5, 25)
    env = environment()
    print(json.dumps(env))
    rows: list[dict] = []
    for c in CASES:
        for dname in DTYPES:
            t0 = time.time()
            try:
                rs = bench_case(c, dname, warmup, reps)
            except Exception as e:  # keep going: one failing case must not hide the others
                rs = [{"case": _case_name(c), **c, "dtype": dname, "error": f"{type(e).__name__}: {e}"}]
            for r in rs:
                rows.append(r)
                if "error" in r:
                    print(f"{r['case']:<36} {dname:<9} ERROR {r['error']}", flush=True)
                else:
                    print(f"{r['case']:<36} {dname:<9} {r['mode']:<8} {r['path']:<10} "
                          f"torch.nn {r['torch_nn']['median_ms']:8.3f} ms  "
                          f"rnnext {r['rnnext']['median_ms']:8.3f} ms  "
                          f"fallback {r['rnnext_fallback']['median_ms']:8.3f} ms  {r['speedup']:5.2f}x  "
                          f"diff {r['max_abs_diff_fwd']:.1e}", flush=True)
            print(f"  ({time.time() - t0:.1f} s)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    gpu_tag = env["gpu"].replace(" ", "_").replace("/", "_")
    with open(os.path.join(args.out, f"gpu_bench_{gpu_tag}.json"), "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=1)
    md = markdown(env, rows)
    with open(os.path.join(args.out, f"gpu_bench_{gpu_tag}.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
