"""The CUDA-only tests of rnnext: the planner's paths, half types, streams, CUDA graphs, and the
CPU-runnable models of the CUDA algorithms. Skipped without a GPU (except the models).

The behaviour tests run on CUDA through the ``device`` fixture (tests/conftest.py): the modules'
in tests/test_rnn.py and tests/test_cell.py (with this file's tolerances), the op's empty inputs in
tests/test_ops.py; scripts/gpu_check.sh selects them with ``-k cuda``.

Every check compares against a reference computed at test time: the CPU op / ``torch.nn`` in
float64, and ``torch.nn.RNN`` on the same GPU (cuDNN). The recurrence has two CUDA implementations
(persistent kernels holding W_hh in registers (H <= 128), in shared memory, or split over a
thread-block cluster (sm_90), the tiled kernel of issue 14 (batch tiles x hidden splits, only when
forced), and a per-step cuBLAS GEMM plus pointwise kernel);
``RNNEXT_CUDA_PATH`` = persistent / smem / cluster / tiled / fallback forces one of them, so the tests
that take ``path`` run each (on a GPU without clusters, "cluster" runs the fallback and "tiled" its
one-CTA form or the fallback). ``test_algorithm_*`` run without a GPU: Python models of the kernels'
algorithms (the tiled one with its index arithmetic and exchange protocol) against the CPU op.

Tolerances: float64 1e-9 (rtol and atol); float32 1e-4 relative plus 1e-5 of each tensor's
largest magnitude (gradients are sums over every step and batch entry); float16 / bfloat16
(accumulated in float32, the state rounded to the storage dtype each step, as cuDNN does): see
``HALF_TOL``, and at most 4x cuDNN's own error (plus a few ulps of the tensor's scale).
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnext

# RNNEXT_CUDA_TESTS_ON_CPU=1 runs this file's harness on the CPU ops instead (a self-check of the
# tests themselves on a machine without a GPU; the GPU-only tests are skipped). It tests no CUDA code.
_ON_CPU = os.environ.get("RNNEXT_CUDA_TESTS_ON_CPU") == "1"
_HAVE_DEVICE = _ON_CPU or torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(_ON_CPU, reason="needs a GPU (harness self-check on the CPU)")

CUDA = "cpu" if _ON_CPU else "cuda"
FWD = torch.ops.rnnext.rnn_forward.default
BWD = torch.ops.rnnext.rnn_backward.default
F64 = dict(rtol=1e-9, atol=1e-9)
F32 = dict(rtol=1e-4, atol=1e-5, scaled=True)
PATHS = ["persistent", "smem", "cluster", "tiled", "fallback"]


@pytest.fixture(autouse=True)
def _require_cuda(request):
    """Every test here needs a GPU, except the algorithm check (plain CPU arithmetic)."""
    if not _HAVE_DEVICE and not request.node.name.startswith("test_algorithm"):
        pytest.skip("CUDA is not available")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Keep cuDNN and cuBLAS float32 at full precision while comparing (TF32 is a 1e-3 error)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Force one recurrence implementation (read by the C++ glue at every call)."""
    monkeypatch.setenv("RNNEXT_CUDA_PATH", request.param)
    return request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, gen, scale=1.0, dtype=torch.float64):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _batch_sizes(lengths: list[int]) -> torch.Tensor:
    """batch_sizes of a PackedSequence whose (sorted, decreasing) sequences have these lengths."""
    T = max(lengths)
    return torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)], dtype=torch.int64)


def _op_args(T, B, In, H, *, packed, hx, bias, seed, lengths=None):
    """CPU float64 arguments of rnn_forward (input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh)."""
    g = _gen(seed)
    if packed:
        if lengths is None:
            lengths = sorted([T] + [int(torch.randint(1, T + 1, (1,), generator=g)) for _ in range(B - 1)],
                             reverse=True)
        bs = _batch_sizes(lengths)
        x = _randn(int(bs.sum()), In, gen=g)
    else:
        bs = None
        x = _randn(T, B, In, gen=g)
    k = 1.0 / math.sqrt(H)
    h0 = _randn(B, H, gen=g, scale=0.5) if hx else None
    w_ih = _randn(H, In, gen=g, scale=k)
    w_hh = _randn(H, H, gen=g, scale=k)
    b_ih = _randn(H, gen=g, scale=k) if bias in ("both", "ih") else None
    b_hh = _randn(H, gen=g, scale=k) if bias in ("both", "hh") else None
    return [x, bs, h0, w_ih, w_hh, b_ih, b_hh]


def _to(args, device, dtype=None):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            out.append(a.to(device=device, dtype=dtype or a.dtype))
        else:
            out.append(a)  # batch_sizes stay int64 on the CPU, None stays None
    return out


def _grads_like(out, h_n, seed, with_grad_h_n=True):
    g = _gen(seed + 1000)
    go = _randn(*out.shape, gen=g)
    ghn = _randn(*h_n.shape, gen=g) if with_grad_h_n else None
    return go, ghn


# ---------------------------------------------------------------------------------------------
# The ops against the CPU op in float64, every option, both CUDA paths.

OP_CASES = list(
    itertools.product(
        [False, True],  # packed
        [False, True],  # reverse
        [False, True],  # hx given
        [False, True],  # relu
        ["both", "none", "ih"],  # biases
    )
)


