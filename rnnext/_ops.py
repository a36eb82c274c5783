"""Python side of the op boundary: fake (meta) kernels and autograd for ``torch.ops.rnnext``.

The schemas live in ``csrc/ops.cpp`` and their semantics in ``csrc/OPS.md``. Nothing here computes:
the forward and the backward are both fused C++/CUDA ops.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch._C._functorch import peek_interpreter_stack as _functorch_transform

from . import _C  # noqa: F401  (loading the library registers the ops)

__all__ = ["rnn_forward"]

_forward = torch.ops.rnnext.rnn_forward.default
_backward = torch.ops.rnnext.rnn_backward.default


def rnn_forward(
    input: Tensor,
    batch_sizes: Optional[Tensor],
    hx: Optional[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    relu: bool,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """One layer, one direction: ``(output, h_n)``. See csrc/OPS.md for shapes and semantics."""
    if not torch.compiler.is_compiling() and _functorch_transform() is not None:
        # Under torch.func transforms: functorch refuses the C++ autograd node that CPU calls use.
        return _RnnForward.apply(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)
    return _forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)


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


def _setup_context(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse = inputs
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, output[0])
    ctx.relu = relu
    ctx.reverse = reverse


def _backward_formula(ctx, grad_output, grad_h_n, backward=_backward):
    input, batch_sizes, hx, w_ih, w_hh, output = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[2], need[3], need[4], need[5] or need[6]]
    if grad_output is None:
        grad_output = torch.zeros_like(output)
    grads = backward(
        grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, output, ctx.relu, ctx.reverse, mask
    )
    g_input, g_hx, g_w_ih, g_w_hh, g_bias = (g if m else None for g, m in zip(grads, mask))
    return (
        g_input,
        None,
        g_hx,
        g_w_ih,
        g_w_hh,
        g_bias if need[5] else None,
        g_bias if need[6] else None,
        None,
        None,
    )


torch.library.register_autograd("rnnext::rnn_forward", _backward_formula, setup_context=_setup_context)


def _vmap_by_loop(apply):
    """A vmap rule that runs ``apply`` once per vmapped entry and stacks the results: correct for any
    in_dims (the op has no batching rule of its own), one call per entry."""

    def vmap(info, in_dims, *args):
        per_entry = []
        for i in range(info.batch_size):
            per_entry.append(
                apply(*(a.select(d, i) if isinstance(d, int) else a for a, d in zip(args, in_dims)))
            )
        outputs = tuple(torch.stack(parts, 0) for parts in zip(*per_entry))
        return outputs, (0,) * len(outputs)

    return staticmethod(vmap)


class _RnnForward(torch.autograd.Function):
    """rnn_forward with the autograd above as a Python autograd.Function: what torch.func.grad /
    vjp / jacrev run (functorch rejects C++ torch::autograd::Function nodes, and on the CPU the op's
    autograd kernel is one, csrc/cpu/autograd_cpu.cpp). Same saved tensors, same fused backward."""

    @staticmethod
    def forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
        with torch._C._AutoDispatchBelowAutograd():
            return _forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse)

    setup_context = staticmethod(_setup_context)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        return _backward_formula(ctx, grad_output, grad_h_n, _RnnBackward.apply)

    vmap = _vmap_by_loop(lambda *a: _RnnForward.apply(*a))


class _RnnBackward(torch.autograd.Function):
    """rnn_backward for _RnnForward: torch.func records it (its transforms differentiate with
    create_graph), and, like the op's own registration, its derivative raises."""

    @staticmethod
    def forward(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return _backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, *grads):
        return _double_backward(ctx, *grads)

    vmap = _vmap_by_loop(lambda *a: _RnnBackward.apply(*a))




def _double_backward(ctx, *grads: Tensor) -> tuple[Optional[Tensor], ...]:
    """The derivative of rnn_backward, which rnnext does not implement: raises when reached."""
    raise RuntimeError(
        "rnnext: double backward (gradients of gradients) is not supported; "
        "use torch.nn.RNN / torch.nn.RNNCell where second derivatives are needed"
    )


# rnn_backward's own autograd (its derivative, for a second backward) is C++: csrc/composite.cpp.
