"""The raw ops' own errors: every bad call of torch.ops.rnnext.* raises a RuntimeError (never a
crash, a hang or a silently wrong result), and the process keeps computing the right numbers after
it; a call mixing meta and CPU tensors returns meta tensors, never real unwritten ones. (The
modules' errors, compared with torch.nn's, are in tests/test_rnn_errors.py and
tests/test_reliability.py.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnnext  # noqa: F401  (registers the ops)

fwd = torch.ops.rnnext.rnn_forward.default


def _valid_args() -> dict:
    """A valid padded rnn_forward call (float64, T=5, B=3, I=4, H=6), by argument name."""
    g = torch.Generator().manual_seed(1234)
    T, B, In, H = 5, 3, 4, 6

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1

    return dict(input=rand(T, B, In), batch_sizes=None, hx=rand(B, H), w_ih=rand(H, In), w_hh=rand(H, H),
                b_ih=rand(H), b_hh=rand(H))  # fmt: skip


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(input=a["input"][0]), "must be 3-D"),
        (lambda a: a.update(w_hh=a["w_hh"][:, :2]), "w_hh must be square"),
        (lambda a: a.update(w_ih=a["w_ih"][:, :2]), "features but w_ih expects"),
        (lambda a: a.update(hx=a["hx"][:2]), "hx must have shape"),
        (lambda a: a.update(b_ih=a["b_ih"][:2]), "b_ih must have shape"),
        (lambda a: a.update(input=a["input"].float()), "dtype"),
        (lambda a: a.update(input=a["input"].long()), "floating point"),
        (lambda a: a.update(batch_sizes=torch.tensor([1, 2])), "packed input must be 2-D"),
    ],
)
def test_forward_errors(mutate, match):
    a = _valid_args()
    mutate(a)
    with pytest.raises(RuntimeError, match=match):
        fwd(*a.values(), False, False)


@pytest.mark.parametrize(
    "sizes,match",
    [([1, 2], "non-increasing"), ([2, 0], "positive"), ([2, 1], "add up to"), ([2.0, 1.0], "int64")],
)
def test_packed_batch_size_errors(sizes, match):
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=match):
        fwd(
            x,
            torch.tensor(sizes),
            None,
            torch.randn(2, 3, dtype=torch.float64),
            torch.randn(2, 2, dtype=torch.float64),
            None,
            None,
            False,
            False,
        )


def test_packed_batch_sizes_of_zero_are_still_rejected():
    """Only padded input may have an empty batch: a packed step has at least one row."""
    w_ih, w_hh = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    for sizes in ([0], [0, 0], [2, 0]):
        x = torch.randn(sum(sizes), 3, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="batch_sizes must be positive"):
            fwd(x, torch.tensor(sizes), None, w_ih, w_hh, None, None, False, False)


def _raw_args():
    torch.manual_seed(0)
    T, B, C, H = 4, 3, 2, 5
    return dict(
        x=torch.randn(T, B, C),
        xp=torch.randn(7, C),
        bs=torch.tensor([3, 2, 2]),
        w_ih=torch.randn(H, C),
        w_hh=torch.randn(H, H),
        b=torch.randn(H),
        hx=torch.randn(B, H),
        H=H,
        B=B,
    )


def _bad_forward_calls():
    a = _raw_args()
    x, xp, bs, w_ih, w_hh, b, hx = (a[k] for k in ("x", "xp", "bs", "w_ih", "w_hh", "b", "hx"))
    H, B = a["H"], a["B"]
    meta = torch.device("meta")
    return {
        "input 2-D unpacked": (xp, None, None, w_ih, w_hh, b, b),
        "input 4-D": (x[None], None, None, w_ih, w_hh, b, b),
        "input 1-D": (x[0, 0], None, None, w_ih, w_hh, b, b),
        "input 0-D": (x[0, 0, 0], None, None, w_ih, w_hh, b, b),
        "packed input 3-D": (x, torch.tensor([3, 3, 3, 3]), None, w_ih, w_hh, b, b),
        "input features": (torch.randn(4, 3, 3), None, None, w_ih, w_hh, b, b),
        "input int64": (x.long(), None, None, w_ih.long(), w_hh.long(), None, None),
        "input bool": (x > 0, None, None, w_ih > 0, w_hh > 0, None, None),
        "input complex": (x.cfloat(), None, None, w_ih.cfloat(), w_hh.cfloat(), None, None),
        "input float64, weights float32": (x.double(), None, None, w_ih, w_hh, b, b),
        "w_ih float64": (x, None, None, w_ih.double(), w_hh, b, b),
        "w_hh not square": (x, None, None, w_ih, torch.randn(H, H + 1), b, b),
        "w_hh 1-D": (x, None, None, w_ih, torch.randn(H), b, b),
        "w_ih rows": (x, None, None, torch.randn(H + 1, 2), w_hh, b, b),
        "w_ih 3-D": (x, None, None, w_ih[None], w_hh, b, b),
        "b_ih size": (x, None, None, w_ih, w_hh, torch.randn(H + 1), b),
        "b_hh 2-D": (x, None, None, w_ih, w_hh, b, b[None]),
        "b_ih float64": (x, None, None, w_ih, w_hh, b.double(), b),
        "hx batch": (x, None, torch.randn(B + 1, H), w_ih, w_hh, b, b),
        "hx 3-D": (x, None, hx[None], w_ih, w_hh, b, b),
        "hx float64": (x, None, hx.double(), w_ih, w_hh, b, b),
        "hx packed batch": (xp, bs, torch.randn(2, H), w_ih, w_hh, b, b),
        "batch_sizes increasing": (xp, torch.tensor([2, 2, 3]), None, w_ih, w_hh, b, b),
        "batch_sizes zero": (xp, torch.tensor([4, 3, 0]), None, w_ih, w_hh, b, b),
        "batch_sizes zero first": (xp[:0], torch.tensor([0, 0]), None, w_ih, w_hh, b, b),
        "batch_sizes negative": (xp, torch.tensor([8, -1]), None, w_ih, w_hh, b, b),
        "batch_sizes wrong sum": (xp, torch.tensor([3, 3]), None, w_ih, w_hh, b, b),
        "batch_sizes too large sum": (xp, torch.tensor([3, 3, 3]), None, w_ih, w_hh, b, b),
        "batch_sizes int32": (xp, bs.int(), None, w_ih, w_hh, b, b),
        "batch_sizes float": (xp, bs.float(), None, w_ih, w_hh, b, b),
        "batch_sizes 2-D": (xp, bs.view(1, 3), None, w_ih, w_hh, b, b),
        "batch_sizes on meta": (xp, bs.to(meta), None, w_ih, w_hh, b, b),
    }


@pytest.mark.parametrize("case", list(_bad_forward_calls()))
@pytest.mark.parametrize("relu", [False, True])
def test_raw_forward_op_rejects_bad_arguments(case: str, relu: bool, still_works) -> None:
    args = _bad_forward_calls()[case]
    with pytest.raises(RuntimeError):
        torch.ops.rnnext.rnn_forward(*args, relu, False)
    with pytest.raises(RuntimeError):
        torch.ops.rnnext.rnn_forward(*args, relu, True)
    still_works()


def _bad_backward_calls():
    a = _raw_args()
    x, xp, bs, w_ih, w_hh, b, hx = (a[k] for k in ("x", "xp", "bs", "w_ih", "w_hh", "b", "hx"))
    H, B = a["H"], a["B"]
    out, _ = torch.ops.rnnext.rnn_forward(x, None, hx, w_ih, w_hh, b, b, False, False)
    outp, _ = torch.ops.rnnext.rnn_forward(xp, bs, None, w_ih, w_hh, b, b, False, False)
    go, gop = torch.randn_like(out), torch.randn_like(outp)
    meta = torch.device("meta")
    return {
        "grad_output shape": (go[:-1], None, x, None, hx, w_ih, w_hh, out),
        "output shape": (go, None, x, None, hx, w_ih, w_hh, out[:-1]),
        "output hidden": (go[..., :-1], None, x, None, hx, w_ih, w_hh, out[..., :-1]),
        "grad_h_n shape": (go, torch.randn(B + 1, H), x, None, hx, w_ih, w_hh, out),
        "grad_h_n 3-D": (go, torch.randn(1, B, H), x, None, hx, w_ih, w_hh, out),
        "grad_h_n float64": (go, torch.randn(B, H, dtype=torch.float64), x, None, hx, w_ih, w_hh, out),
        "grad_output float64": (go.double(), None, x, None, hx, w_ih, w_hh, out),
        "output float64": (go, None, x, None, hx, w_ih, w_hh, out.double()),
        "input int64": (go.long(), None, x.long(), None, None, w_ih.long(), w_hh.long(), out.long()),
        "input features": (go, None, torch.randn(4, 3, 3), None, hx, w_ih, w_hh, out),
        "hx shape": (go, None, x, None, hx[:1], w_ih, w_hh, out),
        "w_hh not square": (go, None, x, None, hx, w_ih, torch.randn(H, H + 1), out),
        "batch_sizes increasing": (gop, None, xp, torch.tensor([2, 2, 3]), None, w_ih, w_hh, outp),
        "batch_sizes zero": (gop, None, xp, torch.tensor([4, 3, 0]), None, w_ih, w_hh, outp),
        "batch_sizes wrong sum": (gop, None, xp, torch.tensor([3, 3]), None, w_ih, w_hh, outp),
        "batch_sizes int32": (gop, None, xp, bs.int(), None, w_ih, w_hh, outp),
        "packed output rows": (gop[:-1], None, xp, bs, None, w_ih, w_hh, outp[:-1]),
        "batch_sizes on meta": (gop, None, xp, bs.to(meta), None, w_ih, w_hh, outp),
    }


@pytest.mark.parametrize("case", list(_bad_backward_calls()))
def test_raw_backward_op_rejects_bad_arguments(case: str, still_works) -> None:
    args = _bad_backward_calls()[case]
    for mask in ([True] * 5, [True, False, False, True, False]):
        with pytest.raises(RuntimeError):
            torch.ops.rnnext.rnn_backward(*args, False, False, mask)
    still_works()


def _meta_mixes(args: tuple, positions: dict[str, int]) -> dict[str, tuple[tuple, tuple]]:
    """``args`` with one tensor moved to the meta device, and with all floating tensors but that
    one moved there; each paired with the all-CPU ``args``."""
    meta = torch.device("meta")
    mixes = {}
    for name, i in positions.items():
        one = list(args)
        one[i] = one[i].to(meta)
        mixes[f"{name} on meta, rest on cpu"] = (tuple(one), args)
        rest = [a.to(meta) if isinstance(a, torch.Tensor) and j != i and a.is_floating_point() else a
                for j, a in enumerate(args)]  # fmt: skip
        mixes[f"{name} on cpu, rest on meta"] = (tuple(rest), args)
    return mixes


def _check_meta_results(got, want) -> None:
    """Every result on the meta device, with the shape and dtype of the all-CPU call's result."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.device.type == "meta", f"result {i} is on {g.device}: a real tensor never written"
        assert (g.shape, g.dtype) == (w.shape, w.dtype), (i, g.shape, w.shape)


