"""torch.export + AOTInductor: a model holding rnnext, compiled into a package, loaded back (here and
in a fresh process that imports rnnext) and run on another batch and sequence length. One test:
the compilation costs tens of seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch import nn

import rnnext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = nn.RNNCell(12, 5, nonlinearity="relu")
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor):
        y, h = self.rnn(x, h0)
        return self.head(self.cell(y[:, -1])), h


LOAD = """
import sys, torch, rnnext
path, out = sys.argv[1], sys.argv[2]
model = torch._inductor.aoti_load_package(path)
x, h0 = torch.load(out + ".in.pt")
torch.save(model(x, h0), out)
"""


def test_export_aoti_package_roundtrip(tmp_path):
    torch.manual_seed(0)
    reference = Model().eval()
    model = rnnext.convert(Model().eval())
    model.load_state_dict(reference.state_dict())
    batch, steps = torch.export.Dim("batch", min=2, max=64), torch.export.Dim("steps", min=2, max=256)
    x, h0 = torch.randn(3, 5, 4), torch.randn(4, 3, 6)
    program = torch.export.export(model, (x, h0), dynamic_shapes=({0: batch, 1: steps}, {1: batch}))
    assert "rnnext.rnn" in str(program.graph_module.code)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))

    x2, h2 = torch.randn(7, 9, 4), torch.randn(4, 7, 6)
    with torch.no_grad():
        want = reference(x2, h2)
        torch.testing.assert_close(model(x2, h2), want)
    loaded = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(loaded(x2, h2), want, rtol=1e-5, atol=1e-5)

    out = str(tmp_path / "fresh.pt")
    torch.save((x2, h2), out + ".in.pt")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", LOAD, path, out], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), want, rtol=1e-5, atol=1e-5)
