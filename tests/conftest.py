"""Session-wide test setup.

torch.compile's on-disk caches (Inductor's FX graph cache, AOT autograd's cache) live under
/tmp/torchinductor_$USER by default: on a developer's machine a warm cache skips the tracing that a
clean CI machine does, and once hid a backward that failed to trace. Every test session gets a
fresh, private cache directory, so a local run traces exactly what CI traces.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

_cache = tempfile.mkdtemp(prefix="rnnext-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_cache, ignore_errors=True)


@pytest.fixture
def still_works():
    """A check, for after an error: the process keeps running, and rnnext still computes torch.nn's
    numbers and gradients (a 2-layer float64 RNN)."""

    def check() -> None:
        import rnnext

        torch.manual_seed(0)
        ref = torch.nn.RNN(3, 4, 2, dtype=torch.float64)
        ours = rnnext.RNN(3, 4, 2, dtype=torch.float64)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(4, 2, 3, dtype=torch.float64)
        got, want = list(ours(x)), list(ref(x))
        (got[0].sum() + got[1].sum()).backward()
        (want[0].sum() + want[1].sum()).backward()
        got += [p.grad for p in ours.parameters()]
        want += [p.grad for p in ref.parameters()]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    return check


@pytest.fixture
def set_threads():
    """torch.set_num_threads for one test: call it with a count (as often as the test needs); the
    count from before the test is put back after it, whatever the test did."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=_NO_CUDA)])
def device(request):
    """The device a behaviour test runs on: the CPU, and CUDA when present (skipped otherwise).

    On CUDA, TF32 is off in cuDNN and cuBLAS for the whole test (forward and backward, ours and
    torch.nn's): TF32 is a 1e-3 error, and a comparison must see the kernels' own precision."""
    if request.param != "cuda":
        yield request.param
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield request.param
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


# tests/test_cuda.py's tolerances for a CUDA result against torch.nn (cuDNN, or the CPU in float64):
# our kernels and cuDNN sum in other orders than the CPU reference.
_CUDA_TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-5)}


@pytest.fixture
def close(device):
    """``torch.testing.assert_close`` with the test's own (CPU) tolerances on the CPU; on CUDA with
    tests/test_cuda.py's: float64 1e-9 (rtol and atol), float32 rtol 1e-4 and atol 1e-5 times
    (1 + the expected tensor's largest magnitude), as gradients are sums over every step and batch
    entry. ``dtype``: the precision the result was computed in (default: ``actual``'s). ``slack``:
    added to atol, for an ``expected`` that is itself off the truth by that much (cuDNN's float32)."""

    def check(actual, expected, *, rtol, atol, dtype=None, slack=0.0):
        if device == "cuda":
            dtype = dtype or actual.dtype
            rtol, atol = _CUDA_TOL[dtype]
            if dtype == torch.float32 and expected.numel():
                atol *= 1.0 + float(expected.detach().abs().max())
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol + slack)

    return check
