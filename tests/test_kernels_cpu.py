"""Equivalence of rnnext's CPU kernels with torch.nn.RNN: forward, h_n and every gradient.

Aimed at the kernel code paths: hidden sizes around the vector widths (1, 7, 16, 17, 33, 64, 100),
B = 1, T = 1, long T, packed input in both directions, relu, no bias, several layers.
float64 is compared tightly (the kernels must not lose precision), float32 at float32 tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnext

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _pair(n_in, H, layers, nonlinearity, bias, bidirectional, dtype, seed):
    torch.manual_seed(seed)
    ref = nn.RNN(n_in, H, layers, nonlinearity=nonlinearity, bias=bias, bidirectional=bidirectional)
    ref = ref.to(dtype)
    new = rnnext.RNN(n_in, H, layers, nonlinearity=nonlinearity, bias=bias, bidirectional=bidirectional)
    new = new.to(dtype)
    new.load_state_dict(ref.state_dict())
    return ref, new


def _check(ref, new, x, h0, dtype, packed_lengths=None, tol=None):
    tol = tol or TOL[dtype]
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    hs = [h0.clone().requires_grad_(), h0.clone().requires_grad_()]
    outs = []
    for m, xi, hi in zip((ref, new), xs, hs):
        inp = xi
        if packed_lengths is not None:
            inp = pack_padded_sequence(xi, packed_lengths, enforce_sorted=False)
        y, h = m(inp, hi)
        if packed_lengths is not None:
            y = y.data
        outs.append((y, h))
    (y0, h0r), (y1, h1r) = outs
    torch.testing.assert_close(y1, y0, **tol)
    torch.testing.assert_close(h1r, h0r, **tol)
    torch.manual_seed(123)
    gy = torch.randn_like(y0)
    gh = torch.randn_like(h0r)
    for (y, h) in outs:
        ((y * gy).sum() + (h * gh).sum()).backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, **tol)
    torch.testing.assert_close(hs[1].grad, hs[0].grad, **tol)
    for (name, p0), p1 in zip(ref.named_parameters(), new.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("H", [1, 7, 16, 17, 33, 64, 100])
@pytest.mark.parametrize("B", [1, 3, 9])
def test_hidden_and_batch_sizes(dtype, H, B):
    ref, new = _pair(5, H, 1, "tanh", True, False, dtype, seed=H * 31 + B)
    x = torch.randn(6, B, 5, dtype=dtype)
    h0 = torch.randn(1, B, H, dtype=dtype)
    _check(ref, new, x, h0, dtype)


@pytest.mark.parametrize("gemm", ["own", "blas"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [*range(1, 15), 16, 17, 20, 23, 25, 31, 37])
def test_register_blocks_of_every_row_count(monkeypatch, B, threads, gemm, set_threads):
    # The kernel cuts a step's rows (a thread's slice) into register blocks of at most 6 rows (AVX-512;
    # 4 on AVX2), as equal as they come: every count up to 2 x 6 + 2, and a few beyond, on 1 and 2
    # threads (slices of B / 2 rows), with the weight gradients in the own GEMM (whose A^T rows are
    # H = 70, cut the same way) and in the BLAS. T and H large enough for the fused path and a split.
    monkeypatch.setenv("RNNEXT_CPU_GEMM", gemm)
    set_threads(threads)
    ref, new = _pair(24, 70, 1, "tanh", True, False, torch.float64, seed=B)
    x = torch.randn(40, B, 24, dtype=torch.float64)
    h0 = torch.randn(1, B, 70, dtype=torch.float64)
    _check(ref, new, x, h0, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_options(dtype, nonlinearity, bias, bidirectional):
    ref, new = _pair(11, 24, 2, nonlinearity, bias, bidirectional, dtype, seed=7)
    D = 2 if bidirectional else 1
    x = torch.randn(9, 5, 11, dtype=dtype)
    h0 = torch.randn(2 * D, 5, 24, dtype=dtype)
    _check(ref, new, x, h0, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 4), (300, 2)])
def test_extreme_lengths(dtype, T, B):
    ref, new = _pair(4, 19, 1, "tanh", True, True, dtype, seed=T + B)
    # Small weights keep a long tanh recurrence from saturating into a trivial answer.
    x = torch.randn(T, B, 4, dtype=dtype)
    h0 = torch.randn(2, B, 19, dtype=dtype)
    _check(ref, new, x, h0, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("H", [1, 20, 48])
def test_packed_bidirectional(dtype, nonlinearity, H):
    ref, new = _pair(6, H, 2, nonlinearity, True, True, dtype, seed=H)
    lengths = torch.tensor([7, 3, 12, 1, 12, 5])
    x = torch.randn(12, 6, 6, dtype=dtype)
    h0 = torch.randn(4, 6, H, dtype=dtype)
    _check(ref, new, x, h0, dtype, packed_lengths=lengths)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("H", [8, 130])
def test_wider_batches(dtype, H):
    # Batch sizes above the row blocking and hidden sizes above the column blocking.
    ref, new = _pair(13, H, 1, "tanh", True, True, dtype, seed=H)
    x = torch.randn(5, 37, 13, dtype=dtype)
    h0 = torch.randn(2, 37, H, dtype=dtype)
    _check(ref, new, x, h0, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_hx_and_saturation(dtype):
    # Large inputs drive tanh into saturation (|x| > 9), where a vectorised tanh must give +-1.
    ref, new = _pair(3, 17, 1, "tanh", True, False, dtype, seed=3)
    x = 30 * torch.randn(8, 4, 3, dtype=dtype)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    y0, _ = ref(xs[0])
    y1, _ = new(xs[1])
    torch.testing.assert_close(y1, y0, **TOL[dtype])
    y0.sum().backward()
    y1.sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cell(dtype):
    torch.manual_seed(0)
    ref = nn.RNNCell(10, 23).to(dtype)
    new = rnnext.RNNCell(10, 23).to(dtype)
    new.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10, dtype=dtype)
    h = torch.randn(3, 23, dtype=dtype)
    torch.testing.assert_close(new(x, h), ref(x, h), **TOL[dtype])


def test_tanh_accuracy_float32():
    # Directly the activation: one step with identity-free weights isolates tanh(pre-activation).
    x = torch.linspace(-12, 12, 20001, dtype=torch.float32).reshape(1, -1, 1)
    w_ih = torch.ones(1, 1)
    w_hh = torch.zeros(1, 1)
    out, _ = torch.ops.rnnext.rnn_forward(x, None, None, w_ih, w_hh, None, None, False, False)
    torch.testing.assert_close(out.flatten(), torch.tanh(x.flatten()), rtol=4e-7, atol=1e-7)


def test_tanh_accuracy_float64():
    # The float64 kernels' vector tanh (e^y - 1) / (e^y + 1) with one division: within ~3 ulp of
    # the true value (so 7e-16 relative of torch.tanh), worst where its exponent n turns from 0 to
    # 1 (|x| ~ 0.1733: a dense sweep of both signs there); exactly +-1 from |x| = 20 on (and for
    # +-inf), tiny and denormal inputs unchanged, NaN propagated.
    sweep = torch.linspace(0.15, 0.2, 100001, dtype=torch.float64)
    x = torch.cat([
        torch.linspace(-25, 25, 100001, dtype=torch.float64), sweep, -sweep,
        torch.tensor([0.6249999999, 0.625, 0.6250000001, 19.5, 20.0, 21.0, 1e300, float("inf"),
                      -float("inf"), 1e-300, -5e-324, float("nan")], dtype=torch.float64),
    ]).reshape(1, -1, 1)
    w_ih, w_hh = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    out, _ = torch.ops.rnnext.rnn_forward(x, None, None, w_ih, w_hh, None, None, False, False)
    torch.testing.assert_close(out.flatten(), torch.tanh(x.flatten()), rtol=7e-16, atol=0,
                               equal_nan=True)


def _op_args(packed, hx, bias, dtype=torch.float64):
    torch.manual_seed(5)
    H, n_in = 9, 4
    if packed:
        bs = torch.tensor([3, 3, 2, 1])
        x = torch.randn(int(bs.sum()), n_in, dtype=dtype, requires_grad=True)
    else:
        bs = None
        x = torch.randn(4, 3, n_in, dtype=dtype, requires_grad=True)
    h = torch.randn(3, H, dtype=dtype, requires_grad=True) if hx else None
    w = [
        torch.randn(H, n_in, dtype=dtype, requires_grad=True),
        torch.randn(H, H, dtype=dtype, requires_grad=True),
    ]
    b = [torch.randn(H, dtype=dtype, requires_grad=True), None] if bias else [None, None]
    return (x, bs, h, w[0], w[1], b[0], b[1])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("hx", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_and_gradcheck(packed, hx, bias):
    # The CPU autograd kernel (C++, AutogradCPU) must pass opcheck and gradcheck, including
    # absent optionals (which shift the graph node's input indices).
    args = _op_args(packed, hx, bias)
    for reverse in (False, True):
        full = (*args, False, reverse)
        torch.library.opcheck(torch.ops.rnnext.rnn_forward.default, full)

        def f(*t, reverse=reverse):
            return torch.ops.rnnext.rnn_forward(*t, False, reverse)

        torch.autograd.gradcheck(f, args)


def test_autograd_partial_requires_grad():
    # Only some inputs require grad: the others get no gradient and nothing fails.
    x, bs, h, w_ih, w_hh, b_ih, _ = _op_args(False, True, True)
    h = h.detach()
    w_ih = w_ih.detach()
    out, h_n = torch.ops.rnnext.rnn_forward(x, bs, h, w_ih, w_hh, b_ih, None, True, False)
    h_n.sum().backward()  # output unused: its gradient is None inside the backward
    assert x.grad is not None and w_hh.grad is not None and b_ih.grad is not None
    with torch.no_grad():
        out2, _ = torch.ops.rnnext.rnn_forward(x, bs, h, w_ih, w_hh, b_ih, None, True, False)
    assert out2.grad_fn is None and out.grad_fn is not None
    torch.testing.assert_close(out2, out.detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("packed", [False, True])
def test_large_hidden(dtype, packed):
    # H = 520: W_hh in 9 column panels (the last one partial) and 5 k chunks of the micro-kernel.
    ref, new = _pair(8, 520, 1, "tanh", True, True, dtype, seed=11)
    x = torch.randn(4, 3, 8, dtype=dtype)
    h0 = torch.randn(2, 3, 520, dtype=dtype)
    _check(ref, new, x, h0, dtype, packed_lengths=torch.tensor([4, 2, 3]) if packed else None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_rows_split_between_threads_packed(dtype, threads, set_threads):
    # Large enough for the batch rows to be split between threads (by work, for packed input);
    # 3 threads on this shape also exercises uneven slices. The answer must not depend on it.
    set_threads(threads)
    ref, new = _pair(5, 70, 1, "tanh", True, True, dtype, seed=threads)
    torch.manual_seed(0)
    lengths = torch.randint(1, 31, (41,))
    lengths[3] = 30
    x = torch.randn(30, 41, 5, dtype=dtype)
    h0 = torch.randn(2, 41, 70, dtype=dtype)
    # Weight gradients here sum ~600 rows: float32 rounding reaches ~2e-5 absolute.
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else None
    _check(ref, new, x, h0, dtype, packed_lengths=lengths, tol=tol)
    _check(ref, new, x, h0, dtype, tol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_in,H", [(600, 64), (40, 96)])
def test_projection_paths(dtype, n_in, H):
    # n_in > 512 with a large enough projection: one MKL addmm before the recurrence; moderate n_in:
    # the projection runs per step inside the recurrence (threads split rows at this size).
    ref, new = _pair(n_in, H, 1, "relu", True, False, dtype, seed=n_in)
    x = torch.randn(40, 6, n_in, dtype=dtype)
    h0 = torch.randn(1, 6, H, dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else None
    _check(ref, new, x, h0, dtype, tol=tol)
    # a non-contiguous (batch-first transposed) input takes the same paths
    ref_b, new_b = _pair(n_in, H, 1, "tanh", False, False, dtype, seed=n_in + 1)
    xb = torch.randn(6, 40, n_in, dtype=dtype).transpose(0, 1)
    _check(ref_b, new_b, xb, h0, dtype, tol=tol)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_nan_and_inf_propagate_like_torch(nonlinearity):
    ref, new = _pair(3, 21, 1, nonlinearity, True, False, torch.float32, seed=4)
    x = torch.randn(5, 2, 3)
    x[1, 0, 2] = float("nan")
    x[2, 1, 0] = float("inf")
    x[3, 1, 1] = -float("inf")
    with torch.no_grad():
        y0, h0 = ref(x)
        y1, h1 = new(x)
    torch.testing.assert_close(y1, y0, equal_nan=True, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(h1, h0, equal_nan=True, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relu_nan_gradient_like_torch(dtype):
    # torch's relu backward zeroes the gradient where h <= 0 only: a NaN h passes its gradient.
    ref, new = _pair(3, 19, 1, "relu", True, False, dtype, seed=8)
    x = torch.randn(4, 2, 3, dtype=dtype)
    x[1, 0, 1] = float("nan")
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    for m, xi in zip((ref, new), xs):
        y, h = m(xi)
        y.sum().backward()
    torch.testing.assert_close(xs[1].grad, xs[0].grad, equal_nan=True, **TOL[dtype])
    for p0, p1 in zip(ref.parameters(), new.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, equal_nan=True, **TOL[dtype])


def test_tanh_saturates_exactly_float32():
    # tanh rounds to exactly +-1 from |x| ~ 9.01 on; +-inf gives +-1 (then 1 - h^2 = 0 exactly,
    # and 0 * inf in the weight gradients is NaN, as in torch.nn). (At 9.0 torch gives 1 - 2^-24,
    # the float32 below 1: the kernel's tanh is within 5.3 ulp, test_tanh_accuracy_float32.)
    x = torch.tensor([9.02, 9.5, 10.0, 30.0, 1e30, float("inf"), -9.02, -10.0, -float("inf")])
    x = x.reshape(1, -1, 1)
    w_ih, w_hh = torch.ones(1, 1), torch.zeros(1, 1)
    out, _ = torch.ops.rnnext.rnn_forward(x, None, None, w_ih, w_hh, None, None, False, False)
    assert torch.equal(out.flatten(), torch.tanh(x.flatten()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 2, 4, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_few_steps_blas_path(dtype, T, bias):
    # T <= 4 with H >= 32 runs both forward products in BLAS on the unpacked weights; T <= 2 of a
    # large enough step (B H (H + I) >= 2^20) the backward too, grad_input included. T = 5 is the
    # packed micro-kernel again. Padded, packed, reverse, hx or not, a transposed-view input.
    ref, new = _pair(96, 160, 1, "tanh", bias, True, dtype, seed=T)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else None
    x = torch.randn(T, 40, 96, dtype=dtype)
    h0 = torch.randn(2, 40, 160, dtype=dtype)
    _check(ref, new, x, h0, dtype, tol=tol)
    lengths = torch.randint(1, T + 1, (40,))
    _check(ref, new, x, h0, dtype, packed_lengths=lengths, tol=tol)
    xb = torch.randn(40, T, 96, dtype=dtype).transpose(0, 1)
    _check(ref, new, xb, h0, dtype, tol=tol)
    y0, h0r = ref(x)
    y1, h1r = new(x)
    torch.testing.assert_close(y1, y0, **(tol or TOL[dtype]))
    torch.testing.assert_close(h1r, h0r, **(tol or TOL[dtype]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_few_steps_cell_strided_weight(dtype):
    # An RNNCell step (T = 1, BLAS path) with a weight that is a non-contiguous view (its rows are
    # read with their own stride, or copied when BLAS cannot): same values and gradients as nn.
    torch.manual_seed(0)
    ref = nn.RNNCell(48, 64).to(dtype)
    big = torch.randn(64, 96, dtype=dtype)
    wide = big[:, ::2]  # column stride 2: copied for BLAS
    for w in (wide, big[:, :48]):  # row stride 96 > 48: read in place
        x = torch.randn(5, 48, dtype=dtype, requires_grad=True)
        h = torch.randn(5, 64, dtype=dtype, requires_grad=True)
        args = (w, ref.weight_hh, ref.bias_ih, ref.bias_hh)
        got = rnnext.functional.rnn_cell(x, h, *args)
        want = torch.rnn_tanh_cell(x, h, *args)
        torch.testing.assert_close(got, want, **TOL[dtype])
        g = torch.randn_like(want)
        gx = torch.autograd.grad((got * g).sum(), (x, h))
        wx = torch.autograd.grad((want * g).sum(), (x, h))
        for a, b in zip(gx, wx):
            torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T,B,H", [(1, 5, 48), (6, 3, 20), (6, 9, 64), (3, 40, 160)])
def test_expanded_input_rows(dtype, T, B, H):
    # An input broadcast over the batch (row stride 0): BLAS (the projection of narrow batches,
    # the weight gradient) needs a row stride >= I, so it is copied; never read at stride 0.
    ref, new = _pair(7, H, 1, "tanh", True, False, dtype, seed=T * B)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else None
    x = torch.randn(T, 1, 7, dtype=dtype).expand(T, B, 7)
    h0 = torch.randn(1, B, H, dtype=dtype)
    _check(ref, new, x, h0, dtype, tol=tol)
    cell_ref = nn.RNNCell(7, H).to(dtype)
    cell = rnnext.RNNCell(7, H).to(dtype)
    cell.load_state_dict(cell_ref.state_dict())
    xc = torch.randn(1, 7, dtype=dtype).expand(B, 7)
    for m in (cell_ref, cell):
        m(xc, h0[0]).square().sum().backward()
    for a, b in zip(cell.parameters(), cell_ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, **(tol or TOL[dtype]))


# ---- Every CPU path on purpose (csrc/cpu/plan.h), against the float64 reference of test_ops ----

CPU_PATHS = ["fused", "kernel", "blas", "blas-fused", "columns"]


def _op_case(packed, reverse, relu, has_hx, bias, dtype, T=10, B=17, n_in=6, H=75, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    if packed:
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g).sort(descending=True).values
        lengths[0] = T
        bs = torch.tensor([int((lengths > t).sum()) for t in range(T)])
        x = rand(int(bs.sum()), n_in)
    else:
        bs = None
        x = rand(T, B, n_in)
    s = H**-0.5
    hx = rand(B, H) if has_hx else None
    b_ih, b_hh = (rand(H), rand(H)) if bias else (None, None)
    return x, bs, hx, rand(H, n_in, scale=s), rand(H, H, scale=s), b_ih, b_hh


def _grads(fn, args):
    leaves = [a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
              else a for a in args]
    out, h_n = fn(*leaves)
    g = torch.Generator().manual_seed(99)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    gh = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(out.dtype)
    wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad((out * go).sum() + (h_n * gh).sum(), wrt)
    return [out.detach(), h_n.detach(), *grads]


def _matches_reference(args, relu, reverse, tol):
    # The op's output, h_n and every gradient (_grads) against the float64 reference's on the same
    # values; each named by its argument (bs, the integer batch sizes, takes no gradient).
    from test_ops import reference

    got = _grads(lambda *a: torch.ops.rnnext.rnn_forward(*a, relu, reverse), args)
    ref_args = [a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]
    want = _grads(lambda *a: reference(*a, relu, reverse), ref_args)
    arg_names = ["input", "bs", "hx", "w_ih", "w_hh", "b_ih", "b_hh"]
    names = ["output", "h_n"] + [n for n, a in zip(arg_names, args)
                                 if isinstance(a, torch.Tensor) and a.is_floating_point()]
    assert len(names) == len(got) == len(want)
    for name, a, b in zip(names, got, want):
        torch.testing.assert_close(a.double(), b, **tol, msg=lambda m, n=name: f"{n}: {m}")


OWN_GEMM_PATHS = [p + "+own-gemm" for p in ("fused", "kernel", "columns", "blas")]


@pytest.mark.parametrize("path", CPU_PATHS + OWN_GEMM_PATHS)
@pytest.mark.parametrize("size", ["small", "chunked", "streamed"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_each_cpu_path_matches_reference(
    monkeypatch, path, size, packed, reverse, threads, dtype, set_threads
):
    # RNNEXT_CPU_PATH forces the path for rnn_forward and rnn_backward alike; the answer (output,
    # h_n, every gradient) must be the float64 reference's, whatever the path and thread count.
    # small: H = 75 leaves partial vectors, B = 17 partial row blocks and uneven thread slices; at
    # 2 threads the recurrence is large enough (N H^2 >= 2^19) to be split. chunked: I = 140 and
    # H = 150 run the micro-kernel's k in two chunks (128 + rest) over three column panels.
    # streamed: H = 730, so every call's packed weights are over the 1 MB from which the kernel
    # prefetches the next chunk's rows of P as it goes (kStreamWeightBytes; a column split's
    # thread: 6 of the 12 panels, 1.1 MB in float32), the last panel partial.
    # "+own-gemm": RNNEXT_CPU_GEMM=own runs the GEMMs over all rows (projection, grad_input, the
    # weight gradients) in the micro-kernel instead of the BLAS (the default off Intel CPUs).
    path, own = path.split("+")[0], path.endswith("+own-gemm")
    monkeypatch.setenv("RNNEXT_CPU_PATH", path)
    monkeypatch.setenv("RNNEXT_CPU_GEMM", "own" if own else "blas")
    set_threads(threads)
    T, B, n_in, H = {"small": (10, 17, 6, 75), "chunked": (5, 9, 140, 150),
                     "streamed": (3, 5, 40, 730)}[size]
    for k, (relu, has_hx, bias) in enumerate([(False, True, True), (True, False, False)]):
        args = _op_case(packed, reverse, relu, has_hx, bias, dtype, T, B, n_in, H, seed=k + 3 * packed)
        assert rnnext._C._cpu_plan(T, B, n_in, H, dtype, packed, False).startswith(path + ":")
        assert rnnext._C._cpu_plan(T, B, n_in, H, dtype, packed, True).startswith(path + ":")
        tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        _matches_reference(args, relu, reverse, tol)


@pytest.mark.parametrize("path", ["kernel", "columns"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gemms_over_all_rows_of_a_few_rows(monkeypatch, path, threads, dtype, set_threads):
    # The projection and grad_input GEMMs (own_gemm_rows) of a call with one or three row blocks of
    # 128: at 2 threads each block's panels are split between the threads too (columns 0-255 and
    # 256-529, the last panel partial), and W_ih (I x H = 520 x 530, over 2^18 entries) is packed
    # by all the threads, each its panels (gemm.cpp). Output, h_n and every gradient against the
    # float64 reference.
    monkeypatch.setenv("RNNEXT_CPU_PATH", path)
    monkeypatch.setenv("RNNEXT_CPU_GEMM", "own")
    set_threads(threads)
    for k, (T, B) in enumerate([(3, 5), (10, 30)]):  # 15 rows: one block; 300 rows: three
        args = _op_case(False, k == 1, k == 1, True, True, dtype, T, B, 520, 530, seed=40 + k)
        tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        _matches_reference(args, k == 1, k == 1, tol)


@pytest.mark.parametrize("H", [75, 130, 421, 450])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrix_vector_steps(monkeypatch, H, packed, reverse, threads, dtype, set_threads):
    # One row a step on the blas path with rnnext's own GEMMs: the forward's steps run the
    # matrix-vector kernel on W_hh as it lies (kernels.h, gemv_kernel; Plan::own_matvec), the hidden
    # columns split between the threads where the call is large enough (H = 421 on 2 or 3 threads:
    # uneven shares of whole panels). H = 75 and 421 leave a partial vector of k (float32 and
    # float64) and rows of W past the last block of 4 and the last group of a vector's lanes; 130
    # has whole groups and 2 rows more; 450 float64 on one thread (a W_hh of 1.6 MB) reads W's rows
    # one at a time under the AVX-512 kernels, their form for a W past 1.5 MB (gemv_t_impl). Output,
    # h_n and every gradient against the float64 reference.
    monkeypatch.setenv("RNNEXT_CPU_PATH", "blas")
    monkeypatch.setenv("RNNEXT_CPU_GEMM", "own")
    set_threads(threads)
    T, B, n_in = 10, 1, 19
    for k, (relu, has_hx, bias) in enumerate([(False, True, True), (True, False, False)]):
        args = _op_case(packed, reverse, relu, has_hx, bias, dtype, T, B, n_in, H, seed=k + 5 * H)
        tol = TOL[torch.float64] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
        _matches_reference(args, relu, reverse, tol)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_planner_takes_matrix_vector_steps(monkeypatch, threads, dtype, set_threads):
    # The planner's own choice of those steps: a forward of one row whose W_hh is over 512 KB (H = 400
    # float32: 640 KB; H = 300 float64: 720 KB), where the GEMMs are rnnext's (RNNEXT_CPU_GEMM=own,
    # as on any CPU but an Intel one with MKL). Two rows keep the packed micro-kernel. The module's
    # output and final state equal torch.nn.RNN's.
    if rnnext._C._cpu_isa() == "base":
        pytest.skip("no vector micro-kernel on this CPU: the planner takes BLAS steps throughout")
    monkeypatch.delenv("RNNEXT_CPU_PATH", raising=False)
    monkeypatch.setenv("RNNEXT_CPU_GEMM", "own")
    set_threads(threads)
    H = 400 if dtype == torch.float32 else 300
    assert "rnnext's kernel" in rnnext._C._cpu_plan(20, 1, 32, H, dtype, False, False)
    assert not rnnext._C._cpu_plan(20, 2, 32, H, dtype, False, False).startswith("blas")
    ref, new = _pair(32, H, 1, "tanh", True, False, dtype, seed=3)
    torch.manual_seed(4)
    x = torch.randn(20, 1, 32, dtype=dtype)
    h0 = torch.randn(1, 1, H, dtype=dtype)
    with torch.no_grad():
        y0, h0r = ref(x, h0)
        y1, h1r = new(x, h0)
    torch.testing.assert_close(y1, y0, **TOL[dtype])
    torch.testing.assert_close(h1r, h0r, **TOL[dtype])


def test_ragged_w_hh_gradient_beyond_kept_memory(monkeypatch):
    # A packed batch of varying lengths with the weight gradients in the BLAS gathers each row's
    # h_prev into a buffer next to dpre. Here the two (2 x N x H float64, N ~ 9000, H = 512: over
    # 64 MB) are more than the backward keeps between calls, so both are fresh tensors, and the
    # gathered rows' buffer must live until the GEMM has read them (9bc2bd9: it was freed first,
    # and the gather wrote into unmapped memory). Every gradient against the float64 reference.
    monkeypatch.setenv("RNNEXT_CPU_GEMM", "blas")
    x, bs, hx, w_ih, w_hh, _, _ = _op_case(True, False, False, True, False, torch.float64,
                                           T=100, B=120, n_in=4, H=512, seed=5)
    assert 2 * x.shape[0] * 512 * 8 > 64 << 20
    _matches_reference((x, bs, hx, w_ih, w_hh, None, None), False, False, TOL[torch.float64])


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_backward_reads_strided_grad_output(monkeypatch, path, packed, threads, dtype, set_threads):
    # rnn_backward reads grad_output in place where its rows are a uniform stride apart (an expanded
    # row: stride 0; a direction's half of a [T, B, 2H] gradient: 2H), one row of it where all rows
    # are one (the expanded element of output.sum()'s gradient), and copies it otherwise
    # (batch_first's transpose, an expand along T only). Every layout gives exactly the gradients
    # of the same values made contiguous, on every path.
    monkeypatch.setenv("RNNEXT_CPU_PATH", path)
    set_threads(threads)
    T, B, n_in, H = 10, 17, 6, 75
    x, bs, hx, w_ih, w_hh, _, _ = _op_case(packed, False, False, True, False, dtype, T, B, n_in, H)
    out, _ = torch.ops.rnnext.rnn_forward(x, bs, hx, w_ih, w_hh, None, None, False, False)
    g = torch.Generator().manual_seed(7)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    grads = {
        "expanded element": rand(()).expand(out.shape),
        "expanded row": rand(H).expand(out.shape),
        "half of 2H": rand(*out.shape[:-1], 2 * H)[..., H:],
        "contiguous": rand(*out.shape),
    }
    if not packed:
        grads["batch_first"] = rand(B, T, H).transpose(0, 1)
        grads["expanded along T"] = rand(B, H).expand(out.shape)
    gh = rand(*hx.shape)
    mask = [True] * 5
    for name, go in grads.items():
        got = torch.ops.rnnext.rnn_backward(go, gh, x, bs, hx, w_ih, w_hh, out, False, False, mask)
        want = torch.ops.rnnext.rnn_backward(go.contiguous(), gh, x, bs, hx, w_ih, w_hh, out, False,
                                             False, mask)
        for a, b in zip(got, want):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weight_gradient_gemm(dtype, threads, set_threads):
    # The weight gradients' C = A^T B (A [k, m], B [k, n]) in the micro-kernel against float64:
    # k across the 128-row chunks and in slices a thread (k >= 512 at 2 threads: 700 x 20 x 70,
    # 1100 x 130 x 150), m across the 16-row task shares, n a narrow panel, one panel, and whole
    # panels plus a partial one (in groups of panels a thread where m is one share: 12 x 140 at 2
    # threads; 8 panels or more a task, A's chunks transposed: 37 x 520 with k = 300, a partial
    # last chunk; a task's part of C over 1 MB on either thread count, k in 512-row chunks where
    # the CPU takes them, test_gemm_chunk_lengths, and each block asking for the next one's rows
    # of C: 1000 x 530 with k = 600); strided rows; accumulation into C; k = 0 (C = 0, or C kept
    # when accumulating). The BLAS route gives the same.
    g = torch.Generator().manual_seed(5)
    set_threads(threads)
    for k, m, n in [(1, 1, 1), (129, 37, 5), (300, 75, 64), (257, 130, 150), (0, 9, 70), (64, 300, 16),
                    (200, 12, 140), (700, 20, 70), (1100, 130, 150), (300, 37, 520),
                    (600, 1000, 530)]:
        a = torch.randn(k, m + 3, generator=g, dtype=torch.float64)[:, :m].to(dtype)
        b = torch.randn(k, n + 5, generator=g, dtype=torch.float64)[:, :n].to(dtype)
        c0 = torch.randn(m, n + 2, generator=g, dtype=torch.float64)[:, :n].to(dtype)
        want = a.double().t() @ b.double()
        tol = (TOL[torch.float64] if dtype == torch.float64
               else dict(rtol=1e-5, atol=1e-5 * max(k, 1) ** 0.5))
        for own in (True, False):
            for accumulate in (False, True):
                c = c0.clone()
                rnnext._C._cpu_gemm_tn(a, b, c, accumulate, own)
                expect = want + c0.double() if accumulate else want
                torch.testing.assert_close(c.double(), expect, **tol,
                                           msg=lambda s, x=(k, m, n, own, accumulate): f"{x}: {s}")
    with pytest.raises(RuntimeError, match="sizes do not match"):
        rnnext._C._cpu_gemm_tn(torch.randn(3, 2), torch.randn(4, 2), torch.empty(2, 2), False, True)


def test_cpu_gemm_override_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("RNNEXT_CPU_GEMM", "mkl")
    x = torch.randn(3, 2, 4)
    with pytest.raises(RuntimeError, match="RNNEXT_CPU_GEMM=mkl is not a choice"):
        torch.ops.rnnext.rnn_forward(x, None, None, torch.randn(5, 4), torch.randn(5, 5), None, None,
                                     False, False)


def test_cpu_path_override_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv("RNNEXT_CPU_PATH", "fastest")
    x = torch.randn(3, 2, 4)
    with pytest.raises(RuntimeError, match="RNNEXT_CPU_PATH=fastest is not a CPU path"):
        torch.ops.rnnext.rnn_forward(x, None, None, torch.randn(5, 4), torch.randn(5, 5), None, None,
                                     False, False)
    with pytest.raises(RuntimeError, match="RNNEXT_CPU_PATH=fastest is not a CPU path"):
        rnnext._C._cpu_plan(3, 2, 4, 5, torch.float32, False, False)


def test_cpu_plan_names_a_path_and_a_reason(monkeypatch):
    monkeypatch.delenv("RNNEXT_CPU_PATH", raising=False)
    for shape in [(10, 3, 100, 20), (100, 64, 256, 256), (100, 64, 1024, 1024), (1, 8, 128, 128)]:
        for backward in (False, True):
            for dtype in (torch.float32, torch.float64):
                name, reason = rnnext._C._cpu_plan(*shape, dtype, False, backward).split(": ", 1)
                assert name in CPU_PATHS and reason
    with pytest.raises(TypeError):
        rnnext._C._cpu_plan(3, 2, 4, 5, "float32", False, False)


def test_cpu_plan_says_where_the_gemms_run():
    # _cpu_plan names where the GEMMs over all rows run, and why. Beside the AVX2 kernels, float64
    # with H x max(I, H) over 24 MB puts them in MKL wherever torch carries it (plan.cpp,
    # kAvx2BlasGemmMinWeightBytes; on an Intel CPU MKL takes them anyway); float32 and a float64
    # 1024 x 1024 keep the reason of every other shape. In a process of its own: the kernels'
    # instruction set is chosen once a process.
    if "avx2" not in rnnext._C._cpu_isas():
        pytest.skip("this CPU cannot run the avx2 kernels")
    env = {k: v for k, v in os.environ.items() if k not in ("RNNEXT_CPU_GEMM", "RNNEXT_CPU_PATH")}
    code = ("import torch, rnnext; torch.set_num_threads(2); print('|'.join("
            "rnnext._C._cpu_plan(20, 64, H, H, dt, False, b) for H, dt in ((2048, torch.float64), "
            "(2048, torch.float32), (1024, torch.float64)) for b in (False, True)))")
    run = subprocess.run([sys.executable, "-c", code], env={**env, "RNNEXT_CPU_ISA": "avx2"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    texts = run.stdout.strip().split("|")
    assert len(texts) == 6 and all("; the GEMMs over all rows in " in t for t in texts), texts
    mkl = torch.backends.mkl.is_available()
    for t in texts[:2]:
        assert ("; the GEMMs over all rows in the BLAS" in t) == mkl, t
    for t in texts[2:]:
        assert "24 MB" not in t, t


def test_float64_forward_past_24mb_of_w_hh(monkeypatch, set_threads):
    # A float64 W_hh over 24 MB takes whole BLAS steps on all threads where MKL runs on an Intel CPU
    # (plan.cpp, kWholeBlasStepMinWeightBytes), the column split elsewhere: either way, on 2
    # threads, the forward and its final state equal torch.nn.RNN's.
    monkeypatch.delenv("RNNEXT_CPU_PATH", raising=False)
    monkeypatch.delenv("RNNEXT_CPU_GEMM", raising=False)
    T, B, n_in, H = 6, 5, 8, 1800  # 1800^2 doubles: 24.7 MB
    set_threads(2)
    path = rnnext._C._cpu_plan(T, B, n_in, H, torch.float64, False, False).split(":")[0]
    assert path in ("blas", "columns")
    ref, new = _pair(n_in, H, 1, "tanh", True, False, torch.float64, seed=11)
    torch.manual_seed(12)
    x = torch.randn(T, B, n_in, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    with torch.no_grad():
        y0, h0r = ref(x, h0)
        y1, h1r = new(x, h0)
    torch.testing.assert_close(y1, y0, **TOL[torch.float64])
    torch.testing.assert_close(h1r, h0r, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("path", ["auto", *CPU_PATHS, "kernel+own-gemm"])
def test_bidirectional_directions_at_once(dtype, packed, context, path, monkeypatch, set_threads):
    # On 2 threads, a call that records no graph runs a bidirectional layer's two directions at
    # once, one thread each (csrc/stack.cpp; cpu::concurrent_directions), each writing its half of
    # the layer's output in place (rows 2H apart): this shape is above the size rule in both
    # layers; every path (forced; the own GEMM for the projection too) writes that way. The answer
    # must not depend on it.
    monkeypatch.setenv("RNNEXT_CPU_PATH", path.split("+")[0])
    if path.endswith("+own-gemm"):
        monkeypatch.setenv("RNNEXT_CPU_GEMM", "own")
    set_threads(2)
    ref, new = _pair(24, 96, 2, "tanh", True, True, dtype, seed=7)
    torch.manual_seed(1)
    x = torch.randn(40, 16, 24, dtype=dtype)
    h0 = torch.randn(4, 16, 96, dtype=dtype)
    lengths = torch.randint(1, 41, (16,))
    lengths[5] = 40
    mode = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with mode:
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        y0, h0r = ref(inp, h0)
        y1, h1r = new(inp, h0)
        if packed:
            y0, y1 = y0.data, y1.data
    torch.testing.assert_close(y1, y0, **TOL[dtype])
    torch.testing.assert_close(h1r, h0r, **TOL[dtype])


def test_directions_at_once_rule(set_threads):
    # The rule the stack follows, as the benchmark reports it: only on exactly two threads, and only
    # for a direction of at least the row split's threshold (2^19 multiply-adds).
    set_threads(2)
    assert rnnext._C._cpu_directions_at_once(40 * 16, 24, 96)
    assert not rnnext._C._cpu_directions_at_once(10 * 3, 100, 20)  # the tutorial stack
    set_threads(1)
    assert not rnnext._C._cpu_directions_at_once(40 * 16, 24, 96)


def _run_in_child(selection, env):
    # This file's tests matching `selection` (pytest -k), in a process of its own with `env`: they
    # must run and all pass.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          __file__, "-k", selection], env=env, capture_output=True, text=True,
                         timeout=900, cwd=os.path.dirname(__file__))
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout, run.stdout[-2000:]


def test_no_entry_read_before_written():
    # The CPU path allocates its packed weights, rings, scratch rows and outputs uninitialised:
    # every entry it reads must have been written first (else a result would depend on what the
    # memory held, often the same values from the call before). RNNEXT_CPU_POISON fills all of
    # that memory with NaN first; the equivalence tests of every path, row count, packed batch,
    # strided gradient, the weight-gradient GEMM and a bidirectional layer's directions writing
    # their halves of its output then run in a process of their own.
    env = {**os.environ, "RNNEXT_CPU_POISON": "1"}
    selection = ("test_register_blocks_of_every_row_count or test_each_cpu_path_matches_reference "
                 "or test_weight_gradient_gemm or test_backward_reads_strided_grad_output or "
                 "test_packed_bidirectional or test_large_hidden or test_options or "
                 "test_extreme_lengths or test_few_steps or test_rows_split_between_threads_packed "
                 "or test_bidirectional_directions_at_once")
    _run_in_child(selection, env)


@pytest.mark.parametrize("long_chunks", ["0", "1"])
def test_gemm_chunk_lengths(long_chunks):
    # The GEMMs over all rows (the weight gradients where a task's part of C is past L2) and the
    # steps whose W_hh is past L2 take k in chunks of 512 rows on the CPUs measured to gain from it
    # and of 128 elsewhere (kernels.cpp, long_chunk_rows): RNNEXT_CPU_LONG_CHUNKS sets either, so
    # that both run the weight-gradient GEMM's test and every path's (H = 730 steps; the "+own-gemm"
    # cases' projection and grad_input over k = 140 and 730) on any CPU.
    _run_in_child("test_weight_gradient_gemm or test_each_cpu_path_matches_reference",
                  {**os.environ, "RNNEXT_CPU_LONG_CHUNKS": long_chunks})


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_every_instruction_set(isa):
    # The kernels are chosen once a process, the widest the CPU runs (RNNEXT_CPU_ISA may only lower
    # the choice): on an AVX-512 machine the AVX2 and the portable kernels would never run in the
    # tests, so they run here, in a process of their own each, through this file's equivalence
    # tests of the register blocks, every path and the weight-gradient GEMM, and its accuracy tests
    # of the vector tanh (each instruction set has its own scaling and sign helpers).
    if isa not in rnnext._C._cpu_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    if isa == rnnext._C._cpu_isa():
        pytest.skip(f"{isa} is this CPU's widest: the rest of this file runs it")
    env = {**os.environ, "RNNEXT_CPU_ISA": isa}
    chosen = subprocess.run([sys.executable, "-c", "import rnnext; print(rnnext._C._cpu_isa())"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert chosen.stdout.strip() == isa, chosen.stderr
    selection = ("test_hidden_and_batch_sizes or test_register_blocks_of_every_row_count or "
                 "test_each_cpu_path_matches_reference or test_weight_gradient_gemm or "
                 "test_matrix_vector_steps or test_tanh_accuracy or test_tanh_saturates")
    _run_in_child(selection, env)
