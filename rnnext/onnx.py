r"""ONNX export of models holding rnnext: standard ONNX, no custom domain, no rnnext at inference.

Both ``torch.onnx.export`` exporters learn rnnext's ops when rnnext is imported, so a user's own
export call works unchanged:

- ``dynamo=False`` (the TorchScript-based exporter): symbolic functions for ``rnnext::rnn`` (the
  whole stack) and ``rnnext::rnn_forward`` (one layer, one direction), registered with
  ``torch.onnx.register_custom_op_symbolic``.
- ``dynamo=True``: onnxscript translations of the same ops, registered in torch's torchlib registry
  (``onnx_impl``; ``ONNXRegistry.from_torchlib`` reads it at every export). ``custom_translation_table``
  is a per-call argument, and a user's call should not need it.

Each exporter's registration runs when that exporter's module is first imported (an import hook;
at once if it already is), so importing rnnext imports neither ``torch.onnx`` nor onnxscript.

What the ops become:

====================================== ========================================================
``rnnext::rnn`` (stack)                 one ONNX ``RNN`` per layer (``direction`` forward or
                                        bidirectional), Transpose/Reshape from ONNX's
                                        ``Y [T, D, B, H]`` to ``[T, B, D*H]``, ``initial_h`` the
                                        layer's ``D`` states of ``hx`` (Gather), ``Y_h`` concatenated
``rnnext::rnn_forward``, T > 1 or       one ONNX ``RNN`` (``direction`` forward or reverse)
unknown
``rnnext::rnn_cell``, and               one step in plain ops (what :class:`rnnext.RNNCell` calls):
``rnnext::rnn_forward`` with T = 1      ``act(x W_ih^T + b_ih + h W_hh^T + b_hh)`` with MatMul, Add,
known                                   Tanh / Relu
====================================== ========================================================

ONNX's RNN computes ``H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)`` with ``W [D, H, I]``,
``R [D, H, H]``, ``B [D, 2H] = [Wb, Rb]``: torch's ``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` of each
direction, stacked. Batch and sequence length stay dynamic (ONNX's RNN takes any). Not exported
(a clear error at export): packed sequences (``batch_sizes``) and dropout between layers in training
mode (``torch.onnx.export`` exports in eval mode by default).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

import torch

__all__: list[str] = []

#: The opset the legacy symbolics are registered from (the registry serves every later opset too).
_LEGACY_OPSET = 9
_LEGACY_MODULE = "torch.onnx"
# Its module imports the torchlib registry, which imports it back: hook the outer one.
_DYNAMO_MODULE = "torch.onnx._internal.exporter._registration"


class ExportError(RuntimeError):
    """An rnnext op that ONNX export cannot express (packed input, training-mode dropout)."""


# --- one graph builder per exporter -------------------------------------------------------------


class _Builder:
    """The ONNX graph of one op's export, behind one small interface for both exporters, so each
    translation is written once (``_emit_*`` below)."""

    opset: int

    def op(self, name: str, *inputs: Any, outputs: int = 1, **attrs: Any) -> Any:
        raise NotImplementedError

    def ints(self, values: Sequence[int]) -> Any:
        """A constant int64 tensor."""
        raise NotImplementedError

    def none(self) -> Any:
        """An absent optional input."""
        raise NotImplementedError

    def zeros_like(self, value: Any) -> Any:
        raise NotImplementedError

    def unsqueeze(self, x: Any, axis: int) -> Any:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints([axis]))
        return self.op("Unsqueeze", x, axes=[axis])

    def squeeze(self, x: Any, axis: int) -> Any:
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints([axis]))
        return self.op("Squeeze", x, axes=[axis])


class _LegacyBuilder(_Builder):
    def __init__(self, g: Any) -> None:
        self.g = g
        self.opset = g.opset

    def op(self, name: str, *inputs: Any, outputs: int = 1, **attrs: Any) -> Any:
        kwargs = {}
        for key, value in attrs.items():
            if isinstance(value, str):
                kwargs[key + "_s"] = value
            elif isinstance(value, int):
                kwargs[key + "_i"] = value
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
                kwargs[key + "_s"] = list(value)
            else:
                kwargs[key + "_i"] = list(value)
        return self.g.op(name, *inputs, outputs=outputs, **kwargs)

    def ints(self, values: Sequence[int]) -> Any:
        return self.g.op("Constant", value_t=torch.tensor(list(values), dtype=torch.int64))

    def none(self) -> Any:
        from torch.onnx import symbolic_helper

        return symbolic_helper._optional_input_placeholder_tensor(self.g)

    def zeros_like(self, value: Any) -> Any:
        dtype = value.type().dtype()
        return self.g.op(
            "ConstantOfShape", self.g.op("Shape", value), value_t=torch.zeros(1, dtype=dtype)
        )


class _ScriptBuilder(_Builder):
    def __init__(self) -> None:
        from onnxscript import opset18

        self.ops = opset18
        self.opset = 18

    def op(self, name: str, *inputs: Any, outputs: int = 1, **attrs: Any) -> Any:
        return getattr(self.ops, name)(*inputs, **attrs)

    def ints(self, values: Sequence[int]) -> Any:
        return self.ops.Constant(value_ints=list(values))

    def none(self) -> Any:
        return None

    def zeros_like(self, value: Any) -> Any:
        from onnxscript import ir

        return self.ops.ConstantOfShape(self.ops.Shape(value), value=ir.tensor([0], dtype=value.dtype))


# --- the translations, written once -------------------------------------------------------------


def _static_int(value: Optional[int], what: str) -> int:
    if not isinstance(value, int):
        raise ExportError(f"rnnext: ONNX export needs a static {what}, got {value}")
    return value


def _emit_rnn(
    b: _Builder,
    x: Any,
    h0: Any,
    directions: Sequence[Sequence[Any]],
    hidden: int,
    relu: bool,
    direction: str,
) -> tuple[Any, Any]:
    """One ONNX RNN over x [T, B, I]: ``directions`` holds (w_ih, w_hh, b_ih, b_hh) per direction
    (biases may be None). Returns ONNX's (Y [T, D, B, H], Y_h [D, B, H])."""

    def stacked(tensors: list[Any]) -> Any:
        parts = [b.unsqueeze(t, 0) for t in tensors]
        return parts[0] if len(parts) == 1 else b.op("Concat", *parts, axis=0)

    w = stacked([d[0] for d in directions])
    r = stacked([d[1] for d in directions])
    if all(d[2] is None and d[3] is None for d in directions):
        bias = b.none()
    else:
        rows = []
        for _, _, b_ih, b_hh in directions:
            b_ih = b_ih if b_ih is not None else b.zeros_like(b_hh)
            b_hh = b_hh if b_hh is not None else b.zeros_like(b_ih)
            rows.append(b.op("Concat", b_ih, b_hh, axis=0))
        bias = stacked(rows)
    activation = "Relu" if relu else "Tanh"
    y, y_h = b.op(
        "RNN", x, w, r, bias, b.none(), h0 if h0 is not None else b.none(), outputs=2,
        activations=[activation] * len(directions), direction=direction, hidden_size=hidden,
    )  # fmt: skip
    return y, y_h


