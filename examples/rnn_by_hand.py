r"""The two tensor layouts, and the RNN equation computed by hand from the layer's own weights.

Layouts. ``rnnext.RNN`` (like ``torch.nn.RNN``) takes ``[seq, batch, feature]`` by default ("time
major": ``x[t]`` is every sequence's step ``t``) or ``[batch, seq, feature]`` with ``batch_first=True``
(``x[b]`` is one whole sequence). Same weights, same numbers, only the axes of input and output differ;
the hidden state is ``[num_layers * directions, batch, hidden]`` in both layouts.

Equation (one layer, tanh). For t = 1..T::

    h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)

with ``W_ih = weight_ih_l0 [H, I]``, ``W_hh = weight_hh_l0 [H, H]``, ``b_ih = bias_ih_l0 [H]``,
``b_hh = bias_hh_l0 [H]``, ``h_0`` the initial state. ``output[t] = h_t`` and ``h_n = h_T``.

Run: ``python examples/rnn_by_hand.py [--seq-len T] [--batch B] [--input I] [--hidden H]``.
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


def layouts(T: int, B: int, In: int, H: int) -> None:
    print("== 1. [seq, batch, feature] versus batch_first ==")
    torch.manual_seed(0)
    seq_first = rnnext.RNN(In, H)  # batch_first=False (the default)
    batch_first = rnnext.RNN(In, H, batch_first=True)
    batch_first.load_state_dict(seq_first.state_dict())  # same parameter names and shapes

    x = torch.randn(T, B, In)  # [T, B, I]: x[t] = step t of every sequence
    x_bf = x.transpose(0, 1)  # [B, T, I]: x_bf[b] = the whole sequence b (a view, no copy)
    out, h_n = seq_first(x)
    out_bf, h_n_bf = batch_first(x_bf)
    print(f"seq-first   input {list(x.shape)} -> output {list(out.shape)}, h_n {list(h_n.shape)}")
    print(f"batch_first input {list(x_bf.shape)} -> output {list(out_bf.shape)}, h_n {list(h_n_bf.shape)}")
    torch.testing.assert_close(out_bf, out.transpose(0, 1))
    torch.testing.assert_close(h_n_bf, h_n)  # h_n is [layers, B, H] in both layouts
    diff = (out_bf - out.transpose(0, 1)).abs().max().item()
    print(f"batch_first output == seq-first output transposed (max |diff| {diff:.1e}); same h_n: OK\n")


def by_hand(T: int, B: int, In: int, H: int) -> None:
    print("== 2. h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) by hand ==")
    torch.manual_seed(1)
    rnn = rnnext.RNN(In, H, dtype=torch.float64)
    for name, p in rnn.named_parameters():
        print(f"  {name:<13} {list(p.shape)}")
    w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
    b_ih, b_hh = rnn.bias_ih_l0.detach(), rnn.bias_hh_l0.detach()

    x = torch.randn(T, B, In, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    h = h0[0]  # [B, H]
    steps = []
    for t in range(T):
        h = torch.tanh(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)  # [B, I]@[I, H] + [B, H]@[H, H]
        steps.append(h)
    manual_out = torch.stack(steps)  # [T, B, H]

    out, h_n = rnn(x, h0)
    err_out = (out - manual_out).abs().max().item()
    err_h = (h_n[0] - h).abs().max().item()
    print(f"rnnext.RNN output vs by hand: max |diff| = {err_out:.2e}; h_n vs h_T: {err_h:.2e} (float64)")
    torch.testing.assert_close(out, manual_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], out[-1], rtol=0, atol=0)
    print("output[t] = h_t and h_n = output[-1]: OK")

    # The same with nonlinearity='relu': only the activation changes.
    relu_rnn = rnnext.RNN(In, H, nonlinearity="relu", dtype=torch.float64)
    relu_rnn.load_state_dict(rnn.state_dict())
    h = h0[0]
    for t in range(T):
        h = torch.relu(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
    torch.testing.assert_close(relu_rnn(x, h0)[1][0], h, rtol=1e-12, atol=1e-12)
    print("nonlinearity='relu' by hand: OK")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=5)
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--input", type=int, default=4)
    p.add_argument("--hidden", type=int, default=6)
    a = p.parse_args(argv)
    layouts(a.seq_len, a.batch, a.input, a.hidden)
    by_hand(a.seq_len, a.batch, a.input, a.hidden)
    print("rnn_by_hand: all checks passed")


if __name__ == "__main__":
    main()