def _forward_meta_mixes():
    a = _raw_args()
    x, xp, bs, w_ih, w_hh, b, hx = (a[k] for k in ("x", "xp", "bs", "w_ih", "w_hh", "b", "hx"))
    mixes = _meta_mixes((x, None, hx, w_ih, w_hh, b, b.clone()), {"input": 0, "hx": 2, "w_hh": 4, "b_hh": 6})
    packed = _meta_mixes((xp, bs, None, w_ih, w_hh, None, None), {"input": 0, "w_ih": 3})
    mixes.update({f"packed {k}": v for k, v in packed.items()})
    return mixes


@pytest.mark.parametrize("case", list(_forward_meta_mixes()))
def test_raw_forward_op_mixing_meta_and_cpu_returns_meta(case: str) -> None:
    """The Meta dispatch key wins, so such a call runs the fake kernel: its results must be meta
    tensors (as ATen's mm of a meta and a CPU tensor is), never uninitialized CPU tensors."""
    args, cpu = _forward_meta_mixes()[case]
    for reverse in (False, True):
        got = torch.ops.rnnext.rnn_forward(*args, False, reverse)
        _check_meta_results(got, torch.ops.rnnext.rnn_forward(*cpu, False, reverse))


def _backward_meta_mixes():
    a = _raw_args()
    x, w_ih, w_hh, b, hx = (a[k] for k in ("x", "w_ih", "w_hh", "b", "hx"))
    out, h_n = torch.ops.rnnext.rnn_forward(x, None, hx, w_ih, w_hh, b, b, False, False)
    args = (torch.randn_like(out), torch.randn_like(h_n), x, None, hx, w_ih, w_hh, out)
    return _meta_mixes(args, {"grad_output": 0, "grad_h_n": 1, "input": 2, "w_ih": 5, "output": 7})


