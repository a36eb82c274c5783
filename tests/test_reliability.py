"""Reliability of rnnext under abuse: memory, threads, determinism, extremes and half types.

Every comparison is against the installed ``torch.nn`` at test time (values, NaN masks, error
texts), never against copied numbers or strings.

============================  =====================================================================
section                       what can make it fail
============================  =====================================================================
memory                        RSS growing over 200 training steps; an op keeping a reference to a
                              tensor it returned; inference allocating more than its outputs
threads                       concurrent calls on one module differing from serial calls
determinism                   two identical runs differing in any bit (outputs, every gradient)
extremes                      20,001-step sequences, size-1 dimensions, NaN/Inf/huge values
                              propagating differently from torch.nn; sizes past 2^31
half types                    float16/bfloat16 numbers that differ from torch.nn's, or an unclear
                              error (bad input: tests/test_rnn_errors.py; the raw ops' own
                              errors: tests/test_op_errors.py)
============================  =====================================================================

The test of a real tensor past 2^31 elements needs ~10 GB of RAM and runs only with
``RNNEXT_BIG_TESTS=1`` (it is reported as skipped otherwise, never as passed).
"""

from __future__ import annotations

import gc
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnext

F64 = {"rtol": 1e-10, "atol": 1e-10}
F32 = {"rtol": 1e-5, "atol": 1e-5}


def _tol(dtype: torch.dtype) -> dict:
    return F64 if dtype == torch.float64 else F32


