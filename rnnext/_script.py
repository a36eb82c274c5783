"""TorchScript forms of the modules' forward: what ``torch.jit.script`` compiles.

:class:`rnnext.RNN` and :class:`rnnext.RNNCell` derive from these mixins; their ``forward`` starts
with ``if torch.jit.is_scripting(): ...`` calling the methods below, and the TorchScript compiler
skips everything after that branch (the eager path, which is not scriptable). Each method is
``torch.nn``'s own scripted forward (its checks are ``RNNBase``'s scriptable methods) with the
computation replaced by one call of rnnext's registered op, so a scripted module saves and loads
(``torch.jit.save`` / ``torch.jit.load``) wherever rnnext is imported, which registers the ops.

This file is written without ``from __future__ import annotations``: TorchScript reads the
annotations of the methods it compiles.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

__all__: List[str] = []


class ScriptRNN:
    """TorchScript forward of :class:`rnnext.RNN` (the attributes are ``torch.nn.RNNBase``'s)."""

    def _batched(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], int]:
        """torch.nn's unbatched handling of a padded call, with its checks of the dims (the eager
        forward and the TorchScript one alike): ``(input, hx, squeeze)``, input 3-D and hx 3-D or
        None, ``squeeze`` the batch dim to take out of the output again (-1: the call was batched)."""
        dim = input.dim()
        if dim != 2 and dim != 3:
            raise ValueError(f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead")
        if dim == 3:
            if hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )
            return input, hx, -1
        batch_dim = 0 if self.batch_first else 1
        if hx is not None:
            if hx.dim() != 2:
                raise RuntimeError(
                    f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                )
            hx = hx.unsqueeze(1)
        return input.unsqueeze(batch_dim), hx, batch_dim

    def _script_forward_padded(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        input, hx, squeeze = self._batched(input, hx)
        if hx is None:
            self.check_input(input, None)
        else:
            self.check_forward_args(input, hx, None)
        output, hidden = torch.ops.rnnext.rnn(
            input, None, hx, self._flat_weights, self.bias, self.num_layers, float(self.dropout),
            self.training, self.bidirectional, self.batch_first, self.mode == "RNN_RELU",
        )  # fmt: skip
        if squeeze >= 0:
            return output.squeeze(squeeze), hidden.squeeze(1)
        return output, hidden

    def _script_forward_packed(
        self, input: PackedSequence, hx: Optional[Tensor]
    ) -> Tuple[PackedSequence, Tensor]:
        data = input.data
        batch_sizes = input.batch_sizes
        if hx is not None:
            hx = self.permute_hidden(hx, input.sorted_indices)
            self.check_forward_args(data, hx, batch_sizes)
        else:
            self.check_input(data, batch_sizes)
        output, hidden = torch.ops.rnnext.rnn(
            data, batch_sizes, hx, self._flat_weights, self.bias, self.num_layers, float(self.dropout),
            self.training, self.bidirectional, self.batch_first, self.mode == "RNN_RELU",
        )  # fmt: skip
        return (
            PackedSequence(output, batch_sizes, input.sorted_indices, input.unsorted_indices),
            self.permute_hidden(hidden, input.unsorted_indices),
        )


class ScriptRNNCell:
    """TorchScript forward of :class:`rnnext.RNNCell` (the attributes are ``torch.nn.RNNCell``'s)."""

    def _script_forward(self, input: Tensor, hx: Optional[Tensor]) -> Tensor:
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError(f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() != 1 and hx.dim() != 2:
            raise ValueError(f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is not None and not is_batched:
            hx = hx.unsqueeze(0)
        if self.nonlinearity == "tanh":
            relu = False
        elif self.nonlinearity == "relu":
            relu = True
        else:
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        h = torch.ops.rnnext.rnn_cell(
            input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, relu
        )
        return h if is_batched else h.squeeze(0)
