"""ONNX export of models holding rnnext, with both torch.onnx exporters, run in ONNX Runtime.

The exported graphs must hold only standard ONNX (the RNN operator for sequences, plain ops for an
RNNCell step; no custom domain), keep the batch and sequence axes dynamic, and reproduce rnnext's
and torch.nn's numbers. onnx and onnxruntime (and onnxscript for dynamo=True) are test dependencies
(pyproject's ``test`` extra); without them these tests skip, saying which package is missing.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import rnnext

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")


_NO_ONNXSCRIPT = "onnxscript (needed by torch.onnx.export(dynamo=True)) is not installed"


def _needs_onnxscript(exporter: str) -> None:
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason=_NO_ONNXSCRIPT)


EXPORTERS = ["legacy", "dynamo"]


def export(model: nn.Module, args: tuple, dynamic: dict[int, dict[int, str]], exporter: str) -> bytes:
    """The model as ONNX bytes; ``dynamic`` maps argument index -> {axis: name}."""
    _needs_onnxscript(exporter)
    names = [f"in{i}" for i in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            f = io.BytesIO()
            torch.onnx.export(
                model, args, f, dynamo=False, input_names=names,
                dynamic_axes={names[i]: axes for i, axes in dynamic.items()},
            )  # fmt: skip
            return f.getvalue()
        shapes = tuple(
            {axis: torch.export.Dim(name) for axis, name in dynamic.get(i, {}).items()} or None
            for i in range(len(args))
        )
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes, verbose=False)
        return program.model_proto.SerializeToString()


def run_onnx(data: bytes, *args: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def op_types(data: bytes) -> list[str]:
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    # Standard ONNX only: every node and every imported opset in the default domain (no rnnext).
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    return [n.op_type for n in model.graph.node]


class Tagger(nn.Module):
    """The issue's model: an embedding, a torch.nn.RNN, a linear head."""

    def __init__(self, with_hx: bool = False, **rnn_kwargs):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.RNN(8, 16, **rnn_kwargs)
        d = 2 if rnn_kwargs.get("bidirectional") else 1
        self.head = nn.Linear(16 * d, 3)
        self.with_hx = with_hx

    def forward(self, tokens: torch.Tensor, hx: torch.Tensor):
        y, h = self.rnn(self.embed(tokens), hx if self.with_hx else None)
        return self.head(y), h


CONFIGS = [
    dict(num_layers=2, bidirectional=True),  # the model
    dict(num_layers=2, nonlinearity="relu"),
    dict(num_layers=1, bidirectional=True, batch_first=True, with_hx=True),
    dict(num_layers=3, bias=False, with_hx=True),
]


def _ids(c: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items())


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("config", CONFIGS, ids=_ids)
def test_rnn_model_exports_to_onnx_rnn(exporter, config):
    """Converted model -> ONNX RNN ops; ONNX Runtime on other batch and sequence sizes than the
    example's gives rnnext's and torch.nn's outputs and final states."""
    config = dict(config)
    with_hx = config.pop("with_hx", False)
    torch.manual_seed(0)
    reference = Tagger(with_hx, **config).eval()
    model = rnnext.convert(Tagger(with_hx, **config).eval())
    model.load_state_dict(reference.state_dict())
    assert isinstance(model.rnn, rnnext.RNN)
    d = 2 if config.get("bidirectional") else 1
    L = config["num_layers"]
    bf = config.get("batch_first", False)

    def inputs(T, B):
        tokens = torch.randint(0, 20, (B, T) if bf else (T, B))
        return tokens, torch.randn(L * d, B, 16)

    example = inputs(5, 3)
    dynamic = {0: {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}, 1: {1: "B"}}
    data = export(model, example, dynamic, exporter)
    types = op_types(data)
    assert types.count("RNN") == L  # the stack op: one (bidirectional) RNN per layer
    for T, B in [(7, 4), (1, 2)]:
        args = inputs(T, B)
        got = run_onnx(data, *args)  # an unused hx: the legacy exporter drops it, dynamo keeps it
        with torch.no_grad():
            want, want_nn = model(*args), reference(*args)
        for g, w, w_nn in zip(got, want, want_nn):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(g, w_nn, rtol=1e-5, atol=1e-5)


class CellLoop(nn.Module):
    def __init__(self, nonlinearity: str = "tanh", bias: bool = True):
        super().__init__()
        self.cell = nn.RNNCell(4, 6, bias=bias, nonlinearity=nonlinearity)

    def forward(self, x: torch.Tensor, h: torch.Tensor):
        h1 = self.cell(x[0])  # no hx: the zero state
        for t in range(1, x.shape[0]):
            h1 = self.cell(x[t], h1)
        return h1 + self.cell(x[0], h)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False)])