def _pair(*args, dtype=torch.float64, **kwargs) -> tuple[nn.RNN, rnnext.RNN]:
    ref = nn.RNN(*args, dtype=dtype, **kwargs)
    ours = rnnext.RNN(*args, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _fwd_bwd(module: nn.Module, x, hx=None, lengths=None, enforce_sorted=True, seed=0):
    """Output, h_n and the gradients (input, hx, every parameter) of a random functional."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    h = hx.detach().clone().requires_grad_(True) if hx is not None else None
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=enforce_sorted)
    out, h_n = module(inp, h)
    out_t = out.data if lengths is not None else out
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out_t.shape, generator=gen, dtype=out_t.dtype).to(out_t.device)
    w_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    ((out_t * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = [x.grad, h.grad if h is not None else None] + [p.grad for p in module.parameters()]
    return [out_t.detach(), h_n.detach()] + grads


def _assert_same_as_reference(ours: list, ref: list, tol: dict, what: str = "") -> None:
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        if b is None:
            assert a is None, f"{what}[{i}]: rnnext has a tensor where torch.nn has None"
            continue
        assert torch.equal(a.isnan(), b.isnan()), f"{what}[{i}]: NaN positions differ from torch.nn"
        assert torch.equal(a.isinf() & (a > 0), b.isinf() & (b > 0)), f"{what}[{i}]: +Inf positions differ"
        assert torch.equal(a.isinf() & (a < 0), b.isinf() & (b < 0)), f"{what}[{i}]: -Inf positions differ"
        torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=lambda m, i=i: f"{what}[{i}]: {m}")


def test_the_loaded_extension_is_the_expected_build() -> None:
    """Guards the sanitizer run (scripts/sanitize.sh sets RNNEXT_EXPECT_C): the suite must run
    against the instrumented build, not an in-place one that happens to be importable."""
    path = os.path.realpath(rnnext._C.__file__)
    assert os.path.basename(path).startswith("_C"), path
    expect = os.environ.get("RNNEXT_EXPECT_C")
    if expect is not None:
        assert os.path.realpath(rnnext._C.__file__).startswith(os.path.realpath(expect)), (path, expect)


# ------------------------------------------------------------------------------------------------
# Memory
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread(set_threads):
    """One intra-op thread: memory does not depend on it, and on a busy machine OpenMP's spinning
    threads make each step erratically slow."""
    set_threads(1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc/self/statm")
@pytest.mark.skipif(
    "libasan" in os.environ.get("LD_PRELOAD", ""),
    reason="under ASan freed memory sits in its quarantine (256 MB), so RSS grows by design",
)
def test_training_steps_do_not_grow_resident_memory(one_thread) -> None:
    torch.manual_seed(0)
    # Wide but thin (C = H = 4): much memory per step, little arithmetic and few time steps.
    T, B, C, H = 64, 256, 4, 4
    rnn = rnnext.RNN(C, H, num_layers=2, bidirectional=True, dropout=0.1)
    head = nn.Linear(2 * H, 1)
    opt = torch.optim.SGD(list(rnn.parameters()) + list(head.parameters()), lr=1e-3)
    x = torch.randn(T, B, C)
    y = torch.randn(T, B, 1)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        if i % 2:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            out, h_n = rnn(packed)
            loss = head(out.data).square().mean() + h_n.square().mean()
        else:
            out, h_n = rnn(x, torch.randn(4, B, H))
            loss = (head(out) - y).square().mean() + h_n.square().mean()
        loss.backward()
        opt.step()

    for i in range(30):  # warm-up: allocator pools, thread pools, lazy initialisation
        step(i)
    gc.collect()
    start = _rss_bytes()
    samples = []
    for i in range(150):
        step(i)
        if i % 50 == 49:
            gc.collect()
            samples.append(_rss_bytes() - start)
    # One leaked layer output per step would be 64*256*8*4 B = 512 KiB: 50 MiB from the first
    # sample to the last (100 steps), 75 MiB over all 150. A leak grows with the steps; the
    # allocator (arenas, mmap thresholds) may take a few MiB once, early: a CI run saw 16.0, 18.7
    # and 18.8 MiB at steps 50, 100 and 150, flat after the first sample. So the growth from the
    # first sample to the last is bounded tightly (8 MiB: 80 KiB a step), the total loosely.
    grown = f"RSS grew by {[s // 1024 for s in samples]} KiB at steps 50, 100 and 150"
    assert samples[-1] - samples[0] < 8 * 2**20, grown
    assert max(samples) < 48 * 2**20, grown


@pytest.mark.parametrize("packed", [False, True])
def test_ops_keep_no_reference_to_their_results(packed: bool) -> None:
    """A tensor the op returned (or a gradient) dies when the caller drops it. torch keeps a Python
    tensor object alive while C++ still holds its TensorImpl, so a weakref sees a leaked ref."""
    torch.manual_seed(0)
    rnn = rnnext.RNN(5, 7, num_layers=2, bidirectional=True)
    x = torch.randn(6, 3, 5, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([6, 4, 2])) if packed else x
    out, h_n = rnn(inp)
    data = out.data if packed else out
    ((data * 1.5).sum() + h_n.sum()).backward()
    refs = [weakref.ref(t) for t in (data, h_n, x.grad, *[p.grad for p in rnn.parameters()])]
    del out, h_n, data, inp
    x.grad = None
    rnn.zero_grad(set_to_none=True)
    gc.collect()
    alive = [i for i, r in enumerate(refs) if r() is not None]
    assert not alive, f"tensors still referenced after release: {alive}"


def _allocations(fn: Callable[[], object]) -> tuple[object, int, int]:
    """Runs fn under the profiler's CPU memory tracking: (result, bytes allocated in total, peak
    bytes live at once). Every CPU allocator call reports here, those made inside C++ ops too."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = sum(s for s in sizes if s > 0)
    live = peak = 0
    for s in sizes:
        live += s
        peak = max(peak, live)
    return result, total, peak