@pytest.mark.parametrize("packed,reverse,hx,relu,bias", OP_CASES)
def test_ops_match_cpu_float64(path, packed, reverse, hx, relu, bias):
    T, B, In, H = 7, 5, 6, 24
    seed = OP_CASES.index((packed, reverse, hx, relu, bias))
    cpu = _op_args(T, B, In, H, packed=packed, hx=hx, bias=bias, seed=seed)
    gpu = _to(cpu, CUDA)
    out_c, hn_c = FWD(*cpu, relu, reverse)
    out_g, hn_g = FWD(*gpu, relu, reverse)
    torch.testing.assert_close(out_g.cpu(), out_c, **F64)
    torch.testing.assert_close(hn_g.cpu(), hn_c, **F64)

    go, ghn = _grads_like(out_c, hn_c, seed, with_grad_h_n=(seed % 3 != 0))
    x, bs, h0, w_ih, w_hh = cpu[:5]
    mask = [True] * 5
    ref = BWD(go, ghn, x, bs, h0, w_ih, w_hh, out_c, relu, reverse, mask)
    got = BWD(go.to(CUDA), None if ghn is None else ghn.to(CUDA), gpu[0], bs,
              gpu[2], gpu[3], gpu[4], out_g, relu, reverse, mask)
    for name, r, o in zip(["input", "hx", "w_ih", "w_hh", "bias"], ref, got):
        assert o.device.type == torch.device(CUDA).type, name
        torch.testing.assert_close(o.cpu(), r, **F64, msg=lambda m, name=name: f"grad_{name}: {m}")


@pytest.mark.parametrize("T,B,In,H",
                         [(1, 1, 1, 1), (3, 1, 4, 1), (9, 300, 3, 7), (5, 2, 3, 37), (4, 3, 2, 150)])
@pytest.mark.parametrize("packed", [False, True])
def test_ops_odd_shapes_float64(path, T, B, In, H, packed):
    """Sizes that stress the tiling: H = 1, odd H, a batch spread over many blocks, big H."""
    seed = T * 1000 + B * 10 + H
    cpu = _op_args(T, B, In, H, packed=packed, hx=True, bias="both", seed=seed)
    gpu = _to(cpu, CUDA)
    for reverse in (False, True):
        out_c, hn_c = FWD(*cpu, False, reverse)
        out_g, hn_g = FWD(*gpu, False, reverse)
        torch.testing.assert_close(out_g.cpu(), out_c, **F64)
        torch.testing.assert_close(hn_g.cpu(), hn_c, **F64)
        go, ghn = _grads_like(out_c, hn_c, seed)
        ref = BWD(go, ghn, *cpu[:5], out_c, False, reverse, [True] * 5)
        got = BWD(go.to(CUDA), ghn.to(CUDA), *gpu[:5], out_g, False, reverse, [True] * 5)
        for r, o in zip(ref, got):
            torch.testing.assert_close(o.cpu(), r, **F64)


def test_packed_equal_lengths_and_single_step(path):
    """Packed input whose sequences all have the same length equals the padded computation."""
    T, B, In, H = 6, 4, 3, 10
    cpu = _op_args(T, B, In, H, packed=False, hx=True, bias="both", seed=7)
    gpu = _to(cpu, CUDA)
    packed = list(gpu)
    packed[0] = gpu[0].reshape(T * B, In)
    packed[1] = torch.full((T,), B, dtype=torch.int64)
    for reverse in (False, True):
        out_p, hn_p = FWD(*packed, False, reverse)
        out_d, hn_d = FWD(*gpu, False, reverse)
        torch.testing.assert_close(out_p, out_d.reshape(T * B, H), **F64)
        torch.testing.assert_close(hn_p, hn_d, **F64)


def test_output_mask_skips_work(path):
    T, B, In, H = 5, 3, 4, 8
    cpu = _op_args(T, B, In, H, packed=True, hx=True, bias="both", seed=11)
    gpu = _to(cpu, CUDA)
    out_c, hn_c = FWD(*cpu, True, False)
    out_g, _ = FWD(*gpu, True, False)
    go, ghn = _grads_like(out_c, hn_c, 11)
    for mask in ([True, False, False, True, False], [False, True, True, False, True], [False] * 5):
        ref = BWD(go, ghn, *cpu[:5], out_c, True, False, mask)
        got = BWD(go.to(CUDA), ghn.to(CUDA), *gpu[:5], out_g, True, False, mask)
        for m, r, o in zip(mask, ref, got):
            if m:
                torch.testing.assert_close(o.cpu(), r, **F64)
            else:
                assert o.numel() == 0


@needs_gpu
def test_mixed_devices_raise():
    x = torch.randn(3, 2, 4, device=CUDA)
    w_ih = torch.randn(5, 4, device=CUDA)
    w_hh = torch.randn(5, 5, device=CUDA)
    with pytest.raises(RuntimeError, match="device|cpu|cuda"):
        FWD(x, None, torch.zeros(2, 5), w_ih, w_hh, None, None, False, False)
    with pytest.raises(RuntimeError, match="batch_sizes"):
        FWD(x.reshape(6, 4), torch.tensor([2, 2, 2], device=CUDA), None, w_ih, w_hh, None, None, False,
            False)


