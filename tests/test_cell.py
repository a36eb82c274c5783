"""rnnext.RNNCell against the installed torch.nn.RNNCell: constructor, init, repr, state, forward
(1-D and 2-D, hx defaulting to zeros), every gradient, and every error (type and message)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import rnnext

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def make_pair(*args, seed: int = 0, **kwargs) -> tuple[nn.RNNCell, rnnext.RNNCell]:
    torch.manual_seed(seed)
    ref = nn.RNNCell(*args, **kwargs)
    torch.manual_seed(seed)
    ours = rnnext.RNNCell(*args, **kwargs)
    return ref, ours


def outcome(fn):
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - compare whatever is raised
        return type(e).__name__, str(e), None
    return "ok", "", result


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((10, 20), {}),
        ((3, 4, False), {}),
        ((3, 4, True, "relu"), {}),
        ((3, 4), dict(nonlinearity="relu", bias=False, dtype=torch.float64)),
        ((), dict(input_size=2, hidden_size=1, device="cpu")),
        ((3, 4, True, "bogus"), {}),  # accepted by torch.nn; fails at forward
    ],
)
def test_constructor_parity(args, kwargs):
    ref, ours = make_pair(*args, seed=3, **kwargs)
    assert isinstance(ours, nn.RNNCell)
    assert repr(ours) == repr(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.dtype == q.dtype and p.device == q.device and torch.equal(p, q)
    assert (ours.bias_ih is None) == (ref.bias_ih is None)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for attr in ("input_size", "hidden_size", "bias", "nonlinearity"):
        assert getattr(ours, attr) == getattr(ref, attr)


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((0, 3), {}),
        ((3, 0), {}),
        ((3.0, 2), {}),
        ((-1, 2), {}),
        ((3,), {}),
        ((3, 4), dict(foo=1)),
        ((3, 4, True, "tanh", None, None, 5), {}),
        ((3, 4), dict(dtype=torch.int32)),
    ],
)
def test_constructor_errors(args, kwargs):
    expected = outcome(lambda: nn.RNNCell(*args, **kwargs))[:2]
    actual = outcome(lambda: rnnext.RNNCell(*args, **kwargs))[:2]
    assert actual == expected


CELL_GRID = list(
    itertools.product(
        ["tanh", "relu"],
        [True, False],  # bias
        ["batched", "unbatched"],
        [True, False],  # hx given
        [torch.float64, torch.float32],
    )
)


@pytest.mark.parametrize("nonlinearity,bias,kind,with_hx,dtype", CELL_GRID)
def test_forward_and_gradients(device, close, nonlinearity, bias, kind, with_hx, dtype):
    ref, ours = make_pair(5, 7, bias, nonlinearity, device=device, dtype=dtype)
    shape = (4,) if kind == "batched" else ()
    x0 = torch.randn(*shape, 5, dtype=dtype).to(device)
    h0 = torch.randn(*shape, 7, dtype=dtype).to(device) if with_hx else None
    w = torch.randn(*shape, 7, dtype=dtype).to(device)
    results = []
    for m in (ref, ours):
        x = x0.clone().requires_grad_()
        h = h0.clone().requires_grad_() if h0 is not None else None
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = m(x, h)
        (out * w).sum().backward()
        hx_grad = [h.grad] if h is not None else []
        results.append([out.detach(), x.grad] + hx_grad + [p.grad for p in m.parameters()])
    for e, a in zip(*results):
        assert a.shape == e.shape and a.dtype == e.dtype
        close(a, e, **TOL[dtype])


def test_sequence_of_steps_matches_rnn():
    """Stepping the cell over a sequence gives nn.RNN's output."""
    ref, ours = make_pair(3, 4, dtype=torch.float64)
    rnn = nn.RNN(3, 4, dtype=torch.float64)
    rnn.load_state_dict({k + "_l0": v for k, v in ours.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    h = torch.zeros(2, 4, dtype=torch.float64)
    steps = []
    for t in range(6):
        h = ours(x[t], h)
        steps.append(h)
    torch.testing.assert_close(torch.stack(steps), rnn(x)[0], rtol=1e-10, atol=1e-10)


def test_unbatched_input_with_square_batched_hx():
    """torch.nn quirk: 1-D input with a 2-D hx [B, H], B == H, passes its checks and advances every
    row of hx with the same input. rnnext gives the same result."""
    ref, ours = make_pair(5, 3, dtype=torch.float64)
    x = torch.randn(5, dtype=torch.float64)
    hx = torch.randn(3, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x, hx), ref(x, hx), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("with_hx", [False, True])
def test_zero_batch(with_hx):
    ref, ours = make_pair(5, 3, dtype=torch.float64)
    hx = torch.randn(0, 3, dtype=torch.float64) if with_hx else None
    results = []
    for m in (ref, ours):
        x = torch.randn(0, 5, dtype=torch.float64, requires_grad=True)
        out = m(x, hx)
        out.sum().backward()
        results.append([out, x.grad] + [p.grad for p in m.parameters()])
    for e, a in zip(*results):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_on_cpu(dtype):
    ref, ours = make_pair(5, 8, dtype=dtype)
    x = torch.randn(3, 5).to(dtype)
    hx = torch.randn(3, 8).to(dtype)
    out = ours(x, hx)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref(x, hx), rtol=2e-2, atol=2e-2)


def test_deepcopy_and_state_dict():
    ref, ours = make_pair(3, 4)
    other = rnnext.RNNCell(3, 4)
    other.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3)
    torch.testing.assert_close(other(x), ref(x), rtol=1e-5, atol=1e-6)
    clone = copy.deepcopy(ours)
    torch.testing.assert_close(clone(x), ours(x), rtol=0, atol=0)


