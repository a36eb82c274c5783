"""A whole sequence through rnnext.RNN versus a step-by-step rnnext.RNNCell loop: the same final state.

``RNN`` runs every step of the sequence in one call (one fused op per layer: the input projection of
all steps as one matrix product, then the recurrence in a tight loop). ``RNNCell`` computes one step,
so the loop over time is yours: useful when each step's input depends on the previous output
(decoding, sampling), at the cost of one call per step.

The cell's parameters are ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``; the RNN's layer 0
has the same tensors under ``weight_ih_l0`` ... so the weights copy across directly.

Run: ``python examples/rnn_vs_cell.py [--seq-len T] [--batch B] [--input I] [--hidden H]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

try:
    import rnnext
except ImportError:  # a source checkout built in place but not installed: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import rnnext


def copy_layer0_into_cell(rnn: rnnext.RNN, cell: rnnext.RNNCell) -> None:
    """Copy layer 0 of ``rnn`` (forward direction) into ``cell``."""
    with torch.no_grad():
        cell.weight_ih.copy_(rnn.weight_ih_l0)
        cell.weight_hh.copy_(rnn.weight_hh_l0)
        cell.bias_ih.copy_(rnn.bias_ih_l0)
        cell.bias_hh.copy_(rnn.bias_hh_l0)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--input", type=int, default=8)
    p.add_argument("--hidden", type=int, default=16)
    a = p.parse_args(argv)
    T, B, In, H = a.seq_len, a.batch, a.input, a.hidden

    torch.manual_seed(0)
    rnn = rnnext.RNN(In, H)
    cell = rnnext.RNNCell(In, H)
    copy_layer0_into_cell(rnn, cell)
    print(f"{rnn} and {cell}, weights copied from the RNN into the cell")

    x = torch.randn(T, B, In, requires_grad=True)
    h0 = torch.randn(1, B, H)

    # The whole sequence in one call.
    out, h_n = rnn(x, h0)  # out [T, B, H], h_n [1, B, H]

    # The same sequence one step at a time.
    h = h0[0]  # [B, H]
    outs = []
    for t in range(T):
        h = cell(x[t], h)  # [B, I], [B, H] -> [B, H]
        outs.append(h)
    out_cell = torch.stack(outs)

    print(f"RNN: output {list(out.shape)}, h_n {list(h_n.shape)};  RNNCell x {T} steps: h {list(h.shape)}")
    d_final = (h_n[0] - h).abs().max().item()
    d_out = (out - out_cell).abs().max().item()
    print(f"max |h_n - h_T| = {d_final:.2e}, max |output - stacked cell states| = {d_out:.2e} (float32)")
    torch.testing.assert_close(h_n[0], h)
    torch.testing.assert_close(out, out_cell)

    # Gradients flow through both the same way.
    (g_rnn,) = torch.autograd.grad(h_n.sum(), x)
    (g_cell,) = torch.autograd.grad(h.sum(), x)
    torch.testing.assert_close(g_rnn, g_cell)
    print(f"d(sum h_T)/dx agrees as well (max |diff| = {(g_rnn - g_cell).abs().max().item():.2e})")

    # Unbatched input works for both: x [T, I] for the RNN, x_t [I] for the cell.
    h_u = h0[0, 0]
    for t in range(T):
        h_u = cell(x[t, 0].detach(), h_u)
    torch.testing.assert_close(rnn(x[:, 0].detach(), h0[:, 0])[1][0], h_u)
    print("unbatched (no batch dimension) too: OK")
    print("rnn_vs_cell: all checks passed")


if __name__ == "__main__":
    main()
