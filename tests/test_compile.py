"""torch.compile (fullgraph, dynamic sequence length, gradients) and torch.export of models holding
rnnext.RNN and rnnext.RNNCell. Few and small: each compilation costs seconds."""

from __future__ import annotations

import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import rnnext


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnext.RNN(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = rnnext.RNNCell(12, 5, nonlinearity="relu")
        self.head = nn.Linear(5, 2)

    def forward(self, x, h0):
        y, h = self.rnn(x, h0)
        return self.head(self.cell(y[:, -1])) + h.sum(0)[:, :2]


def _eager_and_grads(model, x, h0):
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    out = model(x, h0)
    out.square().sum().backward()
    grads = [x.grad, h0.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), grads


def test_compile_fullgraph_dynamic_lengths_with_gradients():
    """Inductor, fullgraph (a graph break would raise), dynamic sequence length: one graph serves
    every length, and outputs and every gradient (input, hx, parameters) match eager."""
    torch.manual_seed(0)
    model = Model()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    frames = None
    for T in (5, 9):
        x = torch.randn(3, T, 4)
        h0 = torch.randn(4, 3, 6)
        out_c, grads_c = _eager_and_grads(compiled, x, h0)
        out_e, grads_e = _eager_and_grads(model, x, h0)
        torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
        for gc, ge in zip(grads_c, grads_e):
            torch.testing.assert_close(gc, ge, rtol=1e-5, atol=1e-5)
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames  # no recompilation for the second length
    with_ops = [g for g in counter.graphs if "rnnext.rnn." in g.code and "rnnext.rnn_cell." in g.code]
    assert len(with_ops) == 1  # the whole model in one graph


def test_compile_default_hx_and_eval():
    """hx omitted (the op builds the zero state), eval mode, no recompilation (aot_eager)."""
    torch.manual_seed(0)
    rnn = rnnext.RNN(3, 4, num_layers=2, dropout=0.5).eval()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(rnn, fullgraph=True, dynamic=True, backend=counter)
    frames = None
    for T in (4, 7, 2):
        x = torch.randn(T, 2, 3)
        for a, b in zip(compiled(x), rnn(x)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames


def test_export():
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(3, 5, 4)
    h0 = torch.randn(4, 3, 6)
    seq = torch.export.Dim("seq", min=2, max=64)
    program = torch.export.export(model, (x, h0), dynamic_shapes=({1: seq}, None))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    # The stack and the step stay one op each (what an exporter maps to ONNX's RNN), and decompose
    # into the per-layer op.
    assert {"rnnext.rnn.default", "rnnext.rnn_cell.default"} <= ops
    decomposed = program.run_decompositions()
    ops = {str(n.target) for n in decomposed.graph.nodes if n.op == "call_function"}
    assert "rnnext.rnn_forward.default" in ops and "rnnext.rnn.default" not in ops
    assert not [o for o in ops if "rnn_tanh" in o or "rnn_relu" in o]
    for T in (5, 11):
        x = torch.randn(3, T, 4)
        torch.testing.assert_close(program.module()(x, h0), model(x, h0), rtol=1e-6, atol=1e-6)


def test_compile_packed_sequence():
    """Packed input (unsorted, with hx) in one graph; outputs and gradients match eager."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    rnn = rnnext.RNN(3, 4, num_layers=2, bidirectional=True)
    compiled = torch.compile(rnn, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 3, 3)
    hx = torch.randn(4, 3, 4)
    results = []
    for m in (compiled, rnn):
        xi, hi = x.clone().requires_grad_(), hx.clone().requires_grad_()
        out, h = m(pack_padded_sequence(xi, torch.tensor([4, 6, 2]), enforce_sorted=False), hi)
        (out.data.square().sum() + h.square().sum()).backward()
        results.append([out.data, h, xi.grad, hi.grad] + [p.grad.clone() for p in rnn.parameters()])
        rnn.zero_grad()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_backward_of_unused_output_traces_under_fake_tensors():
    """RNNCell returns only h_n, so the backward makes zeros for the output's gradient. Traced with
    fake tensors (what AOT autograd does on a cold cache), that zeros must be a traced op, not a
    real tensor made behind the dispatcher's back; the traced graph must then match eager."""
    from torch.fx.experimental.proxy_tensor import make_fx

    torch.manual_seed(0)
    cell = rnnext.RNNCell(3, 4)

    names = [n for n, _ in cell.named_parameters()]

    def grads(x, h, *params):
        out = torch.func.functional_call(cell, dict(zip(names, params)), (x, h))
        return torch.autograd.grad(out.square().sum(), (x, h, *params))

    def inputs():
        return [torch.randn(2, 3), torch.randn(2, 4)] + [p.detach().clone() for p in cell.parameters()]

    for mode in ("fake", "real"):
        graph = make_fx(grads, tracing_mode=mode)(*[t.requires_grad_() for t in inputs()])
        assert not any(n.op == "get_attr" for n in graph.graph.nodes)  # no baked-in constants
        args = [t.requires_grad_() for t in inputs()]
        args[0] = torch.randn(2, 3, requires_grad=True)
        for a, b in zip(graph(*args), grads(*args)):
            torch.testing.assert_close(a, b)
