"""Python side of the op boundary: the fake (meta) kernels and vmap rules of ``torch.ops.rnnext``.

The schemas live in ``csrc/ops.cpp`` and their semantics in ``csrc/OPS.md``. Nothing here computes
or differentiates: the per-layer forward and backward are fused C++/CUDA ops; the stack
``rnnext::rnn`` and the step ``rnnext::rnn_cell`` are C++ composites over them
(``csrc/stack.cpp``), which need no fake kernel (they decompose into ``rnn_forward`` calls); and
autograd is one C++ node for every device (``csrc/autograd.cpp``), torch.func included.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loading the library registers the ops)

__all__ = ["rnn", "rnn_cell", "rnn_forward", "rnn_backward"]

#: The ops' overloads, called directly (one Python frame less than ``torch.ops.rnnext.rnn``).
rnn = torch.ops.rnnext.rnn.default
rnn_cell = torch.ops.rnnext.rnn_cell.default
rnn_forward = torch.ops.rnnext.rnn_forward.default
rnn_backward = torch.ops.rnnext.rnn_backward.default


def _batch(input: Tensor, batch_sizes: Optional[Tensor], hx: Optional[Tensor]):
    if hx is not None:
        return hx.shape[0]
    if batch_sizes is None:
        return input.shape[1]
    if type(batch_sizes) is torch.Tensor:
        # A real CPU tensor (a call on meta tensors, not a trace): read the batch from it.
        return int(batch_sizes[0]) if batch_sizes.numel() > 0 else 0
    # The batch is batch_sizes[0], a value: data-dependent under tracing.
    return torch.library.get_ctx().new_dynamic_size()


_META = torch.device("meta")


def _output_device(input: Tensor, batch_sizes: Optional[Tensor], **tensors: Optional[Tensor]) -> torch.device:
    """The device of the outputs of a call that reached the fake kernel, after the device checks.

    The Meta dispatch key wins over CPU/CUDA, so a call mixing meta and real tensors lands here
    rather than in the C++ checks. Such a call returns meta tensors (as ATen's ``mm`` / ``linear``
    of a meta and a CPU tensor do, so ``torch.nn.RNN(bias=False)`` on meta data gives meta
    outputs): never uninitialized real tensors. Any other mix of devices (CPU and CUDA, two GPUs:
    seen here under ``FakeTensorMode``) raises, as the C++ glue does on real tensors.
    """
    if batch_sizes is not None and batch_sizes.device.type != "cpu":
        raise RuntimeError(
            f"rnnext: batch_sizes must be a 1-D int64 CPU tensor, got one on {batch_sizes.device}"
        )
    present = [(name, t) for name, t in tensors.items() if t is not None]
    if input.device.type == "meta" or any(t.device.type == "meta" for _, t in present):
        return _META
    for name, t in present:
        if t.device != input.device:
            raise RuntimeError(
                f"rnnext: {name} is on {t.device} but input is on {input.device}; "
                "all tensors must be on one device"
            )
    return input.device


@torch.library.register_fake("rnnext::rnn_forward")
def _forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
    device = _output_device(input, batch_sizes, hx=hx, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    hidden = w_hh.shape[0]
    if batch_sizes is None:
        torch._check(input.dim() == 3, lambda: "rnnext: input must be 3-D [time, batch, input]")
        out = input.new_empty((input.shape[0], input.shape[1], hidden), device=device)
    else:
        torch._check(input.dim() == 2, lambda: "rnnext: packed input must be 2-D [rows, input]")
        out = input.new_empty((input.shape[0], hidden), device=device)
    return out, input.new_empty((_batch(input, batch_sizes, hx), hidden), device=device)


@torch.library.register_fake("rnnext::rnn_backward")
def _backward_fake(grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, output, relu, reverse, mask):
    device = _output_device(
        input, batch_sizes, grad_output=grad_output, grad_h_n=grad_h_n, hx=hx, w_ih=w_ih, w_hh=w_hh,
        output=output,
    )  # fmt: skip
    hidden, features = w_ih.shape

    def new(shape, wanted: bool) -> Tensor:
        return input.new_empty(shape if wanted else (0,), device=device)

    return (
        new(input.shape, mask[0]),
        # Only when wanted: for packed input without hx the batch is a new (unbacked) symbol.
        new((_batch(input, batch_sizes, hx), hidden) if mask[1] else (0,), mask[1]),
        new((hidden, features), mask[2]),
        new((hidden, hidden), mask[3]),
        new((hidden,), mask[4]),
    )


def _vmap_by_loop(op):
    """A vmap rule that runs ``op`` once per vmapped entry and stacks the results: correct for any
    in_dims (the ops have no batching rule of their own). functorch's own fallback does the same
    with a performance warning on every call; rnnext.rnn decomposes into rnn_forward under vmap
    (csrc/stack.cpp)."""

    def rule(info, in_dims, *args):
        per_entry = [
            op(*(a.select(d, i) if isinstance(d, int) else a for a, d in zip(args, in_dims)))
            for i in range(info.batch_size)
        ]
        outputs = tuple(torch.stack(parts, 0) for parts in zip(*per_entry))
        return outputs, (0,) * len(outputs)

    return rule


torch.library.register_vmap("rnnext::rnn_forward", _vmap_by_loop(rnn_forward))
torch.library.register_vmap("rnnext::rnn_backward", _vmap_by_loop(rnn_backward))
