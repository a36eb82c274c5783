"""Higher-order autograd through rnnext: double backward (gradients of gradients: gradient penalties,
MAML, gradgradcheck) and forward-mode AD (torch.func.jvp, torch.autograd.forward_ad, Hessian-vector
products), on the ops and through the modules and rnnext.functional, against torch.nn's CPU result.

How rnnext computes them (csrc/composite.h): the differentiable composites of rnn_forward /
rnn_backward (at:: ops) run only where the fused kernels have no derivative: a second backward
recomputes the composite backward and differentiates it; a forward-mode tangent makes rnn_forward
(and rnn_backward) run the composite. The composites are a second formula of the same math, so they
are also checked against the fused ops here (float64, tight).
"""

from __future__ import annotations

import pytest
import torch
from test_ops import OPTIONS, make_args
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call, grad, jvp

import rnnext
from rnnext import functional as RF

fwd = torch.ops.rnnext.rnn_forward.default
bwd = torch.ops.rnnext.rnn_backward.default
TOL = dict(rtol=1e-10, atol=1e-10)
TIGHT = dict(rtol=1e-12, atol=1e-12)

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
    ),
]


def _op_args(packed, has_hx, bias, relu):
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_args(packed, has_hx, bias, requires_grad=True)
    if relu:  # keep pre-activations away from relu's kink, where finite differences are wrong
        with torch.no_grad():
            w_ih.mul_(0.5)
    return x, bs, hx, w_ih, w_hh, b_ih, b_hh


# --- the ops ------------------------------------------------------------------------------------


@pytest.mark.parametrize("packed,has_hx,bias,relu,reverse", OPTIONS)
def test_gradgradcheck(packed, has_hx, bias, relu, reverse):
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = _op_args(packed, has_hx, bias, relu)

    def f(x, hx, w_ih, w_hh, b_ih, b_hh):
        return fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)

    assert torch.autograd.gradgradcheck(f, (x, hx, w_ih, w_hh, b_ih, b_hh), atol=1e-7)


@pytest.mark.parametrize("packed,has_hx,bias,relu,reverse", OPTIONS)
def test_forward_ad_gradcheck(packed, has_hx, bias, relu, reverse):
    """Forward-mode derivatives (jvp) of rnn_forward, and of rnn_backward (the inner step of a
    Hessian-vector product), against finite differences."""
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = _op_args(packed, has_hx, bias, relu)

    def f(x, hx, w_ih, w_hh, b_ih, b_hh):
        return fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)

    inputs = (x, hx, w_ih, w_hh, b_ih, b_hh)
    assert torch.autograd.gradcheck(f, inputs, check_forward_ad=True, check_backward_ad=False, atol=1e-8)

    with torch.no_grad():
        out, h_n = f(*inputs)
    g = torch.Generator().manual_seed(9)
    g_out = torch.rand(out.shape, generator=g, dtype=out.dtype).requires_grad_()
    g_h = torch.rand(h_n.shape, generator=g, dtype=out.dtype).requires_grad_()
    mask = [True, has_hx, True, True, bias]

    def b(g_out, g_h, x, hx, w_ih, w_hh, out):
        return tuple(
            t for t, m in zip(bwd(g_out, g_h, x, bs, hx, w_ih, w_hh, out, relu, reverse, mask), mask) if m
        )

    # With relu, `output` holds exact zeros, where act' jumps: no finite difference there.
    out.requires_grad_(not relu)
    assert torch.autograd.gradcheck(
        b, (g_out, g_h, x, hx, w_ih, w_hh, out), check_forward_ad=True, check_backward_ad=False, atol=1e-8
    )


