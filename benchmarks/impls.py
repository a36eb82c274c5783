"""The implementations compared, built on the same weights, and the inputs they run on.

Every implementation is a :class:`Impl`: a ``forward(inp, h0) -> (output, h_n)`` over one case's inputs
(``output`` as a plain tensor: a packed output contributes its ``data``) and the parameters its
gradients are taken of, in ``torch.nn.RNN``'s order. The modes (:func:`make_call`) wrap it:

================ ================================================================================
``inference``    ``with torch.no_grad(): forward(inp, h0)``
``training``     ``forward`` then ``torch.autograd.grad`` of (output, h_n) with fixed random output
                 gradients, for the input, h0 and every parameter (no ``.grad`` accumulation, so
                 every implementation does the same work on every call)
================ ================================================================================

Implementations (``impl`` in the result rows):

=========================== =====================================================================
``torch.nn.RNN``            the baseline (ATen on CPU, cuDNN on CUDA)
``rnnext.RNN``              rnnext's fused ops
``torch.nn.RNNCell loop``   ``for t in range(T): h = cell(x[t], h)`` then ``torch.stack``
``rnnext.RNNCell loop``     the same loop over :class:`rnnext.RNNCell`
``rnnext.RNN fallback``     CUDA only: rnnext forced onto its per-step GEMM path
                            (``RNNEXT_CUDA_PATH=fallback`` around each call), which shows what the
                            persistent kernels buy
``torch.compile(nn.RNN)``   CPU only, ``torch._dynamo.config.allow_rnn = True``, ``dynamic=False``
``onnxruntime``             inference only, CPU only: ``torch.onnx.export`` (TorchScript exporter,
                            which emits ONNX's fused ``RNN`` operator) run by ONNX Runtime with
                            ``intra_op_num_threads`` = the benchmark's threads; numpy in and out;
                            timed after the others, alone (its threads spin after each run)
=========================== =====================================================================
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnext

from .cases import Case, lengths_for, tokens

__all__ = [
    "Impl",
    "Inputs",
    "Skip",
    "RNN_IMPLS",
    "CELL_IMPLS",
    "make_inputs",
    "make_reference",
    "build_impls",
    "make_call",
    "reference_result",
    "compare",
]

BASELINE = "torch.nn.RNN"
RNN_IMPLS = ("torch.nn.RNN", "rnnext.RNN")
CELL_IMPLS = ("torch.nn.RNNCell loop", "rnnext.RNNCell loop")
FALLBACK_IMPL = "rnnext.RNN fallback"
COMPILE_IMPL = "torch.compile(nn.RNN)"
ORT_IMPL = "onnxruntime"


class Skip(Exception):
    """An implementation that does not run here: the reason goes into the results' notes."""


@dataclass
class Inputs:
    """One case's inputs on one device/dtype; ``inp`` is a tensor ``[T, B, I]`` or a PackedSequence."""

    inp: Any
    h0: Tensor
    grad_out: Tensor  # fixed output gradients for training mode, shape of the output tensor/data
    grad_h: Tensor

    def leaves(self) -> list[Tensor]:
        """The input tensors gradients are taken of: the input (or packed data) and h0."""
        x = self.inp.data if isinstance(self.inp, PackedSequence) else self.inp
        return [x, self.h0]