def test_cell_loop_exports_to_plain_ops(exporter, nonlinearity, bias):
    """An RNNCell loop -> plain ONNX ops of one step each (no RNN op), dynamic batch."""
    torch.manual_seed(1)
    reference = CellLoop(nonlinearity, bias).eval()
    model = rnnext.convert(CellLoop(nonlinearity, bias).eval())
    model.load_state_dict(reference.state_dict())
    data = export(model, (torch.randn(3, 2, 4), torch.randn(2, 6)), {0: {1: "B"}, 1: {0: "B"}}, exporter)
    types = op_types(data)
    assert "RNN" not in types and types.count("Relu" if nonlinearity == "relu" else "Tanh") == 4
    x, h = torch.randn(3, 5, 4), torch.randn(5, 6)
    (got,) = run_onnx(data, x, h)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x, h), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, reference(x, h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_one_step_example_keeps_dynamic_sequence(exporter):
    """An example of sequence length 1 with a dynamic sequence axis still becomes an RNN op (the
    one-step translation is only for a length known to be 1)."""
    torch.manual_seed(2)
    model = rnnext.RNN(4, 6).eval()
    data = export(model, (torch.randn(1, 2, 4),), {0: {0: "T", 1: "B"}}, exporter)
    assert "RNN" in op_types(data)
    x = torch.randn(6, 3, 4)
    got = run_onnx(data, x)
    with torch.no_grad():
        for g, w in zip(got, model(x)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


class ReverseOneBias(nn.Module):
    """The per-layer op called directly: reverse direction, b_ih absent, b_hh present."""

    def __init__(self):
        super().__init__()
        self.w_ih = nn.Parameter(torch.randn(6, 4) * 0.3)
        self.w_hh = nn.Parameter(torch.randn(6, 6) * 0.3)
        self.b_hh = nn.Parameter(torch.randn(6))

    def forward(self, x: torch.Tensor, h: torch.Tensor):
        return torch.ops.rnnext.rnn_forward(x, None, h, self.w_ih, self.w_hh, None, self.b_hh, False, True)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_per_layer_op_reverse_with_one_bias(exporter):
    torch.manual_seed(3)
    model = ReverseOneBias().eval()
    dynamic = {0: {0: "T", 1: "B"}, 1: {0: "B"}}
    data = export(model, (torch.randn(5, 2, 4), torch.randn(2, 6)), dynamic, exporter)
    assert "RNN" in op_types(data)
    x, h = torch.randn(7, 3, 4), torch.randn(3, 6)
    got = run_onnx(data, x, h)
    with torch.no_grad():
        want = model(x, h)
        # The reverse direction by hand, from torch.nn's definition.
        ref = torch.nn.RNN(4, 6, bias=True)
        ref.weight_ih_l0.copy_(model.w_ih)
        ref.weight_hh_l0.copy_(model.w_hh)
        ref.bias_ih_l0.zero_()
        ref.bias_hh_l0.copy_(model.b_hh)
        out_nn, h_nn = ref(x.flip(0), h[None])
    torch.testing.assert_close(want[0], out_nn.flip(0), rtol=1e-5, atol=1e-5)
    for g, w in zip(got, (out_nn.flip(0), h_nn[0])):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnext.RNN(4, 6)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        return self.rnn(nn.utils.rnn.pack_padded_sequence(x, lengths))[1]


def test_packed_input_is_a_clear_error():
    """(With dynamo=True, torch's exporter stops earlier, at aten._pack_padded_sequence, which it
    cannot translate: for torch.nn.RNN too.)"""
    with pytest.raises(Exception) as info:
        export(Packed().eval(), (torch.randn(3, 2, 4), torch.tensor([3, 2])), {}, "legacy")
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("ONNX export of packed sequences" in m for m in chain)


def _run_python(code: str) -> str:
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_registration_is_lazy_and_works_in_either_import_order():
    """Importing rnnext imports neither torch.onnx nor onnxscript (their registrations wait for the
    exporters' import); with the exporters imported first, rnnext registers at once."""
    out = _run_python("import sys, rnnext; print('torch.onnx' in sys.modules, 'onnxscript' in sys.modules)")
    assert out.split() == ["False", "False"]
    pytest.importorskip("onnxscript", reason=_NO_ONNXSCRIPT)
    _run_python(
        "import io, warnings, torch, torch.onnx\n"
        "import torch.onnx._internal.exporter._registration\n"
        "import rnnext\n"
        "warnings.simplefilter('ignore')\n"
        "m = rnnext.RNN(3, 4).eval()\n"
        "torch.onnx.export(m, (torch.randn(2, 1, 3),), io.BytesIO(), dynamo=False)\n"
        "torch.onnx.export(m, (torch.randn(2, 1, 3),), dynamo=True, verbose=False)\n"
    )


class StackAndCell(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnext.RNN(4, 6, 2, bidirectional=True, batch_first=True)
        self.cell = rnnext.RNNCell(12, 3, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor):
        y, h_n = self.rnn(x, h)
        return self.cell(y[:, -1]), h_n


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 20])
def test_legacy_exporter_opsets(opset):
    """The legacy symbolics are registered from opset 9 on (Squeeze / Unsqueeze take their axes as
    an attribute before opset 13, as an input from 13)."""
    torch.manual_seed(4)
    model = StackAndCell().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(3, 5, 4), torch.randn(4, 3, 6)), f, dynamo=False, opset_version=opset,
            input_names=["x", "h"], dynamic_axes={"x": {0: "B", 1: "T"}, "h": {1: "B"}},
        )  # fmt: skip
    assert op_types(f.getvalue()).count("RNN") == 2
    x, h = torch.randn(2, 7, 4), torch.randn(4, 2, 6)
    with torch.no_grad():
        for got, want in zip(run_onnx(f.getvalue(), x, h), model(x, h)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