# ---------------------------------------------------------------------------------------------
# Modules against torch.nn: on CUDA (cuDNN) and on the CPU in float64.


def _make_pair(In, H, *, dtype, device, **kw):
    torch.manual_seed(1234)
    ref = nn.RNN(In, H, **kw).to(device=device, dtype=dtype)
    new = rnnext.RNN(In, H, **kw).to(device=device, dtype=dtype)
    new.load_state_dict(ref.state_dict())
    return ref, new


def _run_module(mod, x, h0, *, packed_lengths=None, enforce_sorted=True, batch_first=False, seed=0,
                round_to=None):
    """Forward + backward with random output weights (first rounded to ``round_to``, so that runs in
    different dtypes get the same seeds); returns outputs and every gradient."""
    x = x.detach().clone().requires_grad_(True)
    h = None if h0 is None else h0.detach().clone().requires_grad_(True)
    mod.zero_grad(set_to_none=True)
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    out, h_n = mod(inp, h)
    out_t = out.data if packed_lengths is not None else out
    g = _gen(seed + 99)
    w_out = _randn(*out_t.shape, gen=g).to(round_to or out_t.dtype).to(out_t)
    w_hn = _randn(*h_n.shape, gen=g).to(round_to or h_n.dtype).to(h_n)
    ((out_t * w_out).sum() + (h_n * w_hn).sum()).backward()
    res = {"output": out_t, "h_n": h_n, "grad_input": x.grad}
    if h is not None:
        res["grad_hx"] = h.grad
    for name, p in mod.named_parameters():
        res["grad_" + name] = p.grad
    return res


def _assert_results(got, ref, *, rtol, atol, scaled=False):
    """Compare every entry; ``scaled``: atol is relative to the entry's largest magnitude (float32
    gradients are sums over every step and batch entry)."""
    assert got.keys() == ref.keys()
    for k in ref:
        a = atol * (1.0 + float(ref[k].detach().abs().max())) if scaled and ref[k].numel() else atol
        torch.testing.assert_close(got[k].to(ref[k]), ref[k], rtol=rtol, atol=a,
                                   msg=lambda m, k=k: f"{k}: {m}")


MODULE_CASES = [
    # (num_layers, bidirectional, nonlinearity, bias, batch_first, hx, packed)
    (1, False, "tanh", True, False, True, None),
    (1, False, "relu", False, False, False, None),
    (2, False, "tanh", True, True, True, None),
    (2, True, "tanh", True, False, True, None),
    (2, True, "relu", True, True, False, None),
    (1, True, "tanh", False, False, True, "sorted"),
    (2, True, "tanh", True, False, True, "unsorted"),
    (2, False, "relu", True, True, False, "unsorted"),
    (3, True, "relu", False, True, True, "sorted"),
]


def _module_inputs(T, B, In, H, layers, bidirectional, batch_first, hx, packed, dtype, seed):
    g = _gen(seed)
    x = _randn(*((B, T, In) if batch_first else (T, B, In)), gen=g).to(dtype)
    D = 2 if bidirectional else 1
    h0 = _randn(layers * D, B, H, gen=g, scale=0.5).to(dtype) if hx else None
    lengths = None
    if packed is not None:
        lengths = [T] + [int(torch.randint(1, T + 1, (1,), generator=g)) for _ in range(B - 1)]
        if packed == "sorted":
            lengths = sorted(lengths, reverse=True)
        else:
            lengths = lengths[1:] + lengths[:1]  # the longest is not first
    return x, h0, lengths


@pytest.mark.parametrize("layers,bidirectional,nonlinearity,bias,batch_first,hx,packed", MODULE_CASES)
@pytest.mark.parametrize("H", [300])  # W_hh exceeds one SM: cluster kernel (sm_90) or fallback
def test_module_matches_torch_nn(layers, bidirectional, nonlinearity, bias, batch_first, hx, packed, H):
    """The automatic plan for a large H, at module level, every option (the small-H paths:
    test_rnn.py's grid on CUDA)."""
    T, B, In = 6, 4, 5
    kw = dict(num_layers=layers, bidirectional=bidirectional, nonlinearity=nonlinearity, bias=bias,
              batch_first=batch_first)
    x, h0, lengths = _module_inputs(T, B, In, H, layers, bidirectional, batch_first, hx, packed,
                                    torch.float64, seed=layers * 100 + H)
    run = dict(packed_lengths=lengths, enforce_sorted=packed == "sorted", batch_first=batch_first)
    # Ground truth: torch.nn on the CPU in float64.
    ref_cpu, _ = _make_pair(In, H, dtype=torch.float64, device="cpu", **kw)
    truth = _run_module(ref_cpu, x, h0, **run)
    # rnnext on CUDA, float64: tight against the CPU and against cuDNN in float64.
    ref_gpu, new_gpu = _make_pair(In, H, dtype=torch.float64, device=CUDA, **kw)
    xg, hg = x.to(CUDA), None if h0 is None else h0.to(CUDA)
    got = _run_module(new_gpu, xg, hg, **run)
    _assert_results(got, truth, **F64)
    _assert_results(got, _run_module(ref_gpu, xg, hg, **run), **F64)
    # float32 on CUDA against cuDNN float32 and against the float64 truth.
    ref32, new32 = _make_pair(In, H, dtype=torch.float32, device=CUDA, **kw)
    x32, h32 = xg.float(), None if hg is None else hg.float()
    got32 = _run_module(new32, x32, h32, **run)
    _assert_results(got32, _run_module(ref32, x32, h32, **run), **F32)
    _assert_results(got32, truth, **F32)