def _emit_cell(b: _Builder, x: Any, h: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, relu: bool) -> Any:
    """One step in plain ops: act(x W_ih^T + b_ih + h W_hh^T + b_hh); h None is zeros."""
    pre = b.op("MatMul", x, b.op("Transpose", w_ih, perm=[1, 0]))
    if b_ih is not None:
        pre = b.op("Add", pre, b_ih)
    if h is not None:
        pre = b.op("Add", pre, b.op("MatMul", h, b.op("Transpose", w_hh, perm=[1, 0])))
    if b_hh is not None:
        pre = b.op("Add", pre, b_hh)
    return b.op("Relu" if relu else "Tanh", pre)


def _emit_rnn_forward(
    b: _Builder, input, hx, w_ih, w_hh, b_ih, b_hh, relu: bool, reverse: bool, hidden: int, steps
) -> tuple[Any, Any]:
    """rnnext::rnn_forward on padded input [T, B, I]; ``steps`` is T when known statically."""
    if steps == 1:
        h = _emit_cell(b, b.squeeze(input, 0), hx, w_ih, w_hh, b_ih, b_hh, relu)
        return b.unsqueeze(h, 0), h
    y, y_h = _emit_rnn(
        b, input, b.unsqueeze(hx, 0) if hx is not None else None, [(w_ih, w_hh, b_ih, b_hh)], hidden,
        relu, "reverse" if reverse else "forward",
    )  # fmt: skip
    return b.squeeze(y, 1), b.squeeze(y_h, 0)