def _packed_weights_bytes(hidden: int, features: int, item: int) -> int:
    """The CPU kernel's per-call workspace: W_hh^T, W_ih^T and the bias row packed with their
    columns padded to a multiple of 16 (csrc/cpu/kernels.h, kPackAlign). It depends on the weights'
    sizes only, never on T or B, and is freed before the op returns."""
    return (hidden + features + 1) * (-(-hidden // 16) * 16) * item


def test_allocation_probe_sees_allocations() -> None:
    """The probe used below must see allocations, or the bounds below would hold vacuously."""
    x = torch.randn(1000, dtype=torch.float64)
    _, total, peak = _allocations(lambda: (x * 2) + 1)
    assert total >= 2 * 8000 and peak >= 8000, (total, peak)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_hx", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_forward_op_allocates_only_its_outputs(dtype, packed, bias, with_hx, reverse) -> None:
    torch.manual_seed(0)
    T, B, C, H = 9, 6, 5, 11
    w_ih, w_hh = torch.randn(H, C, dtype=dtype), torch.randn(H, H, dtype=dtype)
    b_ih, b_hh = (torch.randn(H, dtype=dtype), torch.randn(H, dtype=dtype)) if bias else (None, None)
    hx = torch.randn(B, H, dtype=dtype) if with_hx else None
    if packed:
        bs = torch.tensor([6, 6, 5, 5, 4, 3, 2, 1, 1])
        x, n_rows = torch.randn(int(bs.sum()), C, dtype=dtype), int(bs.sum())
    else:
        bs, x, n_rows = None, torch.randn(T, B, C, dtype=dtype), T * B
    f = torch.ops.rnnext.rnn_forward
    f(x, bs, hx, w_ih, w_hh, b_ih, b_hh, False, reverse)  # warm-up (lazy BLAS lookup, ...)
    with torch.no_grad():
        (out, h_n), total, peak = _allocations(lambda: f(x, bs, hx, w_ih, w_hh, b_ih, b_hh, False, reverse))
    item = torch.empty((), dtype=dtype).element_size()
    outputs = (n_rows * H + B * H) * item
    assert out.numel() * item + h_n.numel() * item == outputs
    # Allowed beyond the outputs, none of it growing with T or B: the sum of the two bias vectors
    # [H], and the CPU kernel's transient packed copy of the weights (W_hh^T, W_ih^T and the bias
    # row: H + C + 1 rows padded to a multiple of 16 columns), freed before the op returns.
    allowed = outputs + (H * item if bias else 0) + _packed_weights_bytes(H, C, item)
    assert outputs <= total <= allowed, f"allocated {total} B, outputs are {outputs} B"
    assert peak <= allowed


@pytest.mark.parametrize("grad_mode", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_module_inference_allocates_only_its_outputs(grad_mode: bool, packed: bool) -> None:
    """One layer: the output is the op's buffer and h_n a view of the op's [B, H] (no stacking copy).
    Allowed besides: the bias sum [H] and a few 0-d tensors (the packed path sums batch_sizes).
    An extra copy of h_n ([B, H] = 180 B here) or anything proportional to T fails the bound."""
    torch.manual_seed(0)
    T, B, C, H = 12, 5, 7, 9
    rnn = rnnext.RNN(C, H)
    x = torch.randn(T, B, C)
    hx = torch.randn(1, B, H)
    inp = pack_padded_sequence(x, torch.tensor([12, 9, 9, 4, 1])) if packed else x
    rows = int(inp.data.shape[0]) if packed else T * B
    rnn(inp, hx)
    with torch.set_grad_enabled(grad_mode):
        _, total, peak = _allocations(lambda: rnn(inp, hx))
    outputs = (rows * H + B * H) * 4  # output and h_n
    tiny = 32  # 0-d tensors: int(batch_sizes.sum()) is one int64 (8 B)
    assert tiny < B * H * 4
    allowed = outputs + H * 4 + tiny + _packed_weights_bytes(H, C, 4)  # + bias sum, packed weights
    assert outputs <= total <= allowed, f"allocated {total} B, outputs are {outputs} B, allowed {allowed} B"
    assert peak <= allowed


# ------------------------------------------------------------------------------------------------
# Threads and determinism
# ------------------------------------------------------------------------------------------------


def _train_step(module: nn.Module, x: torch.Tensor, lengths=None):
    """Forward + backward through torch.autograd.grad (no .grad accumulation, so it is thread-safe)."""
    x = x.detach().clone().requires_grad_(True)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, h_n = module(inp)
    data = out.data if lengths is not None else out
    loss = (data * data).sum() + (h_n * torch.arange(h_n.numel()).view_as(h_n)).sum()
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [data.detach(), h_n.detach(), *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_concurrent_calls_match_serial_calls(dtype) -> None:
    torch.manual_seed(0)
    rnn = rnnext.RNN(8, 16, num_layers=2, bidirectional=True, nonlinearity="relu", dtype=dtype)
    jobs = []
    for i in range(8):
        x = torch.randn(15 + i, 4 + i % 3, 8, dtype=dtype)
        lengths = torch.randint(1, x.shape[0] + 1, (x.shape[1],)) if i % 2 else None
        if lengths is not None:
            lengths[i % x.shape[1]] = x.shape[0]
        jobs.append((x, lengths))
    serial = [_train_step(rnn, x, lengths) for x, lengths in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda j: _train_step(rnn, *j), jobs * 2))
    for k, got in enumerate(concurrent):
        want = serial[k % len(jobs)]
        for i, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), f"job {k % len(jobs)}, tensor {i}: threaded result differs from serial"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=1),
        dict(num_layers=3, bidirectional=True, nonlinearity="relu"),
        dict(num_layers=2, bias=False, batch_first=True),
        dict(num_layers=2, dropout=0.3, bidirectional=True),
    ],
    ids=["1layer", "3layer-bidir-relu", "nobias-batchfirst", "dropout"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [False, True])
