"""rnnext: fused Elman-RNN kernels as a drop-in for ``torch.nn.RNN`` and ``torch.nn.RNNCell``.

- :class:`rnnext.RNN`, :class:`rnnext.RNNCell`: ``torch.nn``'s API, numbers and errors.
- :func:`rnnext.convert`: swap the ``torch.nn`` modules of an existing model in place.
- :mod:`rnnext.functional`: the same computation without modules (``rnn``, ``rnn_cell``).
"""

from . import _ops, functional  # noqa: F401  (_ops: loads rnnext._C, registers fake + autograd)
from . import onnx as _onnx  # noqa: F401  (teaches torch.onnx's exporters rnnext's ops)
from .convert import convert
from .modules import RNN, RNNCell

__all__ = ["RNN", "RNNCell", "convert", "functional"]
__version__ = "0.1.0"