@pytest.mark.parametrize("packed,has_hx,bias,relu,reverse", OPTIONS)
def test_composites_equal_fused_ops(packed, has_hx, bias, relu, reverse):
    """The composite forward (what a tangent runs) and backward (what a second backward
    differentiates) give the fused ops' values: one math, two formulas that cannot drift."""
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = (
        t.detach() if isinstance(t, torch.Tensor) else t for t in make_args(packed, has_hx, bias)
    )
    out, h_n = fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)
    with fwAD.dual_level():
        dual = fwAD.make_dual(w_hh, torch.randn_like(w_hh))
        c_out, c_h = (
            fwAD.unpack_dual(t).primal for t in fwd(x, bs, hx, w_ih, dual, b_ih, b_hh, relu, reverse)
        )
    torch.testing.assert_close(c_out, out, **TIGHT)
    torch.testing.assert_close(c_h, h_n, **TIGHT)

    g = torch.Generator().manual_seed(3)
    g_out = torch.randn(out.shape, generator=g, dtype=out.dtype)
    g_h = torch.randn(h_n.shape, generator=g, dtype=out.dtype)
    mask = [True, True, True, True, True]
    fused = bwd(g_out, g_h, x, bs, hx, w_ih, w_hh, out, relu, reverse, mask)
    with fwAD.dual_level():
        dual = fwAD.make_dual(g_out, torch.randn_like(g_out))
        composite = [
            fwAD.unpack_dual(t).primal
            for t in bwd(dual, g_h, x, bs, hx, w_ih, w_hh, out, relu, reverse, mask)
        ]
    for a, b in zip(composite, fused):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_create_graph_first_order_is_the_fused_result():
    """create_graph=True gradients are the fused kernel's (bit for bit) and carry a graph."""
    x, bs, hx, w_ih, w_hh, b_ih, b_hh = make_args(True, True, True, requires_grad=True)
    inputs = (x, hx, w_ih, w_hh, b_ih, b_hh)
    out, h_n = fwd(x, bs, hx, w_ih, w_hh, b_ih, b_hh, False, True)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + h_n.square().sum()
    want = torch.autograd.grad(loss, inputs, retain_graph=True)
    got = torch.autograd.grad(loss, inputs, create_graph=True)
    for a, b in zip(got, want):
        assert a.requires_grad
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_third_order():
    """The second backward with create_graph: a third derivative, against torch.nn's."""
    torch.manual_seed(0)
    ours, ref = _pair(rnnext.RNNCell, nn.RNNCell, 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64)

    def third(module):
        x_ = x.clone().requires_grad_()
        (g1,) = torch.autograd.grad(module(x_).sin().sum(), x_, create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), x_, create_graph=True)
        (g3,) = torch.autograd.grad(g2.sum(), module.weight_hh)
        return g2, g3

    for a, b in zip(third(ours), third(ref)):
        torch.testing.assert_close(a, b, **TOL)


# --- modules and rnnext.functional against torch.nn ---------------------------------------------


def _pair(cls, ref_cls, *args, device="cpu", **kwargs):
    torch.manual_seed(0)
    ref = ref_cls(*args, **kwargs).double()
    ours = cls(*args, **kwargs).double()
    ours.load_state_dict(ref.state_dict())
    return ours.to(device), ref


RNN_CONFIGS = [
    # layers, bidirectional, batch_first, nonlinearity, packed, with_hx, bias
    (1, False, False, "tanh", False, False, True),
    (2, True, False, "tanh", False, True, True),
    (2, False, True, "relu", False, True, False),
    (2, True, False, "tanh", True, True, True),
    (1, True, False, "relu", True, False, True),
]


def _rnn_inputs(layers, bidirectional, batch_first, packed, with_hx, device):
    g = torch.Generator().manual_seed(7)
    d = 2 if bidirectional else 1
    x = (
        torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
        if batch_first
        else torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    )
    h = torch.randn(layers * d, 3, 4, generator=g, dtype=torch.float64) if with_hx else None
    return x.to(device), (h.to(device) if h is not None else None)


def _run_rnn(module, x, h, packed):
    if packed:
        seq = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 4, 2]), enforce_sorted=False)
        out, h_n = module(seq, h)
        out = nn.utils.rnn.pad_packed_sequence(out)[0]
    else:
        out, h_n = module(x, h)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
    return (out * w).sum() + (h_n * h_n).sum()


