r"""Drop-in modules: :class:`RNN` and :class:`RNNCell` with ``torch.nn``'s API, on rnnext's fused ops.

They inherit parameter creation, initialisation, ``repr``, ``state_dict`` layout, pickling and
``torch.nn``'s own Python argument checks from ``torch.nn`` (``RNNBase`` and ``RNNCell``), and replace
the computation. The checks that ATen makes inside ``rnn_tanh`` / ``rnn_relu`` (devices, empty
sequence, the dtype of ``hx``, short packed data) are made here in ATen's order, with its messages
(or by running the very ATen ``linear`` that raises them), so every invalid call fails as with
``torch.nn``. ``RNN`` derives from ``torch.nn.RNNBase``, not ``torch.nn.RNN``: Dynamo refuses to trace
instances of ``torch.nn.RNN``.
"""

# No `from __future__ import annotations`: TorchScript reads the annotations of RNN.forward's
# overloads (torch.jit.script; the scripted bodies are in _script.py).

from typing import Optional, Union, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _C, _script, functional

__all__ = ["RNN", "RNNCell"]

# What a refused op call raises (the op's checks, the binding's argument conversion, a parameter
# missing from _parameters).
_CALL_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, KeyError)
_is_compiling = torch.compiler.is_compiling
_is_scripting = torch.jit.is_scripting  # TorchScript knows the function, under any name


def _call(op, *args):
    """``op(*args)``, or None when the op refuses the call. (Not written inline in ``forward``:
    TorchScript parses ``forward``'s whole source for ``torch.jit.script``, and rejects try blocks.)"""
    try:
        return op(*args)
    except _CALL_ERRORS:
        return None


def _plain_arg_types(rnn: nn.RNNBase) -> bool:
    """Whether the arguments torch.nn hands to ATen's rnn_tanh / rnn_relu have the types its parser
    takes (torch.nn stores bias, batch_first, bidirectional and num_layers unchecked)."""
    return (
        type(rnn.bidirectional) is bool
        and type(rnn.batch_first) is bool
        and type(rnn.bias) is bool
        and type(rnn.num_layers) is int
    )


def _raise_arg_types(
    rnn: nn.RNNBase, data: Tensor, batch_sizes: Optional[Tensor], hx: Optional[Tensor]
) -> None:
    """Makes torch.nn's own call of ATen's rnn_tanh / rnn_relu with these arguments, whose parser
    raises torch.nn's TypeError (it names the function and the types it got) before computing."""
    fn = torch._VF.rnn_relu if rnn.mode == "RNN_RELU" else torch._VF.rnn_tanh
    h = hx if hx is not None else data.new_zeros(())
    common = (rnn._flat_weights, rnn.bias, rnn.num_layers, rnn.dropout, rnn.training, rnn.bidirectional)
    with torch.no_grad():
        if batch_sizes is None:
            fn(data, h, *common, rnn.batch_first)
        else:
            fn(data, batch_sizes, h, *common)


