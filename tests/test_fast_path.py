"""The eager fast path (csrc/fast_path.cpp) against the Python path it short-cuts.

Both make the same op calls, so outputs and every gradient must agree bit for bit; the fast path
must be taken for ordinary calls and refused (None, Python then) for everything it does not cover.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.overrides import TorchFunctionMode

import rnnext
import rnnext.modules as modules


class _Counting:
    """Wraps a fast entry point, counting calls that it served (returned a result)."""

    def __init__(self, fn):
        self.fn, self.served, self.refused = fn, 0, 0

    def __call__(self, *args):
        out = self.fn(*args)
        if out is None:
            self.refused += 1
        else:
            self.served += 1
        return out


@pytest.fixture
def counting(monkeypatch):
    rnn, cell = _Counting(modules._fast_rnn), _Counting(modules._fast_cell)
    monkeypatch.setattr(modules, "_fast_rnn", rnn)
    monkeypatch.setattr(modules, "_fast_cell", cell)
    return rnn, cell


def _assert_fast_equals_python(module, args, entry, monkeypatch):
    """The fast path serves the call (entry: "_fast_rnn" / "_fast_cell") and gives exactly what
    the Python path gives: outputs and every gradient, bit for bit."""
    served = _Counting(getattr(modules, entry))
    monkeypatch.setattr(modules, entry, served)
    fast = _run(module, args, False, monkeypatch)
    assert served.served == 1
    slow = _run(module, args, True, monkeypatch)
    for a, b in zip(fast[0] + fast[1], slow[0] + slow[1]):
        assert torch.equal(a, b)


def _run(module, args, slow, monkeypatch):
    """(outputs, grads of inputs and parameters) on the fast or the Python path."""
    if slow:
        monkeypatch.setattr(modules, "_fast_rnn", None)
        monkeypatch.setattr(modules, "_fast_cell", None)
    module.zero_grad()
    args = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    out = module(*args)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(5)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    grads = [a.grad for a in args if a is not None] + [p.grad for p in module.parameters()]
    monkeypatch.undo()
    return [o.detach() for o in outs], grads


CASES = list(
    itertools.product(
        [1, 2],  # layers
        [False, True],  # bidirectional
        [True, False],  # bias
        [False, True],  # batch_first
        ["tanh", "relu"],
        [False, True],  # hx given
    )
)


@pytest.mark.parametrize("layers,bidirectional,bias,batch_first,nonlinearity,with_hx", CASES)
def test_rnn_fast_equals_python(monkeypatch, layers, bidirectional, bias, batch_first, nonlinearity, with_hx):
    torch.manual_seed(0)
    m = rnnext.RNN(5, 7, layers, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                   bidirectional=bidirectional).double()  # fmt: skip
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    hx = torch.randn(layers * (2 if bidirectional else 1), 3 if batch_first else 4, 7, dtype=torch.float64)
    _assert_fast_equals_python(m, [x, hx if with_hx else None], "_fast_rnn", monkeypatch)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_fast_equals_python(monkeypatch, bias, nonlinearity, with_hx, batched):
    torch.manual_seed(0)
    m = rnnext.RNNCell(5, 40, bias=bias, nonlinearity=nonlinearity)
    args = [torch.randn(6, 5), torch.randn(6, 40) if with_hx else None]
    if not batched:
        args = [a[0] if a is not None else None for a in args]
    _assert_fast_equals_python(m, args, "_fast_cell", monkeypatch)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_rnn_unbatched_fast_equals_python(monkeypatch, layers, bidirectional, batch_first, with_hx):
    torch.manual_seed(0)
    m = rnnext.RNN(5, 7, layers, batch_first=batch_first, bidirectional=bidirectional).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    hx = torch.randn(layers * (2 if bidirectional else 1), 7, dtype=torch.float64)
    _assert_fast_equals_python(m, [x, hx if with_hx else None], "_fast_rnn", monkeypatch)
    ref = torch.nn.RNN(5, 7, layers, batch_first=batch_first, bidirectional=bidirectional).double()
    ref.load_state_dict(m.state_dict())
    for a, b in zip(m(x, hx if with_hx else None), ref(x, hx if with_hx else None)):
        torch.testing.assert_close(a, b)


class _Sub(torch.Tensor):
    pass


def test_refused_calls_take_python(counting):
    rnn_c, cell_c = counting
    rnn = rnnext.RNN(4, 6)
    cell = rnnext.RNNCell(4, 6)
    x = torch.randn(3, 2, 4)
    refused = [
        lambda: rnn(x.as_subclass(_Sub)),  # tensor subclass
        lambda: rnn(x.double()),  # dtype differs from the weights (Python raises)
        lambda: rnn(x[:, :, :3]),  # wrong input size (Python raises)
        lambda: rnn(x, torch.randn(1, 3, 6)),  # wrong hx batch (Python raises)
        lambda: rnn(x, torch.randn(1, 2, 6).double()),  # hx dtype (Python raises)
        lambda: rnn(x[:0]),  # empty sequence (Python raises)
        lambda: cell(x[0].as_subclass(_Sub)),
        lambda: cell(x[0, :, :3]),
        lambda: cell(x[0], torch.randn(3, 6)),
    ]
    for call in refused:
        try:
            call()
        except (RuntimeError, ValueError):
            pass
    assert rnn_c.served == 0 and cell_c.served == 0
    assert rnn_c.refused == 6 and cell_c.refused == 3
    # Refused as well: packed input, half on the CPU, torch.nn's 1-D cell input with a 2-D hx.
    rnn(torch.nn.utils.rnn.pack_padded_sequence(x, [3, 2]))
    rnn.half()(x.half())
    cell(x[0, 0, :4], torch.randn(6, 6))
    assert rnn_c.served == 0 and cell_c.served == 0


def test_modes_and_autocast_take_python(counting):
    rnn_c, cell_c = counting
    rnn, cell = rnnext.RNN(4, 6), rnnext.RNNCell(4, 6)
    x = torch.randn(3, 2, 4)

    class Seen(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.funcs = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.funcs.append(func)
            return func(*args, **(kwargs or {}))

    with Seen() as mode:
        rnn(x)
        cell(x[0])
    assert any("rnn_forward" in str(f) for f in mode.funcs)  # the mode saw the op calls
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = rnn(x)
        h = cell(x[0])
    assert y.dtype == torch.bfloat16 and h.dtype == torch.bfloat16
    assert rnn_c.served == 0 and cell_c.served == 0
    rnn(x)
    cell(x[0])
    assert rnn_c.served == 1 and cell_c.served == 1


def test_dropout_training_takes_python(counting):
    rnn_c, _ = counting
    rnn = rnnext.RNN(4, 6, num_layers=2, dropout=0.5)
    rnn(torch.randn(3, 2, 4))
    assert rnn_c.refused + rnn_c.served == 0  # not even offered
    rnn.eval()(torch.randn(3, 2, 4))
    assert rnn_c.served == 1


def test_parametrized_weight_takes_python(counting):
    _, cell_c = counting
    cell = rnnext.RNNCell(4, 6)
    torch.nn.utils.parametrize.register_parametrization(cell, "weight_hh", _Double())
    x, h = torch.randn(2, 4), torch.randn(2, 6)
    got = cell(x, h)
    want = torch.rnn_tanh_cell(x, h, cell.weight_ih, 2 * cell.parametrizations.weight_hh.original,
                               cell.bias_ih, cell.bias_hh)  # fmt: skip
    torch.testing.assert_close(got, want)
    assert cell_c.served == 0


class _Double(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_parameter_replaced_behind_setattr(counting):
    # _parameters edited directly (as torch.func / some libraries do): _flat_weights is stale, so
    # the fast path refuses and Python resynchronises; the new weight is the one used.
    rnn_c, _ = counting
    rnn = rnnext.RNN(3, 4)
    x = torch.randn(2, 1, 3)
    rnn(x)
    new = torch.nn.Parameter(torch.zeros(4, 4))
    rnn._parameters["weight_hh_l0"] = new
    y, _ = rnn(x)
    ref = torch.nn.RNN(3, 4)
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(y, ref(x)[0])
    assert rnn._flat_weights[1] is new
    assert rnn_c.served == 1 and rnn_c.refused == 1
    rnn(x)
    assert rnn_c.served == 2


def test_int_flags_read_as_python_truth(monkeypatch):
    # Flags set to ints (bidirectional=1 passes torch.nn's constructor; batch_first can be set
    # afterwards): the Python path reads them with `if`, and so must the fast path.
    torch.manual_seed(0)
    m = rnnext.RNN(5, 7, 2, bidirectional=1).double()
    m.batch_first = 1
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    _assert_fast_equals_python(m, [x, None], "_fast_rnn", monkeypatch)
    y, h = m(x)
    assert y.shape == (3, 4, 14) and h.shape == (4, 3, 7)
