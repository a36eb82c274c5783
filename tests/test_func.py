"""torch.func transforms over rnnext modules: grad / vjp through functional_call (meta-learning,
hypernetworks), vmap, and per-sample gradients (vmap of grad).

They run the same C++ autograd node as every other call (csrc/autograd.cpp: a plain
torch::autograd::Node, which functorch accepts, unlike a torch::autograd::Function); under vmap the
stack decomposes and each per-layer op runs once per entry (rnnext/_ops.py). torch.nn.RNN has no
vmap rule at all.
"""

from __future__ import annotations

import pytest
import torch
from test_module_calls import TOL, _pair
from torch import nn
from torch.func import functional_call, grad, vmap

import rnnext


def _loss(module, params, x, h=None):
    out = functional_call(module, params, (x, h) if h is not None else (x,))
    out = out[0] if isinstance(out, tuple) else out
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_grad_rnn(layers, bidirectional, with_hx):
    ours, ref = _pair(rnnext.RNN, nn.RNN, 3, 4, layers, bidirectional=bidirectional)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    h = torch.randn(layers * (2 if bidirectional else 1), 2, 4, dtype=torch.float64) if with_hx else None
    params = {k: v.detach() for k, v in ours.named_parameters()}
    got = grad(lambda p, x: _loss(ours, p, x, h), argnums=(0, 1))(params, x)
    want = grad(lambda p, x: _loss(ref, p, x, h), argnums=(0, 1))(params, x)
    for k in params:
        torch.testing.assert_close(got[0][k], want[0][k], **TOL)
    torch.testing.assert_close(got[1], want[1], **TOL)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_grad_cell_and_plain_module(nonlinearity):
    ours, ref = _pair(rnnext.RNNCell, nn.RNNCell, 3, 4, nonlinearity=nonlinearity)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    got = grad(lambda p: _loss(ours, p, x, h))(params)
    want = grad(lambda p: _loss(ref, p, x, h))(params)
    for k in params:
        torch.testing.assert_close(got[k], want[k], **TOL)
    # The module called directly (its own parameters) under grad with respect to the input.
    torch.testing.assert_close(
        grad(lambda x: ours(x, h).square().sum())(x), grad(lambda x: ref(x, h).square().sum())(x), **TOL
    )


def test_vmap_and_per_sample_gradients():
    ours, ref = _pair(rnnext.RNN, nn.RNN, 3, 4, 2)
    xs = torch.randn(6, 5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(vmap(lambda x: ours(x)[0])(xs), torch.stack([ref(x)[0] for x in xs]), **TOL)
    params = {k: v.detach() for k, v in ours.named_parameters()}
    per_sample = vmap(grad(lambda p, x: _loss(ours, p, x)), in_dims=(None, 0))(params, xs)
    loop = [grad(lambda p, x: _loss(ref, p, x))(params, x) for x in xs]
    for k in params:
        torch.testing.assert_close(per_sample[k], torch.stack([g[k] for g in loop]), **TOL)
