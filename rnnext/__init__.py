"""rnnext: fused Elman-RNN kernels as a drop-in for ``torch.nn.RNN`` and ``torch.nn.RNNCell``."""

from . import _ops, functional
from .modules import RNN, RNNCell

__all__ = ["RNN", "RNNCell", "functional"]
__version__ = "0.1.0"
