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
