"""TorchScript: torch.jit.script and torch.jit.trace of models holding rnnext.RNN / rnnext.RNNCell,
saved and loaded in a fresh process that imports rnnext, with torch.nn's numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tagger(nn.Module):
    def __init__(self, **rnn_kwargs):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.rnn = nn.RNN(8, 6, **rnn_kwargs)
        d = 2 if rnn_kwargs.get("bidirectional") else 1
        self.head = nn.Linear(6 * d, 3)

    def forward(self, tokens: torch.Tensor, hx: Optional[torch.Tensor] = None):
        y, h = self.rnn(self.embed(tokens), hx)
        return self.head(y), h


class CellLoop(nn.Module):
    def __init__(self, nonlinearity: str = "tanh", bias: bool = True):
        super().__init__()
        self.cell = nn.RNNCell(4, 5, bias=bias, nonlinearity=nonlinearity)

    def forward(self, x: torch.Tensor):
        h = self.cell(x[0])
        for t in range(1, x.size(0)):
            h = self.cell(x[t], h)
        return h, self.cell(x[0, 0], h[0])  # unbatched step too


class PackedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 5, num_layers=2, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, h: torch.Tensor):
        out, h_n = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), h)
        return out.data, h_n


def _pair(cls, *args, **kwargs):
    torch.manual_seed(0)
    ref = cls(*args, **kwargs).double().eval()
    ours = rnnext.convert(cls(*args, **kwargs).double().eval())
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _assert_same(got, want):
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


CONFIGS = [
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=1, nonlinearity="relu", batch_first=True, bias=False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["2layer-bidir", "relu-batch-first-nobias"])
def test_script_rnn_model(config):
    ours, ref = _pair(Tagger, **config)
    scripted = torch.jit.script(ours)
    bf = config.get("batch_first", False)
    tokens = torch.randint(0, 20, (3, 7) if bf else (7, 3))
    d = 2 if config.get("bidirectional") else 1
    h = torch.randn(config["num_layers"] * d, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        _assert_same(scripted(tokens), ref(tokens))
        _assert_same(scripted(tokens, h), ref(tokens, h))
    # The scripted code calls rnnext's op, not ATen's RNN.
    assert "rnnext::rnn(" in str(scripted.inlined_graph)
    assert "aten::rnn_" not in str(scripted.inlined_graph)
    # Gradients flow through the scripted module too.
    out, _ = scripted(tokens, h)
    out.sum().backward()
    assert all(p.grad is not None for p in ours.rnn.parameters())


class Wrapper(nn.Module):
    """A module holding an RNN: a scripted RNN is called through its owner (torch.nn.RNN's
    overloaded forward leaves a top-level scripted RNN without a plain ``forward``, in torch.nn
    as in rnnext)."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor, h: Optional[torch.Tensor] = None):
        return self.rnn(x, h)


