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

_cache = tempfile.mkdtemp(prefix="rnnext-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_cache, ignore_errors=True)