def _penalty_grads(module, x, h, packed):
    """A gradient penalty: d/d(everything) of sum of squared first-order gradients."""
    x = x.clone().requires_grad_()
    h = h.clone().requires_grad_() if h is not None else None
    params = list(module.parameters())
    wrt = [x] + ([h] if h is not None else []) + params
    first = torch.autograd.grad(_run_rnn(module, x, h, packed), wrt, create_graph=True)
    penalty = sum((g * g).sum() for g in first)
    return [g.detach().cpu() for g in first] + [g.cpu() for g in torch.autograd.grad(penalty, wrt)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers,bidirectional,batch_first,nonlinearity,packed,with_hx,bias", RNN_CONFIGS)
def test_gradient_penalty_rnn(
    device, layers, bidirectional, batch_first, nonlinearity, packed, with_hx, bias
):
    ours, ref = _pair(
        rnnext.RNN, nn.RNN, 3, 4, layers, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
        bidirectional=bidirectional, device=device,
    )  # fmt: skip
    x, h = _rnn_inputs(layers, bidirectional, batch_first, packed, with_hx, device)
    got = _penalty_grads(ours, x, h, packed)
    want = _penalty_grads(ref, x.cpu(), h.cpu() if h is not None else None, packed)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nonlinearity,with_hx", [("tanh", True), ("relu", False)])
def test_gradient_penalty_cell(device, nonlinearity, with_hx):
    ours, ref = _pair(rnnext.RNNCell, nn.RNNCell, 3, 4, nonlinearity=nonlinearity, device=device)

    def grads(module, dev):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(6, 2, 3, generator=g, dtype=torch.float64).to(dev).requires_grad_()
        h = torch.randn(2, 4, generator=g, dtype=torch.float64).to(dev).requires_grad_() if with_hx else None
        state = h
        for t in range(x.shape[0]):  # an RNNCell loop
            state = module(x[t], state)
        wrt = [x] + ([h] if with_hx else []) + list(module.parameters())
        first = torch.autograd.grad(state.sin().sum(), wrt, create_graph=True)
        second = torch.autograd.grad(sum((f * f).sum() for f in first), wrt)
        return [t.detach().cpu() for t in first + second]

    for a, b in zip(grads(ours, device), grads(ref, "cpu")):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_functional(device):
    """rnnext.functional.rnn / rnn_cell against torch.nn's functional twins (_VF through a module)."""
    ref = nn.RNN(3, 4, 2, bidirectional=True).double()
    cell = nn.RNNCell(3, 4, nonlinearity="relu").double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    xc = torch.randn(2, 3, generator=g, dtype=torch.float64)

    def ours(ws, cws, x, xc):
        out, h = RF.rnn(x, None, ws, num_layers=2, bidirectional=True)
        return out.sin().sum() + h.sum() + RF.rnn_cell(xc, None, *cws, nonlinearity="relu").sin().sum()

    def theirs(ws, cws, x, xc):
        params = dict(zip(ref._flat_weights_names, ws))
        out, h = functional_call(ref, params, (x,))
        cell_params = dict(zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], cws))
        return out.sin().sum() + h.sum() + functional_call(cell, cell_params, (xc,)).sin().sum()

    def second(f, dev):
        ws = [w.detach().to(dev).requires_grad_() for w in ref._flat_weights]
        cws = [w.detach().to(dev).requires_grad_() for w in cell.parameters()]
        xs = [x.to(dev).requires_grad_(), xc.to(dev).requires_grad_()]
        first = torch.autograd.grad(f(ws, cws, *xs), ws + cws + xs, create_graph=True)
        return [t.cpu() for t in torch.autograd.grad(sum((t * t).sum() for t in first), ws + cws + xs)]

    for a, b in zip(second(ours, device), second(theirs, "cpu")):
        torch.testing.assert_close(a, b, **TOL)