def test_module_auto_path_large_hidden_float32():
    """H = 1024 float32: W_hh (4 MiB) cannot stay on chip; the automatic choice takes the fallback."""
    T, B, In, H = 5, 3, 16, 1024
    kw = dict(num_layers=1)
    x, h0, _ = _module_inputs(T, B, In, H, 1, False, False, True, None, torch.float32, seed=5)
    ref, new = _make_pair(In, H, dtype=torch.float32, device=CUDA, **kw)
    _assert_results(_run_module(new, x.to(CUDA), h0.to(CUDA)), _run_module(ref, x.to(CUDA), h0.to(CUDA)),
                    **F32)


@pytest.mark.parametrize("B", [1, 8, 200, 1000])
def test_module_auto_path_small_hidden_float32(B):
    """H = 64 float32 takes the register persistent kernel under the automatic choice (up to 8
    batch entries per block: B = 1000 fills 132 SMs with 8 each)."""
    T, In, H = 20, 8, 64
    x, h0, _ = _module_inputs(T, B, In, H, 1, False, False, True, None, torch.float32, seed=B)
    ref, new = _make_pair(In, H, dtype=torch.float32, device=CUDA)
    _assert_results(_run_module(new, x.to(CUDA), h0.to(CUDA)), _run_module(ref, x.to(CUDA), h0.to(CUDA)),
                    **F32)


# ---------------------------------------------------------------------------------------------
# Gradients: gradcheck of the op on CUDA in float64 (both paths, padded and packed).


@pytest.mark.parametrize("packed,reverse,relu", [(False, False, False), (False, True, True),
                                                 (True, False, True), (True, True, False)])
def test_gradcheck_cuda(path, packed, reverse, relu):
    T, B, In, H = 4, 3, 3, 5
    args = _to(_op_args(T, B, In, H, packed=packed, hx=True, bias="both", seed=21), CUDA)
    if relu:  # keep pre-activations away from the kink at 0 for finite differences
        args[3] = args[3].abs()
        args[5] = args[5].abs() + 0.1
    x, bs, h0, w_ih, w_hh, b_ih, b_hh = (a.requires_grad_(True) if isinstance(a, torch.Tensor)
                                         and a.is_floating_point() else a for a in args)

    def f(x, h0, w_ih, w_hh, b_ih, b_hh):
        return rnnext._ops.rnn_forward(x, bs, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse)

    assert torch.autograd.gradcheck(f, (x, h0, w_ih, w_hh, b_ih, b_hh))


# ---------------------------------------------------------------------------------------------
# Half types: accumulate in float32, state rounded each step. Compared with the float64 result of
# the same (rounded) weights and inputs, and with cuDNN's own error in the same dtype.

HALF_TOL = {torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=1e-1, atol=1e-1)}


def _max_err(res, truth):
    return {k: float((res[k].detach().double() - truth[k].detach()).abs().max()) for k in truth}


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("H,packed", [(32, None), (96, "unsorted"), (256, None)])  # 256: 16-bit W_hh in smem
def test_half_types(path, dtype, H, packed):
    T, B, In = 12, 6, 16
    kw = dict(num_layers=2, bidirectional=True)
    x, h0, lengths = _module_inputs(T, B, In, H, 2, True, False, True, packed, torch.float64, seed=H)
    x, h0 = x.to(dtype).double(), h0.to(dtype).double()  # exactly representable in dtype
    ref64, new64 = _make_pair(In, H, dtype=torch.float64, device=CUDA, **kw)
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(dtype).double())
    new64.load_state_dict(ref64.state_dict())
    run = dict(packed_lengths=lengths, enforce_sorted=False, round_to=dtype)
    truth = _run_module(ref64, x.to(CUDA), h0.to(CUDA), **run)
    new = rnnext.RNN(In, H, **kw).to(CUDA, dtype)
    new.load_state_dict(ref64.state_dict())
    got = _run_module(new, x.to(CUDA, dtype), h0.to(CUDA, dtype), **run)
    for k in truth:
        assert got[k].dtype == dtype, k
    _assert_results(got, truth, **HALF_TOL[dtype], scaled=True)
    # Not much worse than cuDNN in the same dtype.
    cud = nn.RNN(In, H, **kw).to(CUDA, dtype)
    cud.load_state_dict(ref64.state_dict())
    ref_err = _max_err(_run_module(cud, x.to(CUDA, dtype), h0.to(CUDA, dtype), **run), truth)
    our_err = _max_err(got, truth)
    for k in truth:
        scale = float(truth[k].detach().abs().max()) + 1.0
        assert our_err[k] <= 4 * ref_err[k] + 8 * torch.finfo(dtype).eps * scale, (k, our_err[k], ref_err[k])


# ---------------------------------------------------------------------------------------------
# Streams, CUDA graphs, torch.compile, opcheck.