def test_two_identical_runs_are_bitwise_identical(kwargs, dtype, packed, device) -> None:
    def run():
        torch.manual_seed(1234)
        rnn = rnnext.RNN(10, 24, dtype=dtype, device=device, **kwargs)
        x = torch.randn(*((7, 30) if rnn.batch_first else (30, 7)), 10, dtype=dtype, device=device)
        hx = torch.randn(rnn.num_layers * (2 if rnn.bidirectional else 1), 7, 24, dtype=dtype, device=device)
        lengths = torch.tensor([30, 3, 17, 30, 1, 22, 9]) if packed else None
        return _fwd_bwd(rnn, x, hx, lengths, enforce_sorted=False, seed=5)

    first, second = run(), run()
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"tensor {i} differs between two identical runs"


# ------------------------------------------------------------------------------------------------
# Extremes
# ------------------------------------------------------------------------------------------------


def test_sequence_of_20001_steps_matches_torch_nn() -> None:
    torch.manual_seed(0)
    ref, ours = _pair(3, 4, nonlinearity="tanh")
    x = torch.randn(20001, 2, 3, dtype=torch.float64)
    hx = torch.randn(1, 2, 4, dtype=torch.float64)
    _assert_same_as_reference(
        _fwd_bwd(ours, x, hx), _fwd_bwd(ref, x, hx), {"rtol": 1e-9, "atol": 1e-9}, "T=20001"
    )


def test_packed_sequence_of_20001_steps_matches_torch_nn_per_sequence() -> None:
    """torch.nn's packed backward takes minutes at this length, so the reference runs torch.nn on
    each sequence alone (padded, batch 1), which is what packing means; the loss is their sum."""
    torch.manual_seed(1)
    ref, ours = _pair(3, 4, nonlinearity="relu")
    with torch.no_grad():  # keep relu's state bounded over 20,001 steps
        for m in (ref, ours):
            m.weight_hh_l0.mul_(0.5)
    lengths = [20001, 15000, 1]
    x = torch.randn(20001, 3, 3, dtype=torch.float64)
    hx = torch.randn(1, 3, 4, dtype=torch.float64)
    w_out = torch.randn(20001, 3, 4, dtype=torch.float64)
    w_h = torch.randn(1, 3, 4, dtype=torch.float64)

    xo, ho = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
    out, h_n = ours(pack_padded_sequence(xo, torch.tensor(lengths)), ho)
    padded, _ = pad_packed_sequence(out, total_length=20001)
    ((padded * w_out).sum() + (h_n * w_h).sum()).backward()

    xr, hr = x.clone().requires_grad_(True), hx.clone().requires_grad_(True)
    outs, finals, loss = [], [], 0
    for b, n in enumerate(lengths):
        o, h = ref(xr[:n, b : b + 1], hr[:, b : b + 1])
        outs.append(torch.cat([o, o.new_zeros(20001 - n, 1, 4)]))
        finals.append(h)
        loss = loss + (o * w_out[:n, b : b + 1]).sum() + (h * w_h[:, b : b + 1]).sum()
    loss.backward()
    got = [padded.detach(), h_n.detach(), xo.grad, ho.grad, *[p.grad for p in ours.parameters()]]
    want = [torch.cat(outs, 1).detach(), torch.cat(finals, 1).detach(), xr.grad, hr.grad]
    want += [p.grad for p in ref.parameters()]
    _assert_same_as_reference(got, want, {"rtol": 1e-9, "atol": 1e-9}, "packed T=20001")