class RNNCell(_script.ScriptRNNCell, nn.RNNCell):
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
    (this class derives from it), so weights load both ways; invalid calls raise what
    ``torch.nn.RNNCell`` raises. float16 / bfloat16 on the CPU are computed in float32 and cast back.

    Examples::

        >>> cell = rnnext.RNNCell(10, 20)
        >>> x = torch.randn(6, 3, 10)
        >>> hx = torch.randn(3, 20)
        >>> for i in range(6):
        ...     hx = cell(x[i], hx)
    """

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step from ``hx`` (zeros if ``None``); see the class docstring for shapes."""
        if _is_scripting():  # TorchScript compiles this branch only
            return self._script_forward(input, hx)
        if not _is_compiling():
            # One op call (rnnext::rnn_cell), the op's checks standing for torch.nn's. Anything it
            # refuses or does not take (None: autocast, a subclass, a torch-function mode), or runs
            # on meta tensors (a mix of meta and real tensors passes the op, not always torch.nn),
            # takes the general path, which raises torch.nn's error or handles the case.
            nonlinearity = self.nonlinearity
            if nonlinearity == "tanh" or nonlinearity == "relu":
                p = self._parameters  # (a parametrized weight is not in it: None, refused)
                h = _call(
                    _C.rnn_cell, input, hx, p.get("weight_ih"), p.get("weight_hh"), p.get("bias_ih"),
                    p.get("bias_hh"), nonlinearity == "relu",
                )  # fmt: skip
                if h is not None and not h.is_meta:
                    return h
        return self._general_forward(input, hx)

    def _general_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        """torch.nn.RNNCell's checks and ATen's, in their order and words, then the step through
        functional.rnn_cell (autocast, half types on the CPU, the 1-D input with a 2-D hx quirk,
        parametrized weights, torch.compile)."""
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
        w_ih, w_hh, b_ih, b_hh = self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        # ATen's rnn_*_cell checks, in its order and words (check_rnn_cell_forward_input/hidden).
        if input.size(1) != w_ih.size(1):
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {w_ih.size(1)}"
            )
        if hx is not None:
            if input.size(0) != hx.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden0 batch size {hx.size(0)}"
                )
            if hx.size(1) != w_hh.size(1):
                raise RuntimeError(
                    f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, expected {w_hh.size(1)}"
                )
        if _mismatch(input, hx, w_ih):
            # ATen computes linear(hx, w_hh, b_hh) + linear(input, w_ih, b_ih): let those raise.
            h = hx if hx is not None else input.new_zeros((input.size(0), w_hh.size(1)))
            _raise_as_aten(h, w_hh, b_hh)
            _raise_as_aten(input, w_ih, b_ih)
        if hx is not None and hx.dim() == 3:
            # torch.nn's 1-D input with a 2-D hx [B, H], B == H (it passes ATen's checks): every row
            # of hx advances with the same input, and the leading 1 is squeezed away.
            return functional.rnn_cell(
                input.expand(hx.size(1), input.size(1)), hx[0], w_ih, w_hh, b_ih, b_hh, self.nonlinearity
            )
        ret = functional.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, self.nonlinearity)
        return ret if is_batched else ret.squeeze(0)


