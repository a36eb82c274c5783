"""rnnext.RNN / RNNCell calls that take unusual roads to the one op: a parameter replaced behind
RNNBase.__setattr__, tensor subclasses, a torch-function mode, autocast, meta tensors, flags set to
ints, unbatched input. Each is compared with torch.nn (values, and the types the call returns).

There is one forward: the modules make one op call (``rnnext::rnn`` for RNN, ``rnnext::rnn_cell``
for RNNCell) through ``rnnext._C``, and anything it refuses takes the general path (torch.nn's
checks, then the op through ``torch.ops``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import rnnext

TOL = dict(rtol=1e-10, atol=1e-10)


def _pair(cls, ref_cls, *args, **kwargs):
    torch.manual_seed(0)
    ours = cls(*args, **kwargs).double()
    ref = ref_cls(*args, **kwargs).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _outputs_and_grads(module, args):
    """Outputs and the gradients of every input and parameter of a fixed random loss."""
    module.zero_grad()
    args = [a.detach().clone().requires_grad_() if a is not None else None for a in args]
    out = module(*args)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(5)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    grads = [a.grad for a in args if a is not None] + [p.grad for p in module.parameters()]
    return [o.detach() for o in outs], grads


def _assert_matches_torch_nn(ours, ref, args):
    got, want = _outputs_and_grads(ours, args), _outputs_and_grads(ref, args)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_rnn_unbatched(layers, bidirectional, batch_first, with_hx):
    ours, ref = _pair(rnnext.RNN, nn.RNN, 5, 7, layers, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(4, 5, dtype=torch.float64)
    hx = torch.randn(layers * (2 if bidirectional else 1), 7, dtype=torch.float64)
    _assert_matches_torch_nn(ours, ref, [x, hx if with_hx else None])


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cell_unbatched(with_hx, nonlinearity):
    ours, ref = _pair(rnnext.RNNCell, nn.RNNCell, 5, 7, nonlinearity=nonlinearity)
    x, hx = torch.randn(5, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    _assert_matches_torch_nn(ours, ref, [x, hx if with_hx else None])


class _Sub(torch.Tensor):
    pass


class _Logged(torch.Tensor):
    """A subclass with its own __torch_function__: it must see the op calls."""

    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("sub", [_Sub, _Logged])
def test_tensor_subclass_input(sub):
    rnn, ref = _pair(rnnext.RNN, nn.RNN, 4, 6)
    cell, ref_cell = _pair(rnnext.RNNCell, nn.RNNCell, 4, 6)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    _Logged.seen = []
    y, h = rnn(x.as_subclass(sub))
    y_ref, h_ref = ref(x.as_subclass(sub))
    c, c_ref = cell(x[0].as_subclass(sub)), ref_cell(x[0].as_subclass(sub))
    for a, b in [(y, y_ref), (h, h_ref), (c, c_ref)]:
        assert type(a) is type(b)
        torch.testing.assert_close(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor), **TOL)
    if sub is _Logged:
        names = [str(f) for f in _Logged.seen]
        assert "rnnext.rnn.default" in names and "rnnext.rnn_cell.default" in names


def test_torch_function_mode_sees_one_op_call():
    rnn, ref = _pair(rnnext.RNN, nn.RNN, 4, 6, num_layers=2, bidirectional=True)
    cell = rnnext.RNNCell(4, 6).double()
    x = torch.randn(3, 2, 4, dtype=torch.float64)

    class Seen(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.funcs = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.funcs.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen() as mode:
        y, h = rnn(x)
    assert mode.funcs.count("rnnext.rnn.default") == 1  # the whole stack: one op
    torch.testing.assert_close(y, ref(x)[0], **TOL)
    with Seen() as mode:
        cell(x[0])
    assert mode.funcs.count("rnnext.rnn_cell.default") == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    torch.manual_seed(0)
    rnn, ref = rnnext.RNN(4, 6, 2), nn.RNN(4, 6, 2)
    ref.load_state_dict(rnn.state_dict())
    cell, ref_cell = rnnext.RNNCell(4, 6), nn.RNNCell(4, 6)
    ref_cell.load_state_dict(cell.state_dict())
    x = torch.randn(3, 2, 4)
    with torch.autocast("cpu", dtype=dtype):
        got = [*rnn(x), cell(x[0])]
        want = [*ref(x), ref_cell(x[0])]
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    # Outside autocast again: float32.
    assert rnn(x)[0].dtype == torch.float32 and cell(x[0]).dtype == torch.float32


def test_parametrized_weight():
    cell = rnnext.RNNCell(4, 6)
    torch.nn.utils.parametrize.register_parametrization(cell, "weight_hh", _Double())
    x, h = torch.randn(2, 4), torch.randn(2, 6)
    want = torch.rnn_tanh_cell(x, h, cell.weight_ih, 2 * cell.parametrizations.weight_hh.original,
                               cell.bias_ih, cell.bias_hh)  # fmt: skip
    torch.testing.assert_close(cell(x, h), want)
    rnn = rnnext.RNN(4, 6)
    torch.nn.utils.parametrize.register_parametrization(rnn, "weight_hh_l0", _Double())
    ref = nn.RNN(4, 6)
    with torch.no_grad():
        for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ref, name).copy_(getattr(rnn, name))
        ref.weight_hh_l0.copy_(2 * rnn.parametrizations.weight_hh_l0.original)
    x3 = torch.randn(3, 2, 4)
    torch.testing.assert_close(rnn(x3)[0], ref(x3)[0])


class _Double(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_parameter_replaced_behind_setattr():
    # _parameters edited directly (as some libraries do), which RNNBase.__setattr__ does not see:
    # the new weight is the one used and the one that gets the gradient, in this call and after.
    rnn = rnnext.RNN(3, 4)
    x = torch.randn(2, 1, 3)
    rnn(x)
    new = torch.nn.Parameter(torch.randn(4, 4))
    rnn._parameters["weight_hh_l0"] = new
    ref = torch.nn.RNN(3, 4)
    ref.load_state_dict(rnn.state_dict())
    for _ in range(2):
        new.grad = None
        y = rnn(x)[0]
        torch.testing.assert_close(y, ref(x)[0])
        y.sum().backward()
        assert new.grad is not None
        assert rnn._flat_weights[1] is new  # resynchronised, as torch.nn does
    # A parameter deleted (torch.nn then reads None for it) or parametrized: torch.nn's
    # resynchronisation of _flat_weights.
    torch.nn.utils.parametrize.register_parametrization(rnn, "weight_hh_l0", _Double())
    ref.weight_hh_l0.data.mul_(2)
    torch.testing.assert_close(rnn(x)[0], ref(x)[0])


def test_dropout_in_training_matches_torch_nn_masks():
    # The stack op draws dropout masks with torch.nn's calls: the same seed, the same masks.
    ours, ref = _pair(rnnext.RNN, nn.RNN, 4, 6, 3, dropout=0.5)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.manual_seed(3)
    y = ours(x)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(y, ref(x)[0], **TOL)


def test_meta_tensors():
    # All meta: meta outputs. A meta hx with real input and weights: torch.nn's device error.
    rnn, cell = rnnext.RNN(4, 6), rnnext.RNNCell(4, 6)
    x = torch.randn(3, 2, 4)
    y, h = rnn.to("meta")(x.to("meta"))
    assert y.is_meta and y.shape == (3, 2, 6) and h.shape == (1, 2, 6)
    assert cell.to("meta")(x[0].to("meta")).shape == (2, 6)
    rnn, ref = rnnext.RNN(4, 6), nn.RNN(4, 6)
    with pytest.raises(RuntimeError) as want:
        ref(x, torch.zeros(1, 2, 6, device="meta"))
    with pytest.raises(RuntimeError) as got:
        rnn(x, torch.zeros(1, 2, 6, device="meta"))
    assert str(got.value) == str(want.value)


def _stack_args(bidirectional=True, bias=True, batch_first=False, packed=False, with_hx=True):
    torch.manual_seed(0)
    layers, D = 2, 2 if bidirectional else 1
    m = nn.RNN(3, 4, layers, bias=bias, bidirectional=bidirectional).double()
    weights = [w.detach().clone().requires_grad_() for w in m._flat_weights]
    if packed:
        x, batch_sizes = torch.randn(6, 3, dtype=torch.float64), torch.tensor([3, 2, 1])
        B = 3
    else:
        x, batch_sizes = torch.randn((2, 4, 3) if batch_first else (4, 2, 3), dtype=torch.float64), None
        B = 2
    hx = torch.randn(layers * D, B, 4, dtype=torch.float64) if with_hx else None
    return (x.requires_grad_(), batch_sizes, hx, weights, bias, layers, 0.0, False, bidirectional,
            batch_first, False)  # fmt: skip


@pytest.mark.parametrize("kind", ["padded", "batch_first", "packed", "no_hx_no_bias"])
def test_opcheck_stack_and_cell(kind):
    args = {
        "padded": _stack_args(),
        "batch_first": _stack_args(batch_first=True),
        "packed": _stack_args(packed=True),
        "no_hx_no_bias": _stack_args(bidirectional=False, bias=False, with_hx=False),
    }[kind]
    torch.library.opcheck(torch.ops.rnnext.rnn.default, args)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in [(4, 5), (4, 4), (4,), (4,)]]
    hx = torch.randn(3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.rnnext.rnn_cell.default, (x, hx, *w, True))
    torch.library.opcheck(torch.ops.rnnext.rnn_cell.default, (x[0], None, *w, False))


def test_stack_gradcheck():
    x, batch_sizes, hx, weights, *rest = _stack_args()
    hx.requires_grad_()

    def f(x, hx, *weights):
        return torch.ops.rnnext.rnn(x, batch_sizes, hx, list(weights), *rest)

    torch.autograd.gradcheck(f, (x, hx, *weights))


def test_jit_trace_records_the_stack_as_one_op():
    rnn = rnnext.RNN(3, 4, 2, bidirectional=True, batch_first=True)
    graph = torch.jit.trace(rnn, (torch.randn(2, 5, 3),)).graph
    kinds = [n.kind() for n in graph.nodes()]
    assert kinds.count("rnnext::rnn") == 1 and "rnnext::rnn_forward" not in kinds


def test_cell_with_no_input_features():
    # input_size 0 (torch.nn allows it): the op's unbatched view keeps the empty feature dim.
    ours, ref = _pair(rnnext.RNNCell, nn.RNNCell, 0, 3)
    for x in (torch.randn(0, dtype=torch.float64), torch.randn(2, 0, dtype=torch.float64)):
        torch.testing.assert_close(ours(x), ref(x), **TOL)
