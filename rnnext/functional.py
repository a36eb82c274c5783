r"""Functional form of rnnext: the computation of :class:`rnnext.RNN` / :class:`rnnext.RNNCell`
without module state.

:func:`rnn` is one call of the stack op ``torch.ops.rnnext.rnn`` (csrc/stack.cpp: every layer and
direction one call of the fused ``rnnext::rnn_forward``, whose backward is the fused
``rnn_backward``; the two directions of a layer concatenated and dropout between layers exactly
where ATen applies it); :func:`rnn_cell` is one call of ``torch.ops.rnnext.rnn_cell``
(``rnn_forward`` over a one-step sequence). Neither calls ATen's ``rnn_tanh`` / ``rnn_relu``. What
stays in Python is a dtype policy: autocast, and the float32 computation of half types on the
CPU.

Each layer and direction computes, for every time step :math:`t`,

.. math::
    h_t = \sigma(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),
    \qquad \sigma = \tanh \text{ or } \mathrm{ReLU},

where :math:`x_t` is the input of the first layer, or the output of the layer below (both
directions concatenated, after dropout in training) for the others.

Dtypes: float32 and float64 run natively everywhere (CUDA also float16 / bfloat16). float16 and
bfloat16 on the CPU, which the CPU kernels do not implement, are computed in float32 and the
results are cast back to the input's dtype (``torch.nn`` instead rounds to the low precision after
every step, so results agree to that precision, not bit for bit). Under ``torch.autocast`` the
float32 tensors are cast to the autocast dtype first, as ``torch.nn``'s matmuls would be.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ._ops import rnn as _rnn
from ._ops import rnn_cell as _rnn_cell

__all__ = ["rnn", "rnn_cell"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _is_relu(nonlinearity: str) -> bool:
    if nonlinearity == "tanh":
        return False
    if nonlinearity == "relu":
        return True
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def _autocast(tensors: list[Optional[Tensor]], device_type: str) -> list[Optional[Tensor]]:
    """What autocast does to a matmul's arguments: floating tensors other than float64 take the
    autocast dtype."""
    dtype = torch.get_autocast_dtype(device_type)
    return [
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    ]


def _autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False (not an error) for device types autocast
    does not know, such as ``meta``."""
    if not torch._C._is_any_autocast_enabled():
        return False
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _upcast(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether this dtype must be computed in float32: half types on the CPU (no CPU kernel)."""
    return dtype in _LOW_PRECISION and device.type == "cpu"


def rnn_cell(
    input: Tensor,
    hx: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    r"""One Elman RNN step: :math:`h' = \sigma(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})`.

    ============ ==========================================
    ``input``    :math:`(N, H_{in})`
    ``hx``       :math:`(N, H_{out})`, or ``None`` (zeros)
    ``w_ih``     :math:`(H_{out}, H_{in})`
    ``w_hh``     :math:`(H_{out}, H_{out})`
    ``b_ih``     :math:`(H_{out})` or ``None``
    ``b_hh``     :math:`(H_{out})` or ``None``
    returns      :math:`(N, H_{out})`
    ============ ==========================================

    ``nonlinearity`` is ``'tanh'`` or ``'relu'``. Differentiable with respect to every tensor
    argument. No argument checks beyond the op's own: :class:`rnnext.RNNCell` validates as
    ``torch.nn.RNNCell`` does.
    """
    relu = _is_relu(nonlinearity)
    if _autocast_enabled(input.device.type):
        with torch.autocast(input.device.type, enabled=False):
            return rnn_cell(*_autocast([input, hx, w_ih, w_hh, b_ih, b_hh], input.device.type), nonlinearity)
    if _upcast(input.dtype, input.device):
        dtype = input.dtype
        args = [t.float() if t is not None else None for t in (input, hx, w_ih, w_hh, b_ih, b_hh)]
        return rnn_cell(*args, nonlinearity).to(dtype)
    return _rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu)


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
    batch_first: bool = False,
    batch_sizes: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    r"""A stack of Elman RNN layers over a whole sequence (:class:`rnnext.RNN` without a module).

    Args:
        input: the sequence: :math:`(L, N, H_{in})`, or :math:`(N, L, H_{in})` when ``batch_first``;
            or, with ``batch_sizes``, the ``data`` :math:`(\sum_t n_t, H_{in})` of a
            :class:`~torch.nn.utils.rnn.PackedSequence` (sorted by decreasing length).
        hx: initial state :math:`(D \cdot \text{num\_layers}, N, H_{out})`, or ``None`` for zeros.
        weights: per layer, per direction (forward then reverse): ``w_ih, w_hh`` and, when
            ``bias``, ``b_ih, b_hh`` -- the order of ``torch.nn.RNN._flat_weights``.
        num_layers: number of stacked layers.
        nonlinearity: ``'tanh'`` or ``'relu'``.
        bias: whether ``weights`` holds biases.
        dropout: probability of zeroing each element of every layer's output except the last's;
            only when ``training`` (the same ``torch.nn.functional.dropout`` calls, in the same
            order, as ATen: the same masks under the same seed).
        training: whether dropout applies.
        bidirectional: whether ``weights`` holds a reverse direction for each layer.
        batch_first: layout of a padded ``input`` and ``output`` (ignored when packed).
        batch_sizes: the packed batch sizes (int64, CPU, non-increasing), or ``None`` (padded).

    Returns:
        ``(output, h_n)``:

        ========== =========================================================================
        output     :math:`(L, N, D \cdot H_{out})` (``batch_first``: :math:`(N, L, D \cdot H_{out})`);
                   packed: :math:`(\sum_t n_t, D \cdot H_{out})`
        h_n        :math:`(D \cdot \text{num\_layers}, N, H_{out})`; packed: each sequence's state
                   at its own last step (forward) or after step 0 (reverse)
        ========== =========================================================================

        with :math:`D = 2` if ``bidirectional`` else 1. Differentiable with respect to ``input``,
        ``hx`` and every weight. Shapes and dtypes are not validated beyond the op's own checks:
        :class:`rnnext.RNN` validates as ``torch.nn.RNN`` does.
    """
    relu = _is_relu(nonlinearity)
    directions = 2 if bidirectional else 1
    per = 4 if bias else 2
    if len(weights) != num_layers * directions * per:
        raise ValueError(
            f"rnnext: expected {num_layers * directions * per} weight tensors, got {len(weights)}"
        )
    device_type = input.device.type
    if _autocast_enabled(device_type):
        cast = _autocast([input, hx, *weights], device_type)
        with torch.autocast(device_type, enabled=False):
            return rnn(
                cast[0], cast[1], cast[2:], num_layers=num_layers, nonlinearity=nonlinearity, bias=bias,
                dropout=dropout, training=training, bidirectional=bidirectional,
                batch_first=batch_first, batch_sizes=batch_sizes,
            )  # fmt: skip
    if _upcast(input.dtype, input.device):
        dtype = input.dtype
        output, h_n = rnn(
            input.float(), hx.float() if hx is not None else None, [w.float() for w in weights],
            num_layers=num_layers, nonlinearity=nonlinearity, bias=bias, dropout=dropout,
            training=training, bidirectional=bidirectional, batch_first=batch_first,
            batch_sizes=batch_sizes,
        )  # fmt: skip
        return output.to(dtype), h_n.to(dtype)
    return _rnn(
        input, batch_sizes, hx, weights, bias, num_layers, dropout, training, bidirectional,
        batch_first, relu,
    )  # fmt: skip