def _emit_stack(
    b: _Builder, input, hx, weights: Sequence[Any], has_biases: bool, num_layers: int, dropout: float,
    train: bool, bidirectional: bool, batch_first: bool, relu: bool, hidden: int,
) -> tuple[Any, Any]:  # fmt: skip
    """rnnext::rnn on padded input: one ONNX RNN per layer."""
    if train and dropout != 0 and num_layers > 1:
        raise ExportError(
            "rnnext: ONNX export of an RNN with dropout between layers in training mode is not "
            "supported; export the model in eval mode (torch.onnx.export's default)"
        )
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    x = b.op("Transpose", input, perm=[1, 0, 2]) if batch_first else input
    finals = []
    for layer in range(num_layers):
        directions = []
        for d in range(dirs):
            w = list(weights[(layer * dirs + d) * per : (layer * dirs + d + 1) * per])
            directions.append(w if has_biases else w + [None, None])
        h0 = None
        if hx is not None:
            h0 = b.op("Gather", hx, b.ints(list(range(layer * dirs, (layer + 1) * dirs))), axis=0)
        kind = "bidirectional" if bidirectional else "forward"
        y, y_h = _emit_rnn(b, x, h0, directions, hidden, relu, kind)
        if dirs == 1:
            x = b.squeeze(y, 1)
        else:  # [T, 2, B, H] -> [T, B, 2, H] -> [T, B, 2H]
            x = b.op("Reshape", b.op("Transpose", y, perm=[0, 2, 1, 3]), b.ints([0, 0, -1]))
        finals.append(y_h)
    h_n = finals[0] if len(finals) == 1 else b.op("Concat", *finals, axis=0)
    if batch_first:
        x = b.op("Transpose", x, perm=[1, 0, 2])
    return x, h_n


def _packed_error() -> ExportError:
    return ExportError(
        "rnnext: ONNX export of packed sequences (PackedSequence input) is not supported; "
        "export with padded input"
    )


# --- the legacy (TorchScript-based) exporter ----------------------------------------------------


def _register_legacy(torch_onnx: ModuleType) -> None:
    from torch.onnx import symbolic_helper as sh

    def present(v: Any) -> Any:
        return None if sh._is_none(v) else v

    @sh.parse_args("v", "v", "v", "v", "v", "v", "v", "b", "b")
    def rnn_forward(g, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse):
        if present(batch_sizes) is not None:
            raise _packed_error()
        hidden = _static_int((sh._get_tensor_sizes(w_hh) or [None])[0], "hidden size (w_hh.shape[0])")
        return _emit_rnn_forward(
            _LegacyBuilder(g), input, present(hx), w_ih, w_hh, present(b_ih), present(b_hh), relu,
            reverse, hidden, sh._get_tensor_dim_size(input, 0),
        )  # fmt: skip

    @sh.parse_args("v", "v", "v", "v", "b", "i", "f", "b", "b", "b", "b")
    def rnn(g, input, batch_sizes, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
            batch_first, relu):  # fmt: skip
        if present(batch_sizes) is not None:
            raise _packed_error()
        weights = sh._unpack_list(weights)
        hidden = _static_int((sh._get_tensor_sizes(weights[1]) or [None])[0], "hidden size (w_hh.shape[0])")
        return _emit_stack(
            _LegacyBuilder(g), input, present(hx), weights, has_biases, num_layers, dropout, train,
            bidirectional, batch_first, relu, hidden,
        )  # fmt: skip

    @sh.parse_args("v", "v", "v", "v", "v", "v", "b")
    def rnn_cell(g, input, hx, w_ih, w_hh, b_ih, b_hh, relu):
        b = _LegacyBuilder(g)
        return _emit_cell(b, input, present(hx), w_ih, w_hh, present(b_ih), present(b_hh), relu)

    torch_onnx.register_custom_op_symbolic("rnnext::rnn_forward", rnn_forward, _LEGACY_OPSET)
    for name, fn in (("rnn", rnn), ("rnn_cell", rnn_cell)):
        if hasattr(torch.ops.rnnext, name):
            torch_onnx.register_custom_op_symbolic(f"rnnext::{name}", fn, _LEGACY_OPSET)