@pytest.mark.parametrize(
    "C,H,B,T",
    [(1, 1, 1, 1), (1, 1, 1, 64), (1, 1, 9, 5), (6, 1, 1, 7), (1, 8, 1, 1), (4, 1, 3, 33), (17, 17, 1, 2)],
)
@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2, bidirectional=True, nonlinearity="relu")])
def test_size_one_dimensions_match_torch_nn(C, H, B, T, kwargs) -> None:
    torch.manual_seed(C * 1000 + H * 100 + B * 10 + T)
    ref, ours = _pair(C, H, **kwargs)
    d = 2 if ref.bidirectional else 1
    x = torch.randn(T, B, C, dtype=torch.float64)
    hx = torch.randn(ref.num_layers * d, B, H, dtype=torch.float64)
    _assert_same_as_reference(_fwd_bwd(ours, x, hx), _fwd_bwd(ref, x, hx), F64, "padded")
    lengths = torch.randint(1, T + 1, (B,))
    _assert_same_as_reference(
        _fwd_bwd(ours, x, hx, lengths, enforce_sorted=False),
        _fwd_bwd(ref, x, hx, lengths, enforce_sorted=False),
        F64,
        "packed",
    )
    # Unbatched: [T, I] with [L*D, H].
    _assert_same_as_reference(_fwd_bwd(ours, x[:, 0], hx[:, 0]), _fwd_bwd(ref, x[:, 0], hx[:, 0]), F64, "2-D")