@dataclass
class Impl:
    """An implementation over a case's inputs."""

    name: str
    forward: Callable[[Any, Tensor], tuple[Tensor, Tensor]]
    params: list[Tensor]
    modes: tuple[str, ...] = ("inference", "training")
    info: dict = field(default_factory=dict)  # e.g. compile_s, exporter
    # Timed after the others, on its own (timing.SETTLE_S after it): an implementation whose idle
    # worker threads keep spinning after each call and would take a core from the next block.
    alone: bool = False


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Inputs:
    """Fresh random inputs (seeded). Variable-length cases zero the padding past each length."""
    g = torch.Generator().manual_seed(seed)
    D, L, H = case.directions, case.layers, case.H
    x = torch.randn(case.T, case.B, case.I, generator=g, dtype=torch.float64)
    h0 = torch.randn(L * D, case.B, H, generator=g, dtype=torch.float64)
    lengths = lengths_for(case)
    if lengths is not None:
        mask = torch.arange(case.T)[:, None] < torch.tensor(lengths)[None, :]
        x = x * mask[:, :, None]
    x = x.to(device=device, dtype=dtype)
    h0 = h0.to(device=device, dtype=dtype).requires_grad_()
    if case.packed:
        p = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        inp: Any = PackedSequence(
            p.data.detach().requires_grad_(), p.batch_sizes, p.sorted_indices, p.unsorted_indices
        )
        out_shape: tuple[int, ...] = (p.data.size(0), D * H)
    else:
        inp = x.requires_grad_()
        out_shape = (case.T, case.B, D * H)
    grad_out = torch.randn(out_shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    grad_h = torch.randn(L * D, case.B, H, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return Inputs(inp, h0, grad_out, grad_h)


def make_reference(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0) -> nn.RNN:
    """The baseline ``torch.nn.RNN`` with torch.nn's default initialisation (seeded)."""
    torch.manual_seed(seed)
    ref = nn.RNN(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
    return ref.to(device=device, dtype=dtype)


def _rnn_forward(module: Callable) -> Callable[[Any, Tensor], tuple[Tensor, Tensor]]:
    def forward(inp: Any, h0: Tensor) -> tuple[Tensor, Tensor]:
        out, h = module(inp, h0)
        return (out.data if isinstance(out, PackedSequence) else out), h

    return forward


def _cell_forward(cell: nn.RNNCell) -> Callable[[Any, Tensor], tuple[Tensor, Tensor]]:
    def forward(x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        h = h0[0]
        outs = []
        for t in range(x.size(0)):
            h = cell(x[t], h)
            outs.append(h)
        return torch.stack(outs), h.unsqueeze(0)

    return forward


def _cell_from(cls: type, ref: nn.RNN) -> nn.RNNCell:
    w = ref.weight_ih_l0
    cell = cls(ref.input_size, ref.hidden_size).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(ref, name + "_l0"))
    return cell


def _compiled(ref: nn.RNN, case: Case, max_steps: int) -> Impl:
    if ref.weight_ih_l0.device.type != "cpu":
        raise Skip("CPU only in this suite")
    steps = case.T * case.layers * case.directions
    if steps > max_steps:
        raise Skip(
            f"not compiled: Inductor unrolls the recurrence (T*layers*directions = {steps} steps > "
            f"--compile-max-steps {max_steps}) and builds C++ kernels for it, minutes per case here"
        )
    torch._dynamo.config.allow_rnn = True
    torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no cross-case reuse
    compiled = torch.compile(ref, dynamic=False)
    return Impl(COMPILE_IMPL, _rnn_forward(compiled), list(ref.parameters()))


def _onnxruntime(ref: nn.RNN, case: Case, inputs: Inputs, threads: int) -> Impl:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install onnxruntime to include it)") from None
    if case.packed:
        raise Skip("PackedSequence input has no ONNX export")
    if ref.weight_ih_l0.device.type != "cpu":
        raise Skip("CPU only in this suite")
    x = inputs.inp.detach()
    h0 = inputs.h0.detach()
    buf = io.BytesIO()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                ref, (x, h0), buf, dynamo=False, input_names=["x", "h0"], output_names=["y", "h_n"]
            )
    except Exception as e:  # the exporter's failures are many and version-dependent
        raise Skip(f"torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise Skip(f"onnxruntime could not load the model: {str(e).splitlines()[0][:120]}") from None
    export_s = time.perf_counter() - t0

    def forward(inp: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        y, hn = sess.run(None, {"x": inp.detach().numpy(), "h0": h.detach().numpy()})
        return torch.from_numpy(y), torch.from_numpy(hn)

    # ONNX Runtime's intra-op threads spin after each run (its default, its fastest setting: medium
    # 4.8 ms against 5.6 without spinning), ~30 ms of CPU; an rnnext block right after one took
    # 1.10 ms per call against 0.48 (benchmarks/NOTES.md section 30): so it is timed alone.
    return Impl(ORT_IMPL, forward, [], modes=("inference",), alone=True,
                info={"export_s": round(export_s, 2), "onnxruntime": ort.__version__})


CUDA_PATH_ENV = "RNNEXT_CUDA_PATH"


@contextlib.contextmanager
def cuda_path(value: Optional[str]):
    """``RNNEXT_CUDA_PATH`` (read by the CUDA glue at every call) set to ``value`` inside
    (None: unset), restored after."""
    old = os.environ.get(CUDA_PATH_ENV)
    if value is None:
        os.environ.pop(CUDA_PATH_ENV, None)
    else:
        os.environ[CUDA_PATH_ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CUDA_PATH_ENV, None)
        else:
            os.environ[CUDA_PATH_ENV] = old


def _forced(forward: Callable[[Any, Tensor], tuple[Tensor, Tensor]],
            path: str) -> Callable[[Any, Tensor], tuple[Tensor, Tensor]]:
    """``forward`` with ``RNNEXT_CUDA_PATH=path``; in training the backward runs inside it too (the
    training call is forward then autograd.grad, both under the one setting: see make_call)."""

    def run(inp: Any, h0: Tensor) -> tuple[Tensor, Tensor]:
        with cuda_path(path):
            return forward(inp, h0)

    run.cuda_path = path  # type: ignore[attr-defined]
    return run


def build_impls(
    case: Case,
    ref: nn.RNN,
    inputs: Inputs,
    *,
    threads: int,
    compile_: bool,
    onnx: bool,
    compile_max_steps: int = 20,
    cuda_fallback: bool = True,
) -> tuple[list[Impl], list[tuple[str, str]]]:
    """All implementations for ``case``, on ``ref``'s weights; returns (impls, [(impl, skip reason)])."""
    device = ref.weight_ih_l0.device
    cuda = device.type == "cuda"
    info = {"cudnn": bool(torch.backends.cudnn.is_acceptable(inputs.h0.detach()))} if cuda else {}
    impls = [Impl(BASELINE, _rnn_forward(ref), list(ref.parameters()), info=info)]
    skipped: list[tuple[str, str]] = []
    new = rnnext.RNN(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional)
    new = new.to(device=device, dtype=ref.weight_ih_l0.dtype)
    new.load_state_dict(ref.state_dict())
    impls.append(Impl("rnnext.RNN", _rnn_forward(new), list(new.parameters())))
    if device.type == "cuda" and cuda_fallback:
        impls.append(Impl(FALLBACK_IMPL, _forced(_rnn_forward(new), "fallback"), list(new.parameters())))
    if case.cells:
        for name, cls in zip(CELL_IMPLS, (nn.RNNCell, rnnext.RNNCell)):
            cell = _cell_from(cls, ref)
            impls.append(Impl(name, _cell_forward(cell), list(cell.parameters())))
    extras: list[tuple[str, bool, Callable[[], Impl]]] = [
        (COMPILE_IMPL, compile_, lambda: _compiled(ref, case, compile_max_steps)),
        (ORT_IMPL, onnx, lambda: _onnxruntime(ref, case, inputs, threads)),
    ]
    for name, enabled, build in extras:
        if not enabled:
            skipped.append((name, "disabled by a command-line flag"))
            continue
        try:
            impls.append(build())
        except Skip as s:
            skipped.append((name, str(s)))
    return impls, skipped


def make_call(impl: Impl, inputs: Inputs, mode: str) -> Callable[[], Any]:
    """A no-argument callable that runs ``impl`` once in ``mode`` and returns what it computed."""
    fwd, inp, h0 = impl.forward, inputs.inp, inputs.h0
    if mode == "inference":

        def infer() -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                return fwd(inp, h0)

        return infer
    leaves = inputs.leaves() + impl.params
    grads = [inputs.grad_out, inputs.grad_h]
    forced = getattr(fwd, "cuda_path", None)

    def train() -> tuple[Tensor, ...]:
        with cuda_path(forced) if forced is not None else contextlib.nullcontext():
            out, h = fwd(inp, h0)
            return torch.autograd.grad([out, h], leaves, grads)

    return train


def reference_result(impls: list[Impl], inputs: Inputs, mode: str) -> tuple[Tensor, ...]:
    """The baseline's outputs (inference) or gradients (training), the values others must match."""
    return tuple(make_call(impls[0], inputs, mode)())


def tolerance(dtype: torch.dtype, mode: str, device: Optional[torch.device] = None) -> float:
    """Largest accepted ``max|a - b| / max(1, max|ref|)`` per tensor (gradients sum over T*B terms).

    On CUDA, torch.nn.RNN is cuDNN, which runs float32 in TF32 when ``torch.backends.cudnn.allow_tf32``
    (the default; rnnext never does): ~1e-3 apart in the forward on an H100. bfloat16 / float16 hold
    8 / 11 significant bits; both sides round differently (~1e-2 apart on an H100 in bfloat16)."""
    train = mode == "training"
    cuda = device is not None and device.type == "cuda"
    if dtype == torch.float64:
        return 1e-9 if train else 1e-10
    if dtype == torch.bfloat16:
        return 1e-1 if train else 5e-2
    if dtype == torch.float16:
        return 5e-2 if train else 1e-2
    if cuda and torch.backends.cudnn.allow_tf32:
        return 3e-2 if train else 5e-3
    return 1e-4 if train else 2e-5


def compare(got: tuple[Tensor, ...], want: tuple[Tensor, ...]) -> float:
    """The largest scaled error over the tensors (see :func:`tolerance`); inf on a shape mismatch."""
    worst = 0.0
    if len(got) != len(want):
        return float("inf")
    for a, b in zip(got, want):
        a = torch.as_tensor(a).to(device=b.device, dtype=b.dtype)
        if a.shape != b.shape:
            return float("inf")
        if b.numel() == 0:
            continue
        scale = max(1.0, b.abs().max().item())
        err = (a - b).abs().max().item() / scale
        if err != err:  # NaN
            return float("inf")
        worst = max(worst, err)
    return worst


def cpu_isa() -> str:
    """The ISA rnnext's CPU kernels dispatch to: ``avx512``, ``avx2`` or ``base`` (portable scalar code),
    as ``rnnext._C`` reports it (csrc/cpu/kernels.cpp; ``RNNEXT_CPU_ISA`` may lower it)."""
    from rnnext import _C

    return _C._cpu_isa()


def cpu_planned_path(dtype: torch.dtype, T: int, B: int, I: int, H: int, packed: bool,  # noqa: E741
                     backward: bool) -> str:
    """The path name rnnext's CPU planner picks for one layer of this shape at the current thread
    count (``rnnext._C._cpu_plan`` returns ``"name: reason"``; ``RNNEXT_CPU_PATH`` may force it)."""
    from rnnext import _C

    return _C._cpu_plan(T, B, I, H, dtype, packed, backward).split(":", 1)[0]


def cuda_planned_path(dtype: torch.dtype, B: int, H: int, backward: bool,
                      device: Optional[torch.device] = None) -> Optional[str]:
    """The recurrence path rnnext's CUDA planner picks for batch ``B`` (packed: the first batch size)
    and hidden size ``H`` (``rnnext._C._cuda_path``, with ``RNNEXT_CUDA_PATH`` as it is now), or None
    in a CPU-only build of the extension, which has no planner to ask."""
    from rnnext import _C

    ask = getattr(_C, "_cuda_path", None)
    if ask is None:
        return None
    index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    return ask(str(dtype).replace("torch.", ""), B, H, backward, index)


def path_of(impl: str, case: Case, dtype: torch.dtype, device: torch.device, mode: str) -> Optional[str]:
    """The path an rnnext row ran, as the extension reports it; None for the other implementations.

    CPU: the ISA of the kernels and the CPU planner's path (``cpu::make_plan`` through
    ``rnnext._C._cpu_plan``, at the run's thread count) for the first layer's shape. CUDA: the
    planner's choice for the case's batch and hidden size (every layer and direction of a case has
    the same). Both: forward, and in training ``fwd/bwd`` where the backward's differs;
    ``rnnext.RNN fallback`` under its forced setting; ``RNNCell loop`` rows plan one step. CPU
    inference of a bidirectional case whose first layer runs its two directions at once, one
    thread each (``rnnext._C._cpu_directions_at_once``), ends in `` 2dir``."""
    if not impl.startswith("rnnext."):
        return None
    if device.type == "cpu":
        T = 1 if impl in CELL_IMPLS else case.T
        shape = (dtype, T, case.B, case.I, case.H, case.packed)
        fwd = cpu_planned_path(*shape, False)
        bwd = cpu_planned_path(*shape, True) if mode == "training" else fwd
        path = f"{cpu_isa()} {fwd if bwd == fwd else f'{fwd}/{bwd}'}"
        # A bidirectional layer without a recorded graph may run its directions at once (stack.cpp).
        if (case.bidirectional and mode == "inference" and impl not in CELL_IMPLS
                and rnnext._C._cpu_directions_at_once(tokens(case), case.I, case.H)):
            path += " 2dir"
        return path
    # Packed: the first batch size, which is B (every sequence has at least one step).
    with cuda_path("fallback" if impl == FALLBACK_IMPL else os.environ.get(CUDA_PATH_ENV)):
        fwd = cuda_planned_path(dtype, case.B, case.H, False, device)
        bwd = cuda_planned_path(dtype, case.B, case.H, True, device) if mode == "training" else fwd
    if fwd is None:
        return None
    return fwd if bwd == fwd else f"{fwd}/{bwd}"


def cuda_environment() -> dict:
    """The GPU and the math settings torch.nn's cuDNN runs under (recorded with the results)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "gpu": props.name, "sms": props.multi_processor_count,
        "smem_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def device_of(impls: list[Impl]) -> Optional[torch.device]:
    """The device the baseline's parameters live on."""
    return impls[0].params[0].device if impls and impls[0].params else None