# --- the dynamo exporter ------------------------------------------------------------------------


def _static_dim(shape: Any, i: int) -> Optional[int]:
    try:
        value = shape[i]
    except (TypeError, IndexError):
        return None
    return value if isinstance(value, int) else None


def _register_dynamo(registration: ModuleType) -> None:
    from torch.onnx._internal.exporter._torchlib._torchlib_registry import onnx_impl

    def rnn_forward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, relu: bool, reverse: bool):
        if batch_sizes is not None:
            raise _packed_error()
        hidden = _static_int(_static_dim(w_hh.shape, 0), "hidden size (w_hh.shape[0])")
        return _emit_rnn_forward(
            _ScriptBuilder(), input, hx, w_ih, w_hh, b_ih, b_hh, relu, reverse, hidden,
            _static_dim(input.shape, 0),
        )  # fmt: skip

    def rnn(input, batch_sizes, hx, weights, has_biases: bool, num_layers: int, dropout: float,
            train: bool, bidirectional: bool, batch_first: bool, relu: bool):  # fmt: skip
        if batch_sizes is not None:
            raise _packed_error()
        hidden = _static_int(_static_dim(weights[1].shape, 0), "hidden size (w_hh.shape[0])")
        return _emit_stack(
            _ScriptBuilder(), input, hx, weights, has_biases, num_layers, dropout, train,
            bidirectional, batch_first, relu, hidden,
        )  # fmt: skip

    def rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu: bool):
        return _emit_cell(_ScriptBuilder(), input, hx, w_ih, w_hh, b_ih, b_hh, relu)

    onnx_impl(torch.ops.rnnext.rnn_forward.default, trace_only=True)(rnn_forward)
    for name, fn in (("rnn", rnn), ("rnn_cell", rnn_cell)):
        if hasattr(torch.ops.rnnext, name):
            onnx_impl(getattr(torch.ops.rnnext, name).default, trace_only=True)(fn)


# --- registration when each exporter is imported ------------------------------------------------


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``hooks[name](module)`` right after the module ``name`` is first imported."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks
        self.finding: set[str] = set()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        hook = self.hooks.get(name)
        if hook is None or name in self.finding:
            return None
        self.finding.add(name)
        try:
            spec = importlib.util.find_spec(name)  # the finders after this one
        finally:
            self.finding.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        finder = self

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                finder.run(name, module)

            def __getattr__(self, attr):
                return getattr(loader, attr)

        spec.loader = Loader()
        return spec

    def run(self, name: str, module: ModuleType) -> None:
        hook = self.hooks.pop(name, None)
        if not self.hooks and self in sys.meta_path:
            sys.meta_path.remove(self)
        if hook is not None:
            _guarded(hook, module)


def _guarded(hook: Callable[[ModuleType], None], module: ModuleType) -> None:
    """Runs a registration; a failure (a torch whose exporter changed) warns rather than breaking
    the import of torch.onnx: exporting rnnext's ops then fails, everything else works."""
    try:
        hook(module)
    except Exception as e:  # noqa: BLE001
        warnings.warn(
            f"rnnext: could not register rnnext's ONNX translations with {module.__name__} ({e!r}); "
            "ONNX export of rnnext's ops will fail",
            RuntimeWarning,
            stacklevel=2,
        )


def _install() -> None:
    hooks = {_LEGACY_MODULE: _register_legacy, _DYNAMO_MODULE: _register_dynamo}
    waiting = {}
    for name, hook in hooks.items():
        module = sys.modules.get(name)
        if module is not None:
            _guarded(hook, module)
        else:
            waiting[name] = hook
    if waiting:
        sys.meta_path.insert(0, _AfterImport(waiting))


_install()
