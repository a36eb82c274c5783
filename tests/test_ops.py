"""The op boundary itself: opcheck, gradcheck and semantics of torch.ops.rnnext.* (csrc/OPS.md)."""

from __future__ import annotations

import itertools

import pytest
import torch

import rnnext  # noqa: F401  (registers the ops)

fwd = torch.ops.rnnext.rnn_forward.default
bwd = torch.ops.rnnext.rnn_backward.default


def reference(x, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    """A plain per-row Python reference of csrc/OPS.md, independent of torch.nn."""
    act = torch.relu if relu else torch.tanh
    H = w_hh.shape[0]
    if batch_sizes is None:
        T, B = x.shape[:2]
        sizes = [B] * T
        rows = x.reshape(T * B, -1)
    else:
        sizes = batch_sizes.tolist()
        B = sizes[0]
        rows = x
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    h = [hx[b] if hx is not None else x.new_zeros(H) for b in range(B)]
    out = [None] * offsets[-1]
    steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    h_n = [None] * B
    for t in steps:
        for b in range(sizes[t]):
            if reverse and (t == len(sizes) - 1 or b >= sizes[t + 1]):
                prev = hx[b] if hx is not None else x.new_zeros(H)
            else:
                prev = h[b]
            pre = rows[offsets[t] + b] @ w_ih.T + prev @ w_hh.T
            if b_ih is not None:
                pre = pre + b_ih
            if b_hh is not None:
                pre = pre + b_hh
            h[b] = act(pre)
            out[offsets[t] + b] = h[b]
            h_n[b] = h[b]
    output = torch.stack(out)
    if batch_sizes is None:
        output = output.view(len(sizes), B, H)
    return output, torch.stack(h_n)


def make_args(packed, has_hx, bias, dtype=torch.float64, T=5, B=3, In=4, H=6, requires_grad=False):
    g = torch.Generator().manual_seed(1234 + 7 * packed + 3 * has_hx + bias)

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1).requires_grad_(requires_grad)

    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1, 1][:T])
        x = rand(int(batch_sizes.sum()), In)
    else:
        batch_sizes = None
        x = rand(T, B, In)
    hx = rand(B, H) if has_hx else None
    b_ih, b_hh = (rand(H), rand(H)) if bias else (None, None)
    return x, batch_sizes, hx, rand(H, In), rand(H, H), b_ih, b_hh


