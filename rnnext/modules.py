r"""Drop-in modules: :class:`RNN` and :class:`RNNCell` with ``torch.nn``'s API, on rnnext's fused ops.

They inherit parameter creation, initialisation, ``repr``, ``state_dict`` layout and argument checks
from ``torch.nn`` (``RNNBase`` and ``RNNCell``), and replace only the computation. ``RNN`` derives from
``torch.nn.RNNBase``, not ``torch.nn.RNN``: Dynamo refuses to trace instances of ``torch.nn.RNN``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional

__all__ = ["RNN", "RNNCell"]


def _dtype_name(dtype: torch.dtype) -> str:
    """ATen's name of a dtype as its error messages print it: ``Float``, ``Double``, ``Long`` ..."""
    return torch.empty((), dtype=dtype, device="meta").type().split(".")[-1][: -len("Tensor")]


def _check_matmul_dtypes(mat1: Tensor, mat2: Tensor) -> None:
    if mat1.dtype != mat2.dtype:
        raise RuntimeError(
            "mat1 and mat2 must have the same dtype, but got "
            f"{_dtype_name(mat1.dtype)} and {_dtype_name(mat2.dtype)}"
        )


class RNNCell(nn.RNNCell):
    r"""An Elman RNN cell with tanh or ReLU non-linearity, computed by rnnext's fused op.

    .. math::
        h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})

    If :attr:`nonlinearity` is `'relu'`, then ReLU is used in place of tanh.

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        bias: If ``False``, then the layer does not use bias weights `b_ih` and `b_hh`.
            Default: ``True``
        nonlinearity: The non-linearity to use. Can be either ``'tanh'`` or ``'relu'``.
            Default: ``'tanh'``

    Inputs: input, hidden
        - **input**: tensor containing input features
        - **hidden**: tensor containing the initial hidden state; defaults to zero if not provided.

    Outputs: h'
        - **h'** of shape `(batch, hidden_size)`: tensor containing the next hidden state.

    Shape:
        - input: :math:`(N, H_{in})` or :math:`(H_{in})`
        - hidden: :math:`(N, H_{out})` or :math:`(H_{out})`
        - output: :math:`(N, H_{out})` or :math:`(H_{out})`

    Parameters, initialisation, ``repr`` and ``state_dict`` are those of :class:`torch.nn.RNNCell`
    (this class derives from it), so weights load both ways.

    Examples::

        >>> cell = rnnext.RNNCell(10, 20)
        >>> x = torch.randn(6, 3, 10)
        >>> hx = torch.randn(3, 20)
        >>> for i in range(6):
        ...     hx = cell(x[i], hx)
    """

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if input.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if hx is not None:
                hx = hx.unsqueeze(0)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        self._check_input(input, hx)
        if input.size(0) == 0:
            ret = input.new_zeros((0, self.hidden_size))
        else:
            ret = functional.rnn_cell(
                input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity
            )
        return ret if is_batched else ret.squeeze(0)

    def _check_input(self, input: Tensor, hx: Optional[Tensor]) -> None:
        # The checks and messages of ATen's rnn_*_cell, in its order.
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        if hx is not None:
            if input.size(0) != hx.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
                )
            if hx.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {self.hidden_size}"
                )
        _check_matmul_dtypes(input, self.weight_ih)
        if hx is not None:
            _check_matmul_dtypes(hx, self.weight_hh)
        for t in (hx, self.weight_ih):
            if t is not None and t.device != input.device:
                raise RuntimeError(f"Tensor on device {t.device} is not on the expected device {input.device}!")


class RNN(nn.RNNBase):
    r"""A multi-layer Elman RNN with tanh or ReLU non-linearity, computed by rnnext's fused ops.

    For each element in the input sequence, each layer computes

    .. math::
        h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    where :math:`h_t` is the hidden state at time `t`, :math:`x_t` is the input at time `t`, and
    :math:`h_{(t-1)}` the hidden state of the previous layer at time `t-1` or the initial hidden state
    at time `0`. If :attr:`nonlinearity` is ``'relu'``, then :math:`\text{ReLU}` is used instead.

    Arguments, parameters (``weight_ih_l{k}{_reverse}`` ...), initialisation, ``repr``, inputs and
    outputs are exactly those of :class:`torch.nn.RNN`:

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        num_layers: Number of recurrent layers. Default: 1
        nonlinearity: The non-linearity to use. Can be either ``'tanh'`` or ``'relu'``. Default: ``'tanh'``
        bias: If ``False``, then the layer does not use bias weights `b_ih` and `b_hh`. Default: ``True``
        batch_first: If ``True``, the input and output tensors are `(batch, seq, feature)`. Default: ``False``
        dropout: If non-zero, dropout on the outputs of each layer except the last. Default: 0
        bidirectional: If ``True``, becomes a bidirectional RNN. Default: ``False``

    Shape (:math:`L` sequence length, :math:`N` batch, :math:`D` = 2 if bidirectional else 1):

    ========== =========================================================================
    input      :math:`(L, H_{in})` unbatched, :math:`(L, N, H_{in})`, or
               :math:`(N, L, H_{in})` with ``batch_first``; or a ``PackedSequence``
    h_0        :math:`(D * \text{num\_layers}, H_{out})` or
               :math:`(D * \text{num\_layers}, N, H_{out})`; zeros if not given
    output     :math:`(L, D * H_{out})`, :math:`(L, N, D * H_{out})` or
               :math:`(N, L, D * H_{out})`; a ``PackedSequence`` for packed input
    h_n        :math:`(D * \text{num\_layers}, H_{out})` or :math:`(D * \text{num\_layers}, N, H_{out})`
    ========== =========================================================================

    Examples::

        >>> rnn = rnnext.RNN(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(input, h0)
    """

    def __init__(self, *args, **kwargs):
        # torch.nn.RNN's argument handling (it cannot be called: its super() needs an nn.RNN).
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)

    def flatten_parameters(self) -> None:
        """Kept for API compatibility. rnnext's kernels read each weight in place, so there is
        nothing to flatten (``torch.nn`` uses this to hand cuDNN one contiguous buffer)."""

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
    ) -> tuple[Union[Tensor, PackedSequence], Tensor]:
        self._update_flat_weights()
        num_directions = 2 if self.bidirectional else 1
        is_packed = isinstance(input, PackedSequence)
        is_batched = True
        batch_dim = 0 if self.batch_first else 1
        if is_packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            max_batch_size = int(batch_sizes[0])
        else:
            data, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
            if data.dim() not in (2, 3):
                raise ValueError(f"RNN: Expected input to be 2D or 3D, got {data.dim()}D tensor instead")
            is_batched = data.dim() == 3
            if not is_batched:
                data = data.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            max_batch_size = data.size(batch_dim)
        if hx is None:
            hx = torch.zeros(
                self.num_layers * num_directions,
                max_batch_size,
                self.hidden_size,
                dtype=data.dtype,
                device=data.device,
            )
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data, hx, batch_sizes)
        _check_matmul_dtypes(data, self._flat_weights[0])

        if not is_packed and self.batch_first:
            data = data.transpose(0, 1)
        output, hidden = functional.rnn(
            data,
            hx,
            self._flat_weights,
            num_layers=self.num_layers,
            nonlinearity=self.nonlinearity,
            bias=self.bias,
            dropout=self.dropout,
            training=self.training,
            bidirectional=self.bidirectional,
            batch_sizes=batch_sizes,
        )
        if is_packed:
            return (
                PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(hidden, unsorted_indices),
            )
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = hidden.squeeze(1)
        return output, self.permute_hidden(hidden, unsorted_indices)