@needs_gpu
def test_non_default_stream(path):
    """The kernels run on the current stream: a slow producer on a side stream must be waited for."""
    T, B, In, H = 8, 4, 6, 32
    cpu = _op_args(T, B, In, H, packed=False, hx=True, bias="both", seed=31)
    out_c, hn_c = FWD(*cpu, False, False)
    go, ghn = _grads_like(out_c, hn_c, 31)
    ref = BWD(go, ghn, *cpu[:5], out_c, False, False, [True] * 5)
    gpu = _to(cpu, CUDA)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(20_000_000)  # tens of ms of GPU time before the inputs exist
        x = gpu[0] * 1.0  # produced on the side stream, after the sleep
        go_s = go.to(CUDA) * 1.0
        out, hn = FWD(x, None, *gpu[2:], False, False)
        grads = BWD(go_s, ghn.to(CUDA), x, None, gpu[2], gpu[3], gpu[4], out, False, False, [True] * 5)
    side.synchronize()
    torch.testing.assert_close(out.cpu(), out_c, **F64)
    torch.testing.assert_close(hn.cpu(), hn_c, **F64)
    for r, o in zip(ref, grads):
        torch.testing.assert_close(o.cpu(), r, **F64)


@needs_gpu
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_graph_capture_and_replay_ops(path, reverse):
    T, B, In, H = 9, 5, 7, 48
    dt = torch.float32
    static = _to(_op_args(T, B, In, H, packed=False, hx=True, bias="both", seed=41), CUDA, dt)
    go = torch.randn(T, B, H, device=CUDA, dtype=dt)
    ghn = torch.randn(B, H, device=CUDA, dtype=dt)

    def step():
        out, hn = FWD(*static, False, reverse)
        grads = BWD(go, ghn, static[0], None, static[2], static[3], static[4], out, False, reverse,
                    [True] * 5)
        return (out, hn) + tuple(grads)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for trial in range(3):
        with torch.no_grad():
            for a in [static[0], static[2], static[4], go, ghn]:
                a.copy_(torch.randn_like(a) * (0.3 if a is static[4] else 1.0))
        graph.replay()
        torch.cuda.synchronize()
        expected = step()
        for name, c, e in zip(["out", "h_n", "gx", "ghx", "gwih", "gwhh", "gb"], captured, expected):
            torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name, i=trial: f"{n} {i}: {m}")


@needs_gpu
def test_cuda_graph_module_make_graphed_callables():
    T, B, In, H = 10, 4, 8, 32
    torch.manual_seed(5)
    mod = rnnext.RNN(In, H, num_layers=2, bidirectional=True).to(CUDA)
    eager = rnnext.RNN(In, H, num_layers=2, bidirectional=True).to(CUDA)
    eager.load_state_dict(mod.state_dict())
    sample = torch.randn(T, B, In, device=CUDA, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(mod, (sample,))
    for _ in range(2):
        x = torch.randn(T, B, In, device=CUDA)
        results = []
        for m in (graphed, eager):
            xi = x.clone().requires_grad_(True)
            for p in mod.parameters():
                p.grad = None
            for p in eager.parameters():
                p.grad = None
            out, hn = m(xi)
            (out.square().sum() + hn.sum()).backward()
            params = mod.parameters() if m is graphed else eager.parameters()
            results.append([out.detach().clone(), hn.detach().clone(), xi.grad.clone()] +
                           [p.grad.clone() for p in params])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_torch_compile_op_fullgraph():
    T, B, In, H = 6, 3, 5, 16
    args = _to(_op_args(T, B, In, H, packed=False, hx=True, bias="both", seed=51), CUDA, torch.float32)
    x, _, h0, w_ih, w_hh, b_ih, b_hh = args
    params = [t.clone().requires_grad_(True) for t in (x, h0, w_ih, w_hh, b_ih, b_hh)]

    def f(x, h0, w_ih, w_hh, b_ih, b_hh):
        out, hn = rnnext._ops.rnn_forward(x, None, h0, w_ih, w_hh, b_ih, b_hh, False, True)
        return out.tanh().sum() + hn.square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_params = [p.detach().clone().requires_grad_(True) for p in params]
    loss_c = compiled(*params)
    loss_e = f(*eager_params)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a.grad, b.grad)


@needs_gpu
def test_torch_compile_module_inductor():
    pytest.importorskip("triton")
    T, B, In, H = 6, 3, 5, 16
    torch.manual_seed(6)
    mod = rnnext.RNN(In, H, num_layers=2).to(CUDA)
    x = torch.randn(T, B, In, device=CUDA)
    torch._dynamo.reset()
    compiled = torch.compile(mod)
    with torch.no_grad():
        out_c, hn_c = compiled(x)
        out_e, hn_e = mod(x)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(hn_c, hn_e)


@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_cuda(packed):
    T, B, In, H = 5, 3, 4, 6
    args = _to(_op_args(T, B, In, H, packed=packed, hx=True, bias="both", seed=61), CUDA)
    fwd_args = [a.requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args] + [False, False]
    torch.library.opcheck(FWD, tuple(fwd_args))
    with torch.no_grad():
        out, hn = FWD(*[a.detach() if isinstance(a, torch.Tensor) else a for a in fwd_args])
    x, bs, h0, w_ih, w_hh = (a.detach() if isinstance(a, torch.Tensor) else a for a in args[:5])
    bwd_args = (torch.randn_like(out), torch.randn_like(hn), x, bs, h0, w_ih, w_hh, out, False, False,
                [True, True, True, True, True])
    torch.library.opcheck(BWD, bwd_args)