@pytest.mark.parametrize("case", list(_backward_meta_mixes()))
def test_raw_backward_op_mixing_meta_and_cpu_returns_meta(case: str) -> None:
    args, cpu = _backward_meta_mixes()[case]
    for mask in ([True] * 5, [True, False, False, True, False]):
        got = torch.ops.rnnext.rnn_backward(*args, False, False, mask)
        _check_meta_results(got, torch.ops.rnnext.rnn_backward(*cpu, False, False, mask))


def test_fake_kernels_reject_cpu_and_cuda_mixed() -> None:
    """Under FakeTensorMode (torch.compile's tracing) any mix of real devices raises, as the C++
    glue does at run time. Fake CUDA tensors need no GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, hx = torch.empty(4, 3, 2, device="cuda"), torch.empty(3, 5, device="cuda")
        w_ih, w_hh = torch.empty(5, 2, device="cuda"), torch.empty(5, 5, device="cuda")
        out, h_n = torch.ops.rnnext.rnn_forward(x, None, hx, w_ih, w_hh, None, None, False, False)
        assert out.device.type == "cuda" and h_n.shape == (3, 5)
        with pytest.raises(RuntimeError, match="w_hh is on cpu but input is on cuda"):
            torch.ops.rnnext.rnn_forward(x, None, hx, w_ih, w_hh.cpu(), None, None, False, False)
        with pytest.raises(RuntimeError, match="hx is on cpu but input is on cuda"):
            torch.ops.rnnext.rnn_forward(x, None, hx.cpu(), w_ih, w_hh, None, None, False, False)
        with pytest.raises(RuntimeError, match="output is on cpu but input is on cuda"):
            torch.ops.rnnext.rnn_backward(
                out, None, x, None, hx, w_ih, w_hh, out.cpu(), False, False, [True] * 5
            )


def test_raw_backward_op_rejects_a_wrong_mask_length(still_works) -> None:
    a = _raw_args()
    out, _ = torch.ops.rnnext.rnn_forward(a["x"], None, None, a["w_ih"], a["w_hh"], None, None, False, False)
    with pytest.raises(RuntimeError):
        torch.ops.rnnext.rnn_backward(
            out, None, a["x"], None, None, a["w_ih"], a["w_hh"], out, False, False, [True] * 4
        )
    still_works()


def _bad_stack_calls():
    torch.manual_seed(0)
    w = [t.detach() for t in nn.RNN(3, 4, 2)._flat_weights]  # 2 layers, 1 direction, biases
    x, hx = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    meta = torch.device("meta")
    ok = dict(input=x, batch_sizes=None, hx=hx, weights=w, has_biases=True, num_layers=2, dropout=0.0,
              train=False, bidirectional=False, batch_first=False, relu=False)  # fmt: skip
    cases = {
        "num_layers 0": dict(num_layers=0, weights=[]),
        "too few weights": dict(weights=w[:-1]),
        "weights for one direction, bidirectional": dict(bidirectional=True),
        "has_biases without biases": dict(weights=[w[0], w[1], w[4], w[5]]),
        "padded input 2-D": dict(input=x[0]),
        "padded input 4-D": dict(input=x[None]),
        "empty sequence": dict(input=x[:0], match="Expected sequence length to be larger than 0 in RNN"),
        "empty sequence, batch_first": dict(input=x[:, :0], batch_first=True,
                                            match="Expected sequence length to be larger than 0 in RNN"),
        "hx of one layer": dict(hx=hx[:1]),
        "hx 2-D": dict(hx=hx[0]),
        "hx on meta": dict(hx=hx.to(meta), match="hx is on meta but input is on cpu"),
        "a weight on meta": dict(weights=[w[0].to(meta)] + w[1:], match="a weight is on meta"),
        "second layer input size": dict(weights=w[:4] + [torch.randn(4, 3)] + w[5:]),
        "weights float64": dict(weights=[t.double() for t in w]),
    }
    calls = {}
    for name, change in cases.items():
        match = change.pop("match", None)
        calls[name] = ({**ok, **change}, match)
    return calls


@pytest.mark.parametrize("case", list(_bad_stack_calls()))
def test_stack_op_rejects_bad_arguments(case: str, still_works) -> None:
    args, match = _bad_stack_calls()[case]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.rnnext.rnn(*args.values())
    still_works()


def test_cell_op_rejects_bad_arguments(still_works) -> None:
    torch.manual_seed(0)
    w_ih, w_hh, b = torch.randn(4, 3), torch.randn(4, 4), torch.randn(4)
    x, hx = torch.randn(2, 3), torch.randn(2, 4)
    calls = [
        (x[None], hx),  # 3-D input
        (x[0, 0], None),  # 0-D input
        (x, hx[0]),  # 2-D input, 1-D hx
        (x[0], hx),  # 1-D input, 2-D hx (torch.nn's quirk is the module's, not the op's)
        (x[:, :2], hx),  # input features
        (x, hx[:1]),  # hx batch
        (x.double(), hx),  # dtype
    ]
    for inp, h in calls:
        with pytest.raises(RuntimeError):
            torch.ops.rnnext.rnn_cell(inp, h, w_ih, w_hh, b, b, False)
    still_works()
