r"""Functional form of rnnext's RNN: the computation of :class:`rnnext.RNN` without module state.

Each layer and direction is one fused op call (``torch.ops.rnnext.rnn_forward``); this module only
walks layers and directions, concatenates directions, and applies dropout between layers.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops import rnn_forward

__all__ = ["rnn", "rnn_cell"]


def _is_relu(nonlinearity: str) -> bool:
    if nonlinearity == "tanh":
        return False
    if nonlinearity == "relu":
        return True
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def rnn_cell(
    input: Tensor,
    hx: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    r"""One step :math:`h' = \text{act}(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`.

    ``input`` is ``[B, I]``, ``hx`` is ``[B, H]`` or None (zeros); returns ``[B, H]``.
    """
    _, h = rnn_forward(input.unsqueeze(0), None, hx, w_ih, w_hh, b_ih, b_hh, _is_relu(nonlinearity), False)
    return h


def rnn(
    input: Tensor,
    hx: Optional[Tensor],
    weights: Sequence[Tensor],
    *,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    bias: bool = True,
    dropout: float = 0.0,
    training: bool = False,
    bidirectional: bool = False,
    batch_sizes: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    r"""A stack of Elman RNN layers over a whole sequence.

    Args:
        input: ``[T, B, I]`` (time-major), or the ``data`` ``[N, I]`` of a packed batch with
            ``batch_sizes`` (int64 CPU, as in :class:`torch.nn.utils.rnn.PackedSequence`).
        hx: ``[num_layers * num_directions, B, H]`` or None (zeros).
        weights: per layer, per direction: ``w_ih, w_hh`` and, when ``bias``, ``b_ih, b_hh``, in the
            order of :attr:`torch.nn.RNN._flat_weights`.

    Returns:
        ``output`` (``[T, B, D*H]`` or ``[N, D*H]``) and ``h_n`` (``[num_layers * D, B, H]``).
    """
    relu = _is_relu(nonlinearity)
    directions = 2 if bidirectional else 1
    per = 4 if bias else 2
    if len(weights) != num_layers * directions * per:
        raise ValueError(
            f"rnnext: expected {num_layers * directions * per} weight tensors, got {len(weights)}"
        )
    layer_input = input
    finals = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            w = weights[k * per : (k + 1) * per]
            b_ih, b_hh = (w[2], w[3]) if bias else (None, None)
            h0 = hx[k] if hx is not None else None
            out, h_n = rnn_forward(layer_input, batch_sizes, h0, w[0], w[1], b_ih, b_hh, relu, direction == 1)
            outputs.append(out)
            finals.append(h_n)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, p=dropout, training=True)
    return layer_input, torch.stack(finals, 0)