# ---------------------------------------------------------------------------------------------
# The persistent kernels' algorithm, emulated in float64 on the CPU (runs without a GPU): every
# batch entry's state starts as hx and is updated only while the entry is active (b < batch_sizes[t]),
# which must reproduce OPS.md for packed input in both directions; the backward adds grad_h_n where
# an entry is processed first and reads grad_hx from the frozen state. Checked against the CPU op.


def _emulate_persistent(x, bs, hx, w_ih, w_hh, b, relu, reverse, go, ghn):
    T = len(bs)
    off = [0]
    for n in bs:
        off.append(off[-1] + n)
    out = x @ w_ih.T + b
    state = hx.clone()
    for s in range(T):
        t = T - 1 - s if reverse else s
        n = bs[t]
        pre = out[off[t]:off[t] + n] + state[:n] @ w_hh.T
        h = torch.relu(pre) if relu else torch.tanh(pre)
        out[off[t]:off[t] + n] = h
        state = state.clone()
        state[:n] = h
    d = torch.zeros_like(hx)
    dpre = torch.zeros_like(out)
    prev = 0
    for s in range(T):
        t = s if reverse else T - 1 - s
        n = bs[t]
        g = go[off[t]:off[t] + n] + d[:n] @ w_hh
        first = torch.arange(n) >= prev
        g[first] += ghn[:n][first]
        h = out[off[t]:off[t] + n]
        dd = g * (h > 0) if relu else g * (1 - h * h)
        dpre[off[t]:off[t] + n] = dd
        d = d.clone()
        d[:n] = dd
        prev = n
    return out, state, dpre, d @ w_hh