class RNN(_script.ScriptRNN, nn.RNNBase):
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

    Outputs are those of :class:`torch.nn.RNN` (``h_n`` holds each sequence's own final state for
    packed input, in the caller's order for ``enforce_sorted=False``). Dropout, in training, is
    drawn with the same calls as ``torch.nn``, so a seed gives the same masks.

    Differences from ``torch.nn.RNN``: float16 / bfloat16 on the CPU are computed in float32 and
    cast back (``torch.nn`` rounds after every step: results agree to half precision, not bit for
    bit); ``flatten_parameters`` does nothing; on CUDA, ``torch.nn`` hands calls to cuDNN, whose
    error messages for invalid calls are its own (rnnext raises the messages of ATen's native
    path).

    Examples::

        >>> rnn = rnnext.RNN(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(input, h0)
    """

    @overload
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None: ...

    @overload
    def __init__(self, *args, **kwargs) -> None: ...

    def __init__(self, *args, **kwargs):
        # torch.nn.RNN.__init__'s argument handling, word for word (it cannot be called on an
        # instance that is not a torch.nn.RNN: its zero-argument super() would raise).
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
        """Kept for API compatibility; does nothing. ``torch.nn`` packs the weights into one
        buffer for cuDNN (and does nothing off CUDA); rnnext's kernels read each weight where it
        is, so there is nothing to flatten."""

    @overload
    @torch._jit_internal._overload_method  # TorchScript's overloads, as torch.nn.RNN declares them
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> tuple[Tensor, Tensor]: ...

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self, input: PackedSequence, hx: Optional[Tensor] = None
    ) -> tuple[PackedSequence, Tensor]: ...

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
    ) -> tuple[Union[Tensor, PackedSequence], Tensor]:
        """Runs the RNN over ``input`` from ``hx`` (zeros if ``None``); see the class docstring."""
        if _is_scripting():  # TorchScript compiles this branch only, once per overload
            if isinstance(input, PackedSequence):
                return self._script_forward_packed(input, hx)
            return self._script_forward_padded(input, hx)
        compiling = _is_compiling()
        params = self._parameters
        if compiling:
            # Read the parameters as they are now (torch.func.functional_call, export) without
            # rebuilding _flat_weights, which would be a module mutation inside the graph.
            weights = [getattr(self, name) for name in self._flat_weights_names]
        else:
            weights = self._flat_weights
            if not _C.registered(weights, params, self._flat_weights_names):
                # Something replaced a parameter without RNNBase.__setattr__ seeing it (or it is
                # not a plain parameter): torch.nn's full resynchronisation.
                self._update_flat_weights()
                weights = self._flat_weights
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, weights)
        data, hx, squeeze = self._batched(input, hx)
        bias, layers = self.bias, self.num_layers
        bidirectional, batch_first = self.bidirectional, self.batch_first
        if (
            not compiling
            and type(bidirectional) is bool  # else torch.nn's TypeError (_functional)
            and type(batch_first) is bool
            and type(bias) is bool
            and type(layers) is int
        ):
            # One op call, the op's checks standing for torch.nn's. Anything it refuses or does not
            # take (None: autocast, a subclass, a torch-function mode) takes the general path,
            # which raises torch.nn's error in its order or handles the case.
            # (Written out, not through _run_op: that method call measured ~0.2 us, ~3% of a
            # tutorial-sized call; benchmarks/NOTES.md section 78.)
            ret = _call(
                _C.rnn, data, None, hx, weights, bias, layers, self.dropout, self.training,
                bidirectional, batch_first, self.mode == "RNN_RELU",
            )  # fmt: skip
            if ret is not None:
                return ret if squeeze < 0 else (ret[0].squeeze(squeeze), ret[1].squeeze(1))
        self._check_padded(data, hx, weights)
        output, hidden = self._functional(data, None, hx, weights)
        if squeeze >= 0:
            return output.squeeze(squeeze), hidden.squeeze(1)
        return output, hidden

    def _functional(
        self, data: Tensor, batch_sizes: Optional[Tensor], hx: Optional[Tensor], weights: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        if not _plain_arg_types(self):  # after torch.nn's checks, where torch.nn's ATen call raises
            _raise_arg_types(self, data, batch_sizes, hx)
        return functional.rnn(
            data, hx, weights, num_layers=self.num_layers,
            nonlinearity="relu" if self.mode == "RNN_RELU" else "tanh", bias=self.bias,
            dropout=self.dropout, training=self.training, bidirectional=self.bidirectional,
            batch_first=self.batch_first, batch_sizes=batch_sizes,
        )  # fmt: skip

    def _check_padded(self, data: Tensor, hx: Optional[Tensor], weights: list[Tensor]) -> None:
        """torch.nn's checks of a padded (batched) call, then ATen's, in their order and words."""
        # torch.nn builds a zero hx when none is given; the op takes None for it (no allocation),
        # so the hidden-size check, which a built zero hx always passes, is skipped then.
        if hx is None:
            self.check_input(data, None)
        else:
            self.check_forward_args(data, hx, None)
        _check_padded(data, hx, weights, self.bias, 1 if self.batch_first else 0)

    def _forward_packed(
        self, input: PackedSequence, hx: Optional[Tensor], weights: list[Tensor]
    ) -> tuple[PackedSequence, Tensor]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None:
            # Each batch entry of hx belongs to the sequence the user passed at that position.
            hx = self.permute_hidden(hx, sorted_indices)
        compiling = torch.compiler.is_compiling()
        plain = not compiling and _plain_arg_types(self)
        # One op call first, its checks standing for torch.nn's (as for padded input): what it
        # refuses (an error, or rows past sum(batch_sizes), which ATen ignores) or runs on meta
        # tensors (a mix of meta and real ones passes the op, not always torch.nn) takes torch.nn's
        # and ATen's checks below, in their order, which raise their error or handle the case.
        ret = self._run_op(data, batch_sizes, hx, weights) if plain else None
        if ret is None or ret[0].is_meta:
            data = self._check_packed_call(data, batch_sizes, hx, weights, compiling)
            if plain:  # on the rows ATen reads
                ret = self._run_op(data, batch_sizes, hx, weights)
        output, hidden = ret if ret is not None else self._functional(data, batch_sizes, hx, weights)
        return (
            PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
            self.permute_hidden(hidden, unsorted_indices),
        )

    def _run_op(
        self, data: Tensor, batch_sizes: Optional[Tensor], hx: Optional[Tensor], weights: list[Tensor]
    ) -> Optional[tuple[Tensor, Tensor]]:
        """The whole stack as one op call (rnnext::rnn through the binding), or None where the op
        refuses the call or does not take it."""
        return _call(
            _C.rnn, data, batch_sizes, hx, weights, self.bias, self.num_layers, self.dropout,
            self.training, self.bidirectional, self.batch_first, self.mode == "RNN_RELU",
        )  # fmt: skip

    def _check_packed_call(
        self, data: Tensor, batch_sizes: Tensor, hx: Optional[Tensor], weights: list[Tensor],
        compiling: bool,
    ) -> Tensor:
        """torch.nn's checks of a packed call, then ATen's, in their order and words; returns the
        rows ATen reads."""
        if hx is None:
            self.check_input(data, batch_sizes)
        elif compiling:
            # The batch, batch_sizes[0], is a data-dependent value under tracing: check it at run
            # time (torch._check) rather than guard on it.
            self.check_input(data, batch_sizes)
            expected = self.get_expected_hidden_size(data, batch_sizes)
            if hx.dim() != 3 or hx.size(0) != expected[0] or hx.size(2) != expected[2]:
                raise RuntimeError(f"Expected hidden size {expected}, got {list(hx.size())}")
            torch._check(hx.size(1) == expected[1])
        else:
            self.check_forward_args(data, hx, batch_sizes)
        return _check_packed(data, batch_sizes, hx, weights, self.bias)


def _mismatch(input: Tensor, hx: Optional[Tensor], weight: Tensor) -> bool:
    """Whether input, hx and the weights disagree on dtype or device (weights agree among
    themselves: a module's parameters share one dtype and device)."""
    if weight.dtype != input.dtype or weight.device != input.device:
        return True
    return hx is not None and (hx.dtype != input.dtype or hx.device != input.device)


def _raise_as_aten(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    """Runs ``linear(x, weight, bias)``, the ATen computation that torch.nn's RNN would run at this
    point, only to let the installed torch raise its own error (dtype or device mismatch)."""
    with torch.no_grad():
        F.linear(x, weight, bias)


def _check_padded(
    data: Tensor, hx: Optional[Tensor], weights: list[Tensor], bias: bool, time_dim: int
) -> None:
    """The checks ATen's rnn_tanh / rnn_relu make on padded input, in its order and words."""
    if _mismatch(data, hx, weights[0]):
        device = data.device
        # check_attributes: every hidden, then every parameter.
        if hx is not None and hx.device != device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{device} and hidden tensor at {hx.device}"
            )
        for w in weights:
            if w.device != device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input tensor at "
                    f"{device} and parameter tensor at {w.device}"
                )
    if data.size(time_dim) == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if hx is not None and hx.dtype != data.dtype:
        # The first recurrent step computes linear(hx[0], w_hh, b_hh).
        _raise_as_aten(hx[0], weights[1], weights[3] if bias else None)


def _check_packed(
    data: Tensor, batch_sizes: Tensor, hx: Optional[Tensor], weights: list[Tensor], bias: bool
) -> Tensor:
    """ATen's packed rnn_tanh / rnn_relu makes no upfront checks: reproduce the errors of its first
    operations, and its tolerance of extra rows in ``data`` (it reads only sum(batch_sizes) rows).
    Returns the rows to use."""
    if _mismatch(data, hx, weights[0]):
        _raise_as_aten(data, weights[0], weights[2] if bias else None)  # linear_ih over all rows
        if hx is not None:
            _raise_as_aten(hx[0], weights[1], weights[3] if bias else None)  # the first step
    if torch.compiler.is_compiling():
        return data  # the row count is data-dependent there; the op checks it
    rows = int(batch_sizes.sum())
    if data.size(0) != rows:
        if data.size(0) > rows:
            return data[:rows]
        offset = 0
        for size in batch_sizes.tolist():  # ATen's per-step narrow raises at the first short step
            data.narrow(0, offset, size)
            offset += size
    return data
