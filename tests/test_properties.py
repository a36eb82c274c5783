"""Property tests: random configurations of :class:`rnnext.RNN` against the installed ``torch.nn.RNN``.

Hypothesis draws the sizes (1 to 17), the layers (1 to 3) and every option (tanh/relu, bias,
batch_first, bidirectional, with or without ``hx``, packed input with random lengths, sorted or
not), builds an ``nn.RNN`` in float64, loads its weights into an ``rnnext.RNN``, and checks the
output, ``h_n`` and the gradients of the input, ``hx`` and every parameter. Tensors come from a
``torch.Generator`` seeded by a drawn integer, so a failure shrinks and replays exactly.

The run is derandomized (a fixed sequence of examples, the same in CI every time) and bounded; set
``RNNEXT_HYPOTHESIS_EXAMPLES`` to draw more when hunting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnext

_EXAMPLES = int(os.environ.get("RNNEXT_HYPOTHESIS_EXAMPLES", "40"))
_SETTINGS = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_TOL = {"rtol": 1e-10, "atol": 1e-10}


@dataclass(frozen=True)
class Config:
    input_size: int
    hidden_size: int
    num_layers: int
    nonlinearity: str
    bias: bool
    batch_first: bool
    bidirectional: bool
    seq_len: int
    batch: int
    with_hx: bool
    packed: bool
    enforce_sorted: bool
    unbatched: bool
    seed: int


sizes = st.integers(1, 17)


@st.composite
def configs(draw) -> Config:
    packed = draw(st.booleans())
    return Config(
        input_size=draw(sizes),
        hidden_size=draw(sizes),
        num_layers=draw(st.integers(1, 3)),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        seq_len=draw(sizes),
        batch=draw(sizes),
        with_hx=draw(st.booleans()),
        packed=packed,
        enforce_sorted=draw(st.booleans()) if packed else True,
        # An unbatched (2-D) input now and then; packed input is always batched.
        unbatched=(not packed) and draw(st.integers(0, 5)) == 0,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _pair(c: Config) -> tuple[nn.RNN, rnnext.RNN]:
    kwargs = dict(
        num_layers=c.num_layers,
        nonlinearity=c.nonlinearity,
        bias=c.bias,
        batch_first=c.batch_first,
        bidirectional=c.bidirectional,
        dtype=torch.float64,
    )
    ref = nn.RNN(c.input_size, c.hidden_size, **kwargs)
    ours = rnnext.RNN(c.input_size, c.hidden_size, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _inputs(c: Config, gen: torch.Generator):
    """(input builder, hx or None, lengths or None) — fresh tensors from ``gen``."""
    d = 2 if c.bidirectional else 1
    shape = (c.batch, c.seq_len, c.input_size) if c.batch_first else (c.seq_len, c.batch, c.input_size)
    if c.unbatched:
        shape = (c.seq_len, c.input_size)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    hx = None
    if c.with_hx:
        lead = (c.num_layers * d,) if c.unbatched else (c.num_layers * d, c.batch)
        hshape = (*lead, c.hidden_size)
        hx = torch.randn(hshape, generator=gen, dtype=torch.float64)
    lengths = None
    if c.packed:
        lengths = torch.randint(1, c.seq_len + 1, (c.batch,), generator=gen)
        if c.enforce_sorted:
            lengths = lengths.sort(descending=True).values
    return x, hx, lengths


def _run(module: nn.Module, c: Config, x: torch.Tensor, hx, lengths, gen_out: torch.Generator):
    """Forward + backward of a random linear functional of (output, h_n); returns values and grads."""
    x = x.detach().clone().requires_grad_(True)
    h = hx.detach().clone().requires_grad_(True) if hx is not None else None
    inp = (
        pack_padded_sequence(x, lengths, batch_first=c.batch_first, enforce_sorted=c.enforce_sorted)
        if (c.packed)
        else x
    )
    out, h_n = module(inp, h)
    if c.packed:
        assert isinstance(out, PackedSequence)
        out_t = out.data
    else:
        out_t = out
    w_out = torch.randn(out_t.shape, generator=gen_out, dtype=out_t.dtype)
    w_h = torch.randn(h_n.shape, generator=gen_out, dtype=h_n.dtype)
    ((out_t * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = {"input": x.grad, "hx": h.grad if h is not None else None}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    extra = (out.batch_sizes, out.sorted_indices, out.unsorted_indices) if c.packed else None
    return out_t.detach(), h_n.detach(), grads, extra


@_SETTINGS
@given(c=configs())
def test_rnn_matches_torch_nn(c: Config) -> None:
    torch.manual_seed(c.seed)  # module init; the pair shares nn.RNN's weights in any case
    ref, ours = _pair(c)
    gen = torch.Generator().manual_seed(c.seed)
    x, hx, lengths = _inputs(c, gen)
    res = {}
    for name, module in (("ref", ref), ("ours", ours)):
        res[name] = _run(module, c, x, hx, lengths, torch.Generator().manual_seed(c.seed + 1))
    (o_r, h_r, g_r, e_r), (o_o, h_o, g_o, e_o) = res["ref"], res["ours"]
    torch.testing.assert_close(o_o, o_r, **_TOL, msg=lambda m: f"output differs for {c}: {m}")
    torch.testing.assert_close(h_o, h_r, **_TOL, msg=lambda m: f"h_n differs for {c}: {m}")
    if c.packed:
        for a, b in zip(e_o, e_r):
            if b is None:
                assert a is None
            else:
                assert torch.equal(a, b), f"packed metadata differs for {c}"
    assert g_o.keys() == g_r.keys()
    for name in g_r:
        if g_r[name] is None:
            assert g_o[name] is None, f"{name}: rnnext has a gradient where torch.nn has none ({c})"
            continue
        assert g_o[name] is not None, f"{name}: rnnext has no gradient ({c})"
        torch.testing.assert_close(
            g_o[name], g_r[name], **_TOL, msg=lambda m, n=name: f"grad of {n} differs for {c}: {m}"
        )


@pytest.mark.parametrize("bias", [True, False])
@settings(max_examples=max(10, _EXAMPLES // 2), deadline=None, derandomize=True, database=None)
@given(
    input_size=sizes,
    hidden_size=sizes,
    batch=sizes,
    nonlinearity=st.sampled_from(["tanh", "relu"]),
    with_hx=st.booleans(),
    unbatched=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_rnn_cell_matches_torch_nn(
    bias, input_size, hidden_size, batch, nonlinearity, with_hx, unbatched, seed
) -> None:
    ref = nn.RNNCell(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, dtype=torch.float64)
    ours = rnnext.RNNCell(input_size, hidden_size, bias=bias, nonlinearity=nonlinearity, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(seed)
    lead = () if unbatched else (batch,)
    x = torch.randn(*lead, input_size, generator=gen, dtype=torch.float64)
    hx = torch.randn(*lead, hidden_size, generator=gen, dtype=torch.float64) if with_hx else None
    w = torch.randn(*lead, hidden_size, generator=gen, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_(True)
        hi = hx.clone().requires_grad_(True) if hx is not None else None
        y = m(xi, hi)
        (y * w).sum().backward()
        grads = [xi.grad, hi.grad if hi is not None else None] + [p.grad for p in m.parameters()]
        results.append((y.detach(), grads))
    (y_r, g_r), (y_o, g_o) = results
    torch.testing.assert_close(y_o, y_r, **_TOL)
    for a, b in zip(g_o, g_r):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, **_TOL)