def test_algorithm_of_persistent_kernels_matches_cpu_op():
    g = _gen(77)
    for trial in range(24):
        T, B, H, In = 1 + trial % 6, 1 + trial % 5, 4, 3
        lengths = sorted([T] + [int(torch.randint(1, T + 1, (1,), generator=g)) for _ in range(B - 1)],
                         reverse=True)
        bs = _batch_sizes(lengths)
        x = _randn(int(bs.sum()), In, gen=g)
        hx = _randn(B, 4, gen=g)
        w_ih, w_hh, b = _randn(H, In, gen=g), _randn(H, H, gen=g, scale=0.5), _randn(H, gen=g)
        relu, reverse = bool(trial % 2), bool((trial // 2) % 2)
        out, h_n = FWD(x, bs, hx, w_ih, w_hh, b, None, relu, reverse)
        go, ghn = _randn(*out.shape, gen=g), _randn(*h_n.shape, gen=g)
        grads = BWD(go, ghn, x, bs, hx, w_ih, w_hh, out, relu, reverse, [True] * 5)
        e_out, e_hn, e_dpre, e_ghx = _emulate_persistent(x, bs.tolist(), hx, w_ih, w_hh, b, relu, reverse,
                                                          go, ghn)
        torch.testing.assert_close(e_out, out, **F64)
        torch.testing.assert_close(e_hn, h_n, **F64)
        torch.testing.assert_close(e_ghx, grads[1], **F64)
        torch.testing.assert_close(e_dpre @ w_ih, grads[0], **F64)
        torch.testing.assert_close(e_dpre.sum(0), grads[4], **F64)


# ---------------------------------------------------------------------------------------------
# The tiled kernel (RNNEXT_CUDA_PATH=tiled, rnn_kernels.cu: tiled_kernel), modelled on the CPU: its
# index arithmetic (thread -> (k lane, column group, row group), the 4 x 4 register block over
# 4-element k chunks, the shuffle reduction over KS lanes, rows owned by lane r % KS), its plan
# geometry (R = ceil(H / C) rounded up to 4, HP = C * R, ldw = HP + 4, BT a multiple of 4) and its
# exchange protocol (each CTA writes its new columns into the next buffer of every CTA of the cluster,
# then __syncthreads, then thread r arrives on CTA r's mbarrier of that buffer; a step waits on its
# buffer's phase (s - 1) >> 1 & 1), with the CTAs of a cluster interleaved at random at every store,
# arrival and wait. Checked: no store lands in a buffer that its CTA still has to read (or reads),
# every state value and every output written exactly once per step, no wait passing a later phase
# than its own, no deadlock, and the results against the CPU op. It runs this Python model, not the
# CUDA code: that needs a GPU (tests above with path="tiled").

_TNB, _TNJ = 4, 4


class _MBarrier:
    """mbarrier with an expected count: completes a phase when `count` arrivals have come."""

    def __init__(self, count: int):
        self.count, self.pending, self.completed = count, count, 0

    def arrive(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.completed += 1
            self.pending = self.count

    def try_wait_parity(self, parity: int) -> bool:
        """PTX try_wait.parity: true once the current (incomplete) phase's parity differs."""
        return (self.completed & 1) != parity


def _tiled_cluster(geo, BT, KS, C, b0, bt, seq, w_hh, hx, pre, *, bwd, relu, go=None, ghn=None,
                   fwd_out=None, rng=None):
    """One cluster (batch tile b0 .. b0 + bt) of tiled_kernel; returns what it writes to global
    memory as {(name, index): value} plus its write counts."""
    H, T, reverse = geo["H"], geo["T"], geo["reverse"]
    bs, off = seq
    R = (H + C - 1) // C
    R = (R + 3) // 4 * 4
    HP, ldw = C * R, C * R + 4
    jgroups, bgroups = R // _TNJ, BT // _TNB
    nthreads = -(-(KS * jgroups * bgroups) // 32) * 32
    # Shared memory of each CTA: W slice, two state buffers, two mbarriers.
    W = []
    for rank in range(C):
        w = [0.0] * (R * ldw)
        for jl in range(R):
            for k in range(HP):
                j = rank * R + jl
                if j < H and k < H:
                    w[jl * ldw + k] = float(w_hh[k, j] if bwd else w_hh[j, k])
        W.append(w)
    state = [[[0.0] * (BT * HP) for _ in range(2)] for _ in range(C)]
    for rank in range(C):
        for b in range(bt):
            for k in range(H):
                if not bwd and hx is not None:
                    state[rank][0][b * HP + k] = float(hx[b0 + b, k])
    full = [[_MBarrier(C), _MBarrier(C)] for _ in range(C)]
    reading = [[None, None] for _ in range(C)]  # step whose read of the buffer is in progress
    read_done = [[-1, -1] for _ in range(C)]    # last step that finished reading the buffer
    filled = [[0, -1] for _ in range(C)]        # step whose input the buffer holds (0: initial)
    written = {}                                # (buffer owner, buffer, step, index) -> count
    out = {}
    counts = {}

    def gwrite(name, idx, v):
        out[(name, idx)] = v
        counts[(name, idx)] = counts.get((name, idx), 0) + 1

    def cta(rank):
        j0 = rank * R
        prev_rows = 0
        for s in range(T):
            cur, nxt = s & 1, (s & 1) ^ 1
            t = T - 1 - s if bwd != reverse else s
            rows, o = bs[t], off[t]
            if s > 0:
                parity = ((s - 1) >> 1) & 1
                while not full[rank][cur].try_wait_parity(parity):
                    yield "blocked"
                # The phase waited for is exactly the one of this step, not a later one.
                assert full[rank][cur].completed == (s - 1) // 2 + 1, (rank, s)
            assert filled[rank][cur] == s, f"CTA {rank} step {s} reads the input of {filled[rank][cur]}"
            reading[rank][cur] = s
            hc = state[rank][cur]
            values = {}  # (row b, column j) -> new state value, from the owning lane
            for tid in range(nthreads):
                kl, q = tid % KS, tid // KS
                worker = q < jgroups * bgroups
                jl0 = (q % jgroups) * _TNJ if worker else 0
                br0 = (q // jgroups) * _TNB if worker else 0
                if not worker:
                    continue
                # tiled_product: this lane's partial sums; the xor butterfly over KS lanes sums the
                # group, so each lane ends with the sum over k4 = 0 .. HP/4 - 1 (same set of terms).
                acc = [[0.0] * _TNJ for _ in range(_TNB)]
                for lane in range(KS):
                    for k4 in range(lane, HP // 4, KS):
                        for c in range(_TNJ):
                            for r in range(_TNB):
                                for i in range(4):
                                    k = 4 * k4 + i
                                    acc[r][c] += W[rank][(jl0 + c) * ldw + k] * hc[(br0 + r) * HP + k]
                for r in range(_TNB):
                    b = br0 + r
                    if r % KS != kl or b >= bt:
                        continue
                    e = b0 + b
                    for c in range(_TNJ):
                        j = j0 + jl0 + c
                        v = 0.0
                        if j < H:
                            if e < rows:
                                idx = (o + e) * H + j
                                if bwd:
                                    g = float(go[o + e, j])
                                    if ghn is not None and e >= prev_rows:
                                        g += float(ghn[e, j])
                                    h = float(fwd_out[o + e, j])
                                    a = g + acc[r][c]
                                    v = a * (1.0 if h > 0 else 0.0) if relu else a * (1.0 - h * h)
                                    gwrite("dpre", idx, v)
                                else:
                                    p_ = acc[r][c] + float(pre[o + e, j])
                                    v = max(p_, 0.0) if relu else math.tanh(p_)
                                    gwrite("out", idx, v)
                            else:
                                v = hc[b * HP + j]
                        values[(b, j)] = v
            read_done[rank][cur] = s
            reading[rank][cur] = None
            # 16-byte stores of each owned 4-vector into every CTA's next buffer, interleaved.
            targets = list(range(C))
            rng.shuffle(targets)
            for pr in targets:
                yield "store"
                # The consumer must have finished reading this buffer (its step s - 1) and not be
                # reading it now.
                assert reading[pr][nxt] is None, f"step {s}: CTA {rank} writes into CTA {pr}'s read"
                assert read_done[pr][nxt] >= s - 1, f"step {s}: CTA {rank} overwrites CTA {pr}'s unread input"
                for (b, j), v in values.items():
                    state[pr][nxt][b * HP + j] = v
                    key = (pr, nxt, s, b * HP + j)
                    written[key] = written.get(key, 0) + 1
            # __syncthreads, then thread pr < C arrives on CTA pr's full[nxt].
            for pr in range(C):
                yield "arrive"
                full[pr][nxt].arrive()
                if full[pr][nxt].pending == C:  # this arrival completed the phase
                    filled[pr][nxt] = s + 1
            prev_rows = rows
        fin = T & 1
        while not full[rank][fin].try_wait_parity(((T - 1) >> 1) & 1):
            yield "blocked"
        hfin = state[rank][fin]
        if bwd:
            for b in range(bt):
                for jl in range(R):
                    j = j0 + jl
                    if j < H:
                        gwrite("grad_hx", (b0 + b) * H + j,
                               sum(W[rank][jl * ldw + k] * hfin[b * HP + k] for k in range(HP)))
        else:
            for b in range(bt):
                for jl in range(R):
                    j = j0 + jl
                    if j < H:
                        gwrite("h_n", (b0 + b) * H + j, hfin[b * HP + j])

    gens = {rank: cta(rank) for rank in range(C)}
    stalled = 0
    while gens:
        rank = rng.choice(sorted(gens))
        try:
            ev = next(gens[rank])
        except StopIteration:
            del gens[rank]
            stalled = 0
            continue
        stalled = stalled + 1 if ev == "blocked" else 0
        assert stalled < 1000, "deadlock: every CTA of the cluster waits"
    # Every state value of every step written exactly once into every CTA.
    for (pr, buf, s, i), n in written.items():
        assert n == 1, (pr, buf, s, i, n)
    assert len(written) == C * T * bt * HP, (len(written), C * T * bt * HP)
    return out, counts


def _run_tiled(x, bs, hx, w_ih, w_hh, b, relu, reverse, go, ghn, *, C, BT, KS, seed):
    """The tiled kernel's forward and backward over every batch tile (clusters are independent)."""
    import random
    rng = random.Random(seed)
    T, B, H = len(bs), bs[0], w_hh.shape[0]
    off = [0]
    for n in bs:
        off.append(off[-1] + n)
    pre = x @ w_ih.T + b
    geo = dict(H=H, T=T, reverse=reverse)
    N = off[-1]
    res = {name: torch.zeros(n * H, dtype=torch.float64)
           for name, n in (("out", N), ("h_n", B), ("dpre", N), ("grad_hx", B))}
    cnt = {k: torch.zeros_like(v) for k, v in res.items()}
    for bwd in (False, True):
        fwd_out = res["out"].view(N, H)
        for b0 in range(0, B, BT):
            bt = min(BT, B - b0)
            out, counts = _tiled_cluster(geo, BT, KS, C, b0, bt, (bs, off), w_hh, hx, pre, bwd=bwd, relu=relu,
                                         go=go, ghn=ghn, fwd_out=fwd_out, rng=rng)
            for (name, idx), v in out.items():
                res[name][idx] = v
                cnt[name][idx] += counts[(name, idx)]
    for name, c in cnt.items():
        assert bool((c == 1).all()), f"{name}: some elements written {sorted(set(c.tolist()))} times"
    return res["out"].view(N, H), res["h_n"].view(B, H), res["dpre"].view(N, H), res["grad_hx"].view(B, H)


TILED_CASES = [
    # (C, BT, KS, H, B): clusters of 1-8 CTAs, tiles of 4-8 rows, 1-8 lanes per dot product, H not a
    # multiple of 4 or of C, a partial last tile, CTAs whose rows are all padding (H=5, C=4)
    (1, 4, 1, 6, 3), (1, 4, 4, 9, 5), (2, 4, 2, 10, 6), (2, 8, 4, 7, 9), (4, 4, 1, 13, 4),
    (4, 4, 4, 5, 2), (8, 4, 2, 17, 5), (2, 4, 1, 4, 1), (2, 4, 8, 23, 3),
]


@pytest.mark.parametrize("C,BT,KS,H,B", TILED_CASES)
def test_algorithm_tiled_kernel_matches_cpu_op(C, BT, KS, H, B):
    g = _gen(1000 + C * 100 + H * 10 + B)
    for trial in range(4):
        T, In = 1 + (trial * 2 + H) % 5, 3
        packed = trial % 2 == 1
        if packed:
            lengths = sorted([T] + [int(torch.randint(1, T + 1, (1,), generator=g)) for _ in range(B - 1)],
                             reverse=True)
        else:
            lengths = [T] * B
        bs = _batch_sizes(lengths)
        x = _randn(int(bs.sum()), In, gen=g)
        hx = _randn(B, H, gen=g, scale=0.5)
        w_ih, w_hh, b = _randn(H, In, gen=g), _randn(H, H, gen=g, scale=0.5), _randn(H, gen=g)
        relu, reverse = trial in (1, 2), trial >= 2
        out, h_n = FWD(x, bs, hx, w_ih, w_hh, b, None, relu, reverse)
        go, ghn = _randn(*out.shape, gen=g), _randn(*h_n.shape, gen=g)
        grads = BWD(go, ghn, x, bs, hx, w_ih, w_hh, out, relu, reverse, [True] * 5)
        e_out, e_hn, e_dpre, e_ghx = _run_tiled(x, bs.tolist(), hx, w_ih, w_hh, b, relu, reverse, go, ghn,
                                                C=C, BT=BT, KS=KS, seed=trial)
        torch.testing.assert_close(e_out, out, **F64)
        torch.testing.assert_close(e_hn, h_n, **F64)
        torch.testing.assert_close(e_ghx, grads[1], **F64)
        torch.testing.assert_close(e_dpre @ w_ih, grads[0], **F64)
        torch.testing.assert_close(e_dpre.sum(0), grads[4], **F64)