def test_maml_style_grad_of_grad_with_torch_func():
    """An inner SGD step through torch.func.grad, differentiated again (MAML)."""
    ours, ref = _pair(rnnext.RNN, nn.RNN, 3, 4, 2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def outer(module):
        def loss(p):
            return functional_call(module, p, (x,))[0].sin().sum()

        def adapted_loss(p):
            inner = grad(loss)(p)
            return loss({k: p[k] - 0.1 * inner[k] for k in p})

        return grad(adapted_loss)(params)

    got, want = outer(ours), outer(ref)
    for k in params:
        torch.testing.assert_close(got[k], want[k], **TOL)


# --- forward mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers,bidirectional,batch_first,nonlinearity,packed,with_hx,bias", RNN_CONFIGS)
def test_jvp_rnn(device, layers, bidirectional, batch_first, nonlinearity, packed, with_hx, bias):
    """torch.func.jvp (dual tensors for packed input) with respect to the input, hx and every
    parameter."""
    ours, ref = _pair(
        rnnext.RNN, nn.RNN, 3, 4, layers, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
        bidirectional=bidirectional, device=device,
    )  # fmt: skip
    x, h = _rnn_inputs(layers, bidirectional, batch_first, packed, with_hx, device)
    names = [k for k, _ in ref.named_parameters()]

    def run(module, dev):
        # Tangents on hx and every parameter, and on x unless packed (torch has no forward-mode
        # formula for pack_padded_sequence itself).
        g = torch.Generator().manual_seed(2)
        primals = {"h": h, "x": None if packed else x}
        primals.update((n, p.detach()) for n, p in ref.named_parameters())
        primals = {k: v.to(dev) for k, v in primals.items() if v is not None}
        keys = list(primals)
        tangents = tuple(torch.randn(v.shape, generator=g, dtype=v.dtype).to(dev) for v in primals.values())

        def f(*values):
            given = dict(zip(keys, values))
            params = {n: given[n] for n in names}
            return _run_rnn_outputs(module, params, given.get("x", x.to(dev)), given.get("h"), packed)

        if not packed:
            return jvp(f, tuple(primals.values()), tangents)
        # torch.nn.RNN on packed input fails under torch.func.jvp (its batch_sizes is a functorch
        # wrapper without storage): the same forward-mode derivative through dual tensors.
        with fwAD.dual_level():
            outs = f(*(fwAD.make_dual(p, t) for p, t in zip(primals.values(), tangents)))
            unpacked = [fwAD.unpack_dual(o) for o in outs]
            return [u.primal for u in unpacked], [u.tangent for u in unpacked]

    (out_o, tan_o), (out_r, tan_r) = run(ours, device), run(ref, "cpu")
    for a, b in zip(list(out_o) + list(tan_o), list(out_r) + list(tan_r)):
        torch.testing.assert_close(a.cpu(), b, **TOL)


def _run_rnn_outputs(module, params, x, h, packed):
    if packed:
        seq = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 4, 2]), enforce_sorted=False)
        out, h_n = functional_call(module, params, (seq, h))
        return out.data, h_n  # (pad_packed_sequence has no forward-mode support in torch)
    return functional_call(module, params, (x, h))


@pytest.mark.parametrize("device", DEVICES)
def test_forward_ad_dual_tensors_cell(device):
    """torch.autograd.forward_ad (dual tensors) through an RNNCell loop."""
    ours, ref = _pair(rnnext.RNNCell, nn.RNNCell, 3, 4, device=device)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    tx = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)

    def run(module, dev):
        with fwAD.dual_level():
            dual = fwAD.make_dual(x.to(dev), tx.to(dev))
            h = None
            for t in range(4):
                h = module(dual[t], h)
            primal, tangent = fwAD.unpack_dual(h)
            return primal.detach().cpu(), tangent.cpu()

    for a, b in zip(run(ours, device), run(ref, "cpu")):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [False, True])
def test_hessian_vector_product(device, packed):
    """hvp = jvp(grad(loss)) over the parameters, and torch.func.hessian on a small cell."""
    ours, ref = _pair(rnnext.RNN, nn.RNN, 3, 4, 2, bidirectional=True, device=device)
    x, h = _rnn_inputs(2, True, False, packed, True, device)
    names = [k for k, _ in ref.named_parameters()]

    def hvp(module, dev):
        def loss(ps):
            out, h_n = _run_rnn_outputs(module, dict(zip(names, ps)), x.to(dev), h.to(dev), packed)
            return out.sin().sum() + (h_n * h_n).sum()

        ps = tuple(p.detach().to(dev) for p in ref.parameters())
        g = torch.Generator().manual_seed(8)
        vs = tuple(torch.randn(p.shape, generator=g, dtype=p.dtype).to(dev) for p in ps)
        if not packed:
            return jvp(grad(loss), (ps,), (vs,))[1]
        # torch.nn.RNN on packed input fails under torch.func transforms: forward-over-reverse with
        # dual tensors and torch.autograd.grad instead.
        with fwAD.dual_level():
            duals = tuple(fwAD.make_dual(p.requires_grad_(), v) for p, v in zip(ps, vs))
            grads = torch.autograd.grad(loss(duals), duals, create_graph=True)
            return tuple(fwAD.unpack_dual(g).tangent for g in grads)

    for a, b in zip(hvp(ours, device), hvp(ref, "cpu")):
        torch.testing.assert_close(a.cpu(), b, **TOL)

    cell, cell_ref = _pair(rnnext.RNNCell, nn.RNNCell, 2, 3, device=device)
    xc = torch.randn(2, 2, dtype=torch.float64)
    got = torch.func.hessian(lambda x: cell(x).sin().sum())(xc.to(device))
    want = torch.func.hessian(lambda x: cell_ref(x).sin().sum())(xc)
    torch.testing.assert_close(got.cpu(), want, **TOL)