OPTIONS = list(itertools.product([False, True], [False, True], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("packed,has_hx,bias,relu,reverse", OPTIONS)
def test_forward_matches_reference(packed, has_hx, bias, relu, reverse):
    args = make_args(packed, has_hx, bias)
    out, h_n = fwd(*args, relu, reverse)
    ref_out, ref_h = reference(*args, relu, reverse)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, ref_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("packed,has_hx,bias,relu,reverse", OPTIONS)
def test_gradcheck(packed, has_hx, bias, relu, reverse):
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_args(packed, has_hx, bias, requires_grad=True)
    if relu:  # keep pre-activations away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            w_ih.mul_(0.5)

    def f(x, hx, w_ih, w_hh, b_ih, b_hh):
        return fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)

    assert torch.autograd.gradcheck(f, (x, hx, w_ih, w_hh, b_ih, b_hh), atol=1e-8)


@pytest.mark.parametrize("packed,has_hx,bias,relu,reverse", OPTIONS[::3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_forward(packed, has_hx, bias, relu, reverse, dtype):
    args = make_args(packed, has_hx or packed, bias, dtype=dtype, requires_grad=True)
    torch.library.opcheck(fwd, (*args, relu, reverse))


@pytest.mark.parametrize("packed,has_hx,reverse", list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("mask", [[True] * 5, [True, False, False, True, False], [False] * 5])
def test_opcheck_backward(packed, has_hx, reverse, mask):
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_args(packed, has_hx or packed, True)
    out, h_n = fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, False, reverse)
    grad_out, grad_h = torch.randn_like(out), torch.randn_like(h_n)
    torch.library.opcheck(bwd, (grad_out, grad_h, x, bs, hx, w_ih, w_hh, out, False, reverse, mask))


def test_backward_mask_skips_outputs():
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_args(False, True, True)
    out, h_n = fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, False, False)
    mask = [False, True, False, False, True]
    grads = bwd(torch.randn_like(out), None, x, bs, hx, w_ih, w_hh, out, False, False, mask)
    assert [g.numel() == 0 for g in grads] == [True, False, True, True, False]
    assert grads[1].shape == hx.shape and grads[4].shape == b_ih.shape


def test_noncontiguous_inputs():
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_args(False, True, True, T=4, B=3, In=5, H=5)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    w_t = w_hh.T.contiguous().T
    assert not xt.is_contiguous() or not w_t.is_contiguous()
    a = fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, False, False)
    b = fwd(xt, bs, hx[:, :], w_ih, w_t, b_ih, b_hh, False, False)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("T,B", [(4, 0), (0, 3), (0, 0)])
@pytest.mark.parametrize(
    "has_hx,bias,reverse", [(False, True, False), (True, False, True), (True, True, False)]
)
def test_empty_padded_input(device, T, B, has_hx, bias, reverse):
    """OPS.md: T = 0 or B = 0 (padded) gives empty outputs, h_n = hx or zeros; backward gives empty
    or zero gradients of the right shapes (on the input's device), and honours output_mask."""
    In, H = 3, 5
    g = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, In, generator=g, dtype=torch.float64)
    hx = torch.randn(B, H, generator=g, dtype=torch.float64) if has_hx else None
    w_ih = torch.randn(H, In, generator=g, dtype=torch.float64)
    w_hh = torch.randn(H, H, generator=g, dtype=torch.float64)
    b_ih, b_hh = (
        (torch.randn(H, generator=g, dtype=torch.float64) for _ in range(2)) if bias else (None, None)
    )
    x, hx, w_ih, w_hh, b_ih, b_hh = (
        t if t is None else t.to(device) for t in (x, hx, w_ih, w_hh, b_ih, b_hh)
    )
    f64 = dict(dtype=torch.float64, device=device)
    out, h_n = fwd(x, None, hx, w_ih, w_hh, b_ih, b_hh, False, reverse)
    assert out.shape == (T, B, H) and h_n.shape == (B, H)
    torch.testing.assert_close(h_n, hx if has_hx else torch.zeros(B, H, **f64), rtol=0, atol=0)
    grad_h_n = torch.randn(B, H, generator=g, dtype=torch.float64).to(device)
    want = [
        torch.zeros(T, B, In, **f64),
        grad_h_n if T == 0 else torch.zeros(B, H, **f64),
        torch.zeros(H, In, **f64),
        torch.zeros(H, H, **f64),
        torch.zeros(H, **f64),
    ]
    for mask in ([True] * 5, [False, True, False, True, False], [False] * 5):
        grads = bwd(torch.randn_like(out), grad_h_n, x, None, hx, w_ih, w_hh, out, False, reverse, mask)
        for i, (got, expected, m) in enumerate(zip(grads, want, mask)):
            expected = expected if m else torch.empty(0, **f64)
            assert got.shape == expected.shape, (i, got.shape, expected.shape)
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=f"gradient {i}")
    # Through autograd too (the module path never sends B = 0 here, but the op must be usable).
    leaves = [
        t.clone().requires_grad_(True) if t is not None else None for t in (x, hx, w_ih, w_hh, b_ih, b_hh)
    ]
    out, h_n = fwd(leaves[0], None, leaves[1], *leaves[2:], False, reverse)
    (out.sum() + (h_n * grad_h_n).sum()).backward()
    for t, expected in zip(leaves, want[:4] + [want[4], want[4]]):
        if t is not None:
            torch.testing.assert_close(t.grad, expected, rtol=0, atol=0)
    if device == "cuda":
        torch.cuda.synchronize()  # surfaces an asynchronous launch error here
