"""A few small calls of every CUDA kernel (each recurrence path, padded and packed, forward and
backward, both directions, float32 and float16), for compute-sanitizer runs (scripts/gpu_check.sh's
racecheck and memcheck stages). Not a benchmark and not a test: it checks nothing but that the calls
return; the sanitizer checks the memory accesses.

    compute-sanitizer --tool memcheck python scripts/cuda_smoke.py
"""

from __future__ import annotations

import os
import sys

import torch

import rnnext  # noqa: F401 - registers torch.ops.rnnext

PATHS = ("persistent", "smem", "cluster", "tiled", "fallback")  # RNNEXT_CUDA_PATH, read by the glue per call


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda_smoke: CUDA is not available", file=sys.stderr)
        return 1
    fwd, bwd = torch.ops.rnnext.rnn_forward.default, torch.ops.rnnext.rnn_backward.default
    torch.manual_seed(0)
    old = os.environ.get("RNNEXT_CUDA_PATH")
    try:
        for path in PATHS:
            os.environ["RNNEXT_CUDA_PATH"] = path
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
    finally:
        if old is None:
            os.environ.pop("RNNEXT_CUDA_PATH", None)
        else:
            os.environ["RNNEXT_CUDA_PATH"] = old
    torch.cuda.synchronize()
    print("cuda_smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