ERROR_CASES = {
    "input_3d": lambda m: m(torch.randn(2, 3, 5)),
    "input_0d": lambda m: m(torch.tensor(1.0)),
    "hx_3d": lambda m: m(torch.randn(2, 5), torch.randn(2, 3, 1)),
    "hx_0d": lambda m: m(torch.randn(2, 5), torch.tensor(1.0)),
    "wrong_features": lambda m: m(torch.randn(2, 4)),
    "wrong_features_1d": lambda m: m(torch.randn(4)),
    "hx_wrong_batch": lambda m: m(torch.randn(2, 5), torch.randn(3, 3)),
    "hx_wrong_hidden": lambda m: m(torch.randn(2, 5), torch.randn(2, 4)),
    "hx_1d_for_2d_input": lambda m: m(torch.randn(2, 5), torch.randn(3)),
    "hx_1d_for_2d_input_same_size": lambda m: m(torch.randn(3, 5), torch.randn(3)),
    "hx_2d_for_1d_input": lambda m: m(torch.randn(5), torch.randn(2, 3)),
    "hx_1d_wrong_hidden": lambda m: m(torch.randn(5), torch.randn(4)),
    "input_double": lambda m: m(torch.randn(2, 5).double()),
    "input_half": lambda m: m(torch.randn(2, 5).half()),
    "input_int": lambda m: m(torch.randint(0, 3, (2, 5))),
    "hx_double": lambda m: m(torch.randn(2, 5), torch.randn(2, 3).double()),
    "hx_int": lambda m: m(torch.randn(2, 5), torch.randint(0, 3, (2, 3))),
    "input_meta": lambda m: m(torch.randn(2, 5, device="meta")),
    "hx_meta": lambda m: m(torch.randn(2, 5), torch.randn(2, 3, device="meta")),
    "input_not_a_tensor": lambda m: m([1.0] * 5),
    "hx_not_a_tensor": lambda m: m(torch.randn(2, 5), 3.0),
    "bogus_nonlinearity": lambda m: (setattr(m, "nonlinearity", "bogus"), m(torch.randn(2, 5)))[1],
    "bogus_nonlinearity_bad_shape": lambda m: (setattr(m, "nonlinearity", "x"), m(torch.randn(2, 4)))[1],
    "valid": lambda m: m(torch.randn(2, 5), torch.randn(2, 3)),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_like_torch(case, bias):
    ref, ours = make_pair(5, 3, bias)
    expected = outcome(lambda: ERROR_CASES[case](ref))
    actual = outcome(lambda: ERROR_CASES[case](ours))
    assert actual[:2] == expected[:2]
    if expected[0] == "ok":  # e.g. meta input without a bias: meta results, as torch.nn gives
        got, want = actual[2], expected[2]
        assert (got.shape, got.dtype, got.device) == (want.shape, want.dtype, want.device)


def test_error_cases_do_raise():
    raised = [outcome(lambda c=c: c(nn.RNNCell(5, 3)))[0] != "ok" for c in ERROR_CASES.values()]
    assert sum(raised) >= 20


def test_non_contiguous_inputs(device, close):
    ref, ours = make_pair(5, 4, dtype=torch.float64, device=device)
    x = torch.randn(10, 6, dtype=torch.float64, device=device)[::2, 1:]  # [5, 5], strided
    hx = torch.randn(4, 5, dtype=torch.float64, device=device).t()  # [5, 4], transposed
    assert not x.is_contiguous() and not hx.is_contiguous()
    close(ours(x, hx), ref(x, hx), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grad_kind", ["sum", "transposed", "row_broadcast"])
def test_gradients_with_strided_grad_and_input(device, close, grad_kind):
    """The gradient reaching the cell's output may be an expand (``.sum()``), a transposed or a
    broadcast tensor, and x a strided view: every gradient still matches torch.nn (float64)."""
    ref, ours = make_pair(5, 4, dtype=torch.float64, device=device)
    x0 = torch.randn(10, 6, dtype=torch.float64, device=device)[::2, 1:]  # [5, 5], strided
    h0 = torch.randn(5, 4, dtype=torch.float64, device=device)
    grad = {
        "sum": torch.ones((), dtype=torch.float64, device=device).expand(5, 4),
        "transposed": torch.randn(4, 5, dtype=torch.float64, device=device).t(),
        "row_broadcast": torch.randn(4, dtype=torch.float64, device=device).expand(5, 4),
    }[grad_kind]
    results = []
    for m in (ref, ours):
        x = x0.clone().requires_grad_()
        h = h0.clone().requires_grad_()
        out = m(x, h)
        results.append(torch.autograd.grad(out, [x, h, *m.parameters()], grad))
    for e, a in zip(*results):
        close(a, e, rtol=1e-10, atol=1e-10)


def test_training_loop_of_steps_matches_nn():
    """A Python loop over the cell (each step's h feeds the next), one backward at the end."""
    ref, ours = make_pair(6, 3, dtype=torch.float64)
    xs = torch.randn(4, 2, 6, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        h = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        h.requires_grad_()
        state, loss = h, 0
        for t in range(4):
            state = m(xs[t], state)
            loss = loss + state.sin().sum()
        results.append(torch.autograd.grad(loss, [h, *m.parameters()]))
    for e, a in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_autocast_cpu():
    ref, ours = make_pair(5, 8)
    x = torch.randn(3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, actual = ref(x), ours(x)
    assert actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=5e-2, atol=5e-2)