def test_script_unbatched_and_packed():
    ours, ref = _pair(PackedModel)
    scripted = torch.jit.script(ours)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])
    h = torch.randn(4, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        _assert_same(scripted(x, lengths, h), ref(x, lengths, h))
        unbatched = torch.jit.script(Wrapper(ours.rnn))
        _assert_same(unbatched(x[:, 0]), ref.rnn(x[:, 0]))  # [T, I]
        _assert_same(unbatched(x[:, 0], h[:, 0]), ref.rnn(x[:, 0], h[:, 0]))


@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False)])
def test_script_cell_loop(nonlinearity, bias):
    ours, ref = _pair(CellLoop, nonlinearity, bias)
    scripted = torch.jit.script(ours)
    x = torch.randn(4, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        _assert_same(scripted(x), ref(x))


def test_script_errors_are_torch_nns():
    """Invalid calls of the scripted module raise torch.nn's scripted errors (TorchScript reports
    them as torch.jit.Error carrying the original message)."""
    scripted = torch.jit.script(Wrapper(rnnext.RNN(4, 5)))
    reference = torch.jit.script(Wrapper(nn.RNN(4, 5)))
    bad_calls = [
        (torch.randn(2, 3, 4, 5), None),  # 4-D input
        (torch.randn(3, 2, 7), None),  # wrong input size
        (torch.randn(3, 2, 4), torch.randn(1, 3, 5)),  # wrong batch in hx
        (torch.randn(3, 2, 4), torch.randn(2, 5)),  # 2-D hx with 3-D input
    ]
    for x, h in bad_calls:
        with pytest.raises(Exception) as want:
            reference(x, h)
        assert not isinstance(want.value, AttributeError)
        with pytest.raises(type(want.value)) as got:
            scripted(x, h)
        assert str(want.value).strip().splitlines()[-1] == str(got.value).strip().splitlines()[-1]


def test_trace_rnn_and_cell():
    ours, ref = _pair(Tagger, num_layers=2, bidirectional=True)
    tokens = torch.randint(0, 20, (7, 3))
    with torch.no_grad():
        traced = torch.jit.trace(ours, (tokens,))
        other = torch.randint(0, 20, (4, 5))
        _assert_same(traced(other), ref(other))  # another length and batch: nothing specialized
    assert "rnnext::rnn(" in str(traced.inlined_graph)
    cell, cell_ref = _pair(CellLoop)
    x = torch.randn(4, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        traced_cell = torch.jit.trace(cell, (x,))
        x2 = torch.randn(4, 6, 4, dtype=torch.float64)
        _assert_same(traced_cell(x2), cell_ref(x2))


SAVE_SCRIPT = """
import sys, torch, rnnext
sys.path.insert(0, {tests!r})
from test_script import Tagger, CellLoop, _pair
ours, ref = _pair(Tagger, num_layers=2, bidirectional=True)
cell, cell_ref = _pair(CellLoop, "relu")
torch.jit.save(torch.jit.script(ours), {path!r} + ".script.pt")
torch.jit.save(torch.jit.trace(ours, (torch.randint(0, 20, (7, 3)),)), {path!r} + ".trace.pt")
torch.jit.save(torch.jit.script(cell), {path!r} + ".cell.pt")
torch.save(dict(ref=ref.state_dict(), cell=cell_ref.state_dict()), {path!r} + ".ref.pt")
"""

LOAD_SCRIPT = """
import sys, torch, rnnext
from torch import nn
sys.path.insert(0, {tests!r})
from test_script import Tagger, CellLoop
states = torch.load({path!r} + ".ref.pt")
ref = Tagger(num_layers=2, bidirectional=True).double().eval()
ref.load_state_dict(states["ref"])
cell_ref = CellLoop("relu").double().eval()
cell_ref.load_state_dict(states["cell"])
tokens, h = torch.randint(0, 20, (9, 4)), torch.randn(4, 4, 6, dtype=torch.float64)
x = torch.randn(5, 3, 4, dtype=torch.float64)
with torch.no_grad():
    for kind in ("script", "trace"):
        m = torch.jit.load({path!r} + "." + kind + ".pt")
        for g, w in zip(m(tokens), ref(tokens)):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    m = torch.jit.load({path!r} + ".cell.pt")
    for g, w in zip(m(x), cell_ref(x)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    m = torch.jit.load({path!r} + ".script.pt")
    for g, w in zip(m(tokens, h), ref(tokens, h)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
print("ok")
"""


def _python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_save_in_one_process_load_in_another(tmp_path):
    """Scripted and traced modules saved in one process, loaded in a fresh one that imports
    rnnext: rnnext's numbers (which are torch.nn's)."""
    fmt = dict(tests=os.path.join(ROOT, "tests"), path=str(tmp_path / "model"))
    _python(SAVE_SCRIPT.format(**fmt))
    assert _python(LOAD_SCRIPT.format(**fmt)).strip() == "ok"