def _poison(kind: str, x: torch.Tensor, hx: torch.Tensor, module: nn.Module) -> None:
    big = 1e30 if x.dtype == torch.float32 else 1e200
    if kind == "nan":
        x[3, 1, 0] = float("nan")
        x[7, 0, 2] = float("nan")
    elif kind == "inf":
        x[2, 0, 1] = float("inf")
        x[5, 2, 0] = -float("inf")
    elif kind == "huge":
        x[1, 0, :] = big
        x[4, 1, 1] = -big
        x[6, 2, 2] = big / 3
    elif kind == "nan_hx":
        hx[0, 1, 2] = float("nan")
        hx[-1, 2, 0] = float("inf")
    elif kind == "nan_weight":
        with torch.no_grad():
            module.weight_hh_l0[1, 2] = float("nan")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["nan", "inf", "huge", "nan_hx", "nan_weight"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("packed", [False, True])
def test_nan_inf_huge_propagate_as_torch_nn(kind, nonlinearity, dtype, packed) -> None:
    torch.manual_seed(7)
    ref, ours = _pair(3, 5, num_layers=2, nonlinearity=nonlinearity, bidirectional=True, dtype=dtype)
    x = torch.randn(9, 3, 3, dtype=dtype)
    hx = torch.randn(4, 3, 5, dtype=dtype)
    _poison(kind, x, hx, ref)
    _poison(kind, x, hx, ours)
    lengths = torch.tensor([9, 6, 8]) if packed else None
    want = _fwd_bwd(ref, x, hx, lengths, enforce_sorted=False)
    got = _fwd_bwd(ours, x, hx, lengths, enforce_sorted=False)
    if kind == "huge":
        # Sums of ~1e30 terms taken in another order (rnnext adds b_ih + b_hh first): the error is
        # relative to the tensor's scale, not to each (possibly cancelled) element.
        for i, (a, b) in enumerate(zip(got, want)):
            if b is not None:
                scale = b[b.isfinite()].abs().max() if b.isfinite().any() else 1.0
                _assert_same_as_reference([a / scale], [b / scale], _tol(dtype), f"huge/{nonlinearity}[{i}]")
        return
    _assert_same_as_reference(got, want, _tol(dtype), f"{kind}/{nonlinearity}")


def test_dimensions_of_2_to_the_31_are_rejected_without_allocating() -> None:
    """B, H or I of 2^31 or more cannot reach the 32-bit BLAS of the recurrence: the op rejects them.
    Zero-stride (expanded) tensors make the shapes without the memory."""
    big = 2**31
    f = torch.ops.rnnext.rnn_forward
    w_ih, w_hh = torch.randn(4, 3), torch.randn(4, 4)
    huge_batch = torch.zeros(()).expand(1, big, 3)
    with pytest.raises(RuntimeError, match="below 2\\^31"):
        f(huge_batch, None, None, w_ih, w_hh, None, None, False, False)
    huge_input = torch.zeros(()).expand(1, 2, big)
    with pytest.raises(RuntimeError, match="below 2\\^31"):
        f(huge_input, None, None, torch.zeros(()).expand(4, big), w_hh, None, None, False, False)
    huge_hidden = torch.zeros(()).expand(big, big)
    with pytest.raises(RuntimeError, match="below 2\\^31"):
        f(
            torch.zeros(1, 2, 3),
            None,
            None,
            torch.zeros(()).expand(big, 3),
            huge_hidden,
            None,
            None,
            False,
            False,
        )
    # Still fine afterwards.
    out, _ = f(torch.randn(2, 2, 3), None, None, w_ih, w_hh, None, None, False, False)
    assert out.shape == (2, 2, 4)


@pytest.mark.skipif(
    os.environ.get("RNNEXT_BIG_TESTS") != "1", reason="set RNNEXT_BIG_TESTS=1 (needs ~10 GB RAM)"
)
def test_output_past_2_to_the_31_elements_is_correct() -> None:
    """Output of 512 x (2^19 + 1) x 8 = 2^31 + 4096 float32 elements. Batch entries are independent,
    so rows around the 2^31 element boundary (and the first and last) are checked against torch.nn
    run on those entries alone, in float64."""
    T, H = 512, 8
    B = 2**31 // (T * H) + 1
    assert T * B * H > 2**31
    torch.manual_seed(0)
    ref = nn.RNN(1, H, dtype=torch.float64)
    w = {k: v.float() for k, v in ref.state_dict().items()}
    x = torch.randn(T, B, 1)
    out, h_n = torch.ops.rnnext.rnn_forward(
        x, None, None, w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"], False, False
    )
    # Flat element index (t * B + b) * H crosses 2^31 at the last step for b near this entry.
    crossing = (2**31 // H) - (T - 1) * B
    entries = sorted({0, 1, B - 1, B - 2, crossing - 1, crossing, crossing + 1, B // 2})
    idx = torch.tensor(entries)
    want_out, want_h = ref(x[:, idx].double())
    torch.testing.assert_close(out[:, idx].double(), want_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_n[idx].double(), want_h[0], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(out[-1]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_match_torch_nn_or_raise_clearly(dtype, still_works) -> None:
    """torch.nn runs float16/bfloat16 on the CPU; rnnext's CPU kernels may or may not (OPS.md:
    optional). Either the numbers match or the error names the dtype; never garbage or a crash."""
    torch.manual_seed(0)
    ref, ours = _pair(3, 4, dtype=dtype)
    x = torch.randn(5, 2, 3, dtype=dtype)
    want = ref(x)
    try:
        got = ours(x)
    except RuntimeError as e:
        assert ("Half" if dtype == torch.float16 else "BFloat16") in str(e), str(e)
        still_works()
        return
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
