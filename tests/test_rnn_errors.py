"""Every invalid construction or call of rnnext.RNN / RNNCell raises what the installed torch.nn
raises: the same exception type and the same message. Edge cases torch.nn accepts must work the same
way. (The raw ops' own errors: tests/test_op_errors.py.)

CPU only: on CUDA torch.nn hands most calls to cuDNN, whose checks and messages are its own.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import rnnext


def outcome(fn: Callable[[], Any]) -> tuple[str, str]:
    """(exception type, message), or ("ok", the shape, dtype and device of every result)."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(e).__name__, str(e)
    return "ok", _signature(result)


def _signature(result: Any) -> str:
    flat = list(result) if isinstance(result, (tuple, list)) else [result]
    parts = []
    for r in flat:
        if isinstance(r, PackedSequence):
            parts += [_signature(r.data), _signature(r.batch_sizes)]
        elif isinstance(r, torch.Tensor):
            parts.append(f"{tuple(r.shape)} {r.dtype} {r.device.type}")
        elif r is not None:
            parts.append(type(r).__name__)
    return "; ".join(parts)


def assert_same_outcome(make: Callable[[type], Any], call: Callable[[Any], Any] = lambda m: None) -> None:
    """Builds a module with nn.RNN and with rnnext.RNN (same seed), calls it the same way (same
    seed), and checks that both raise the same type with the same message, or both return results
    of the same shapes, dtypes and devices."""
    results = []
    for cls in (nn.RNN, rnnext.RNN):
        torch.manual_seed(0)

        def go(cls=cls):
            module = make(cls)
            torch.manual_seed(1)
            return call(module)

        results.append(outcome(go))
    assert results[1] == results[0]
    return results[0]


# ---------------------------------------------------------------------------------------------
# Constructor

CONSTRUCTOR_CASES = {
    "proj_size": ((4, 3), dict(proj_size=2)),
    "proj_size_zero": ((4, 3), dict(proj_size=0)),
    "nonlinearity_kw": ((4, 3), dict(nonlinearity="sigmoid")),
    "nonlinearity_pos": ((4, 3, 1, "gelu"), {}),
    "nonlinearity_none": ((4, 3), dict(nonlinearity=None)),
    "dropout_negative": ((4, 3, 2), dict(dropout=-0.1)),
    "dropout_above_one": ((4, 3, 2), dict(dropout=1.5)),
    "dropout_bool": ((4, 3, 2), dict(dropout=True)),
    "dropout_str": ((4, 3, 2), dict(dropout="0.5")),
    "dropout_one": ((4, 3, 2), dict(dropout=1)),
    "bias_int": ((4, 3), dict(bias=1)),
    "batch_first_none": ((4, 3), dict(batch_first=None)),
    "input_size_float": ((4.0, 3), {}),
    "input_size_zero": ((0, 3), {}),
    "input_size_negative": ((-2, 3), {}),
    "hidden_size_float": ((4, 3.0), {}),
    "hidden_size_zero": ((4, 0), {}),
    "hidden_size_str": ((4, "3"), {}),
    "num_layers_zero": ((4, 3, 0), {}),
    "num_layers_negative": ((4, 3, -1), {}),
    "num_layers_float": ((4, 3, 1.5), {}),
    "num_layers_str": ((4, 3, "2"), {}),
    "unknown_kwarg": ((4, 3), dict(foo=1)),
    "missing_hidden": ((4,), {}),
    "no_args": ((), {}),
    "too_many_positional": ((4, 3, 1, "tanh", True, False, 0.0, False, None, None, 1), {}),
    "positional_device": ((4, 3, 1, "tanh", True, False, 0.0, False, "cpu"), {}),
    "nonlinearity_twice": ((4, 3, 1, "tanh"), dict(nonlinearity="relu")),
    "bad_dtype": ((4, 3), dict(dtype=torch.int64)),
    "bad_device": ((4, 3), dict(device="nonsense")),
    "bidirectional_int": ((4, 3), dict(bidirectional=2)),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTOR_CASES))
def test_constructor_errors(case):
    args, kwargs = CONSTRUCTOR_CASES[case]
    assert_same_outcome(lambda cls: cls(*args, **kwargs))


def test_constructor_cases_do_raise():
    """Guard: most cases above are real errors in torch.nn (the comparison is not vacuous)."""
    raised = [outcome(lambda a=a, k=k: nn.RNN(*a, **k))[0] != "ok" for a, k in CONSTRUCTOR_CASES.values()]
    assert sum(raised) >= 25


# ---------------------------------------------------------------------------------------------
# Forward


def _packed(data_fn=None, hx=None):
    def call(m):
        p = pack_sequence([torch.randn(5, 4), torch.randn(3, 4), torch.randn(4, 4)], enforce_sorted=False)
        if data_fn is not None:
            p = PackedSequence(data_fn(p.data), p.batch_sizes, p.sorted_indices, p.unsorted_indices)
        return m(p, hx() if hx is not None else None)

    return call


def _sorted_packed(hx):
    def call(m):
        return m(pack_sequence([torch.randn(5, 4), torch.randn(3, 4)]), hx)

    return call


FORWARD_CASES: dict[str, Callable[[Any], Any]] = {
    "empty_sequence": lambda m: m(torch.randn(0, 2, 4)),
    "empty_sequence_with_hx": lambda m: m(torch.randn(0, 2, 4), torch.randn(2, 2, 3)),
    "empty_sequence_unbatched": lambda m: m(torch.randn(0, 4)),
    "empty_sequence_hx_wrong_dtype": lambda m: m(torch.randn(0, 2, 4), torch.randn(2, 2, 3).double()),
    "zero_batch": lambda m: m(torch.randn(5, 0, 4)),
    "zero_batch_with_hx": lambda m: m(torch.randn(5, 0, 4), torch.randn(2, 0, 3)),
    "zero_batch_hx_wrong_dtype": lambda m: m(torch.randn(5, 0, 4), torch.randn(2, 0, 3).double()),
    "zero_batch_and_time": lambda m: m(torch.randn(0, 0, 4)),
    "hx_wrong_batch": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 3, 3)),
    "hx_wrong_layers": lambda m: m(torch.randn(5, 2, 4), torch.randn(1, 2, 3)),
    "hx_wrong_hidden": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 2, 4)),
    "hx_2d_for_3d_input": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 3)),
    "hx_4d": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 2, 3, 1)),
    "hx_3d_for_2d_input": lambda m: m(torch.randn(5, 4), torch.randn(2, 1, 3)),
    "hx_wrong_for_2d_input": lambda m: m(torch.randn(5, 4), torch.randn(2, 4)),
    "hx_wrong_layers_2d_input": lambda m: m(torch.randn(5, 4), torch.randn(3, 3)),
    "hx_double": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 2, 3).double()),
    "hx_half": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 2, 3).half()),
    "hx_int": lambda m: m(torch.randn(5, 2, 4), torch.randint(0, 3, (2, 2, 3))),
    "hx_meta": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 2, 3, device="meta")),
    "hx_not_a_tensor": lambda m: m(torch.randn(5, 2, 4), "hx"),
    "input_double": lambda m: m(torch.randn(5, 2, 4).double()),
    "input_half": lambda m: m(torch.randn(5, 2, 4).half()),
    "input_int": lambda m: m(torch.randint(0, 3, (5, 2, 4))),
    "input_bool": lambda m: m(torch.randn(5, 2, 4) > 0),
    "input_complex": lambda m: m(torch.randn(5, 2, 4, dtype=torch.complex64)),
    "input_meta": lambda m: m(torch.randn(5, 2, 4, device="meta")),
    "input_wrong_features": lambda m: m(torch.randn(5, 2, 5)),
    "input_wrong_features_2d": lambda m: m(torch.randn(5, 3)),
    "input_4d": lambda m: m(torch.randn(5, 2, 4, 1)),
    "input_1d": lambda m: m(torch.randn(4)),
    "input_0d": lambda m: m(torch.tensor(1.0)),
    "input_not_a_tensor": lambda m: m([[1.0, 2.0]]),
    "input_none": lambda m: m(None),
    "packed_hx_wrong_batch": _packed(hx=lambda: torch.randn(2, 2, 3)),
    "packed_hx_wrong_hidden": _packed(hx=lambda: torch.randn(2, 3, 5)),
    "packed_hx_2d": _packed(hx=lambda: torch.randn(2, 3)),
    "packed_hx_double": _packed(hx=lambda: torch.randn(2, 3, 3).double()),
    "packed_hx_meta": _packed(hx=lambda: torch.randn(2, 3, 3, device="meta")),
    "packed_sorted_hx_wrong_batch": _sorted_packed(torch.randn(2, 3, 3)),
    "packed_data_double": _packed(lambda d: d.double()),
    "packed_data_meta": _packed(lambda d: d.to("meta")),
    "packed_data_wrong_features": _packed(lambda d: d[:, :3]),
    "packed_data_3d": _packed(lambda d: d[None]),
    "packed_data_too_few_rows": _packed(lambda d: d[:5]),
    "packed_data_extra_rows": _packed(lambda d: torch.cat([d, d])),
    "extra_argument": lambda m: m(torch.randn(5, 2, 4), None, None),
    "valid_call": lambda m: m(torch.randn(5, 2, 4), torch.randn(2, 2, 3)),
    "valid_unbatched": lambda m: m(torch.randn(5, 4), torch.randn(2, 3)),
}


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_errors(case, batch_first):
    call = FORWARD_CASES[case]
    if batch_first:
        # The same tensors, read batch-first: swap the first two dims of a 3-D input.
        def call(m, inner=FORWARD_CASES[case]):
            return inner(_BatchFirstView(m))

    assert_same_outcome(lambda cls: cls(4, 3, 2, batch_first=batch_first), call)


class _BatchFirstView:
    """Calls a batch_first module with 3-D tensor inputs transposed to [batch, time, ...]."""

    def __init__(self, module):
        self.module = module

    def __call__(self, input, *rest):
        if isinstance(input, torch.Tensor) and input.dim() == 3:
            input = input.transpose(0, 1)
        return self.module(input, *rest)


OTHER_CONFIGURATION_CASES = [
    "hx_double", "hx_int", "hx_meta", "input_meta", "packed_hx_double", "packed_data_meta", "packed_hx_meta",
    "zero_batch",
]  # fmt: skip


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", OTHER_CONFIGURATION_CASES)
def test_forward_errors_other_configurations(case, bias, bidirectional):
    """The dtype/device errors come from ATen's first matmul, whose message depends on the bias
    (without one, meta data or a meta hx with CPU weights gives meta outputs, no error).
    (One layer with two directions takes an hx of the same shape as two layers with one.)"""
    layers = 1 if bidirectional else 2
    assert_same_outcome(
        lambda cls: cls(4, 3, layers, bias=bias, bidirectional=bidirectional), FORWARD_CASES[case]
    )


def test_forward_cases_do_raise():
    """Guard: the error cases are errors in torch.nn (so the comparison is not vacuous)."""
    raised = []
    for call in FORWARD_CASES.values():
        torch.manual_seed(0)
        raised.append(outcome(lambda call=call: call(nn.RNN(4, 3, 2)))[0] != "ok")
    assert sum(raised) >= 35


def test_nonlinearity_attribute_is_not_read_after_construction():
    """torch.nn computes with the mode fixed at construction, whatever .nonlinearity says later."""

    def call(m):
        m.nonlinearity = "relu"
        return m(torch.randn(5, 2, 4))[0].min() < 0  # tanh output: negative entries

    for cls in (nn.RNN, rnnext.RNN):
        torch.manual_seed(0)
        module = cls(4, 3, 2)
        torch.manual_seed(1)
        assert call(module)


# ---------------------------------------------------------------------------------------------
# Bad input of every kind, RNN and RNNCell (each case also checks that rnnext still computes
# torch.nn's numbers afterwards)

_MODULE_CASES: dict[str, Callable] = {
    "1-D input": lambda c: c(3, 4)(torch.randn(3)),
    "4-D input": lambda c: c(3, 4)(torch.randn(1, 2, 3, 3)),
    "wrong features": lambda c: c(3, 4)(torch.randn(5, 2, 4)),
    "int input": lambda c: c(3, 4)(torch.randint(0, 3, (5, 2, 3))),
    "bool input": lambda c: c(3, 4)(torch.ones(5, 2, 3, dtype=torch.bool)),
    "complex input": lambda c: c(3, 4)(torch.randn(5, 2, 3, dtype=torch.cfloat)),
    "float64 input, float32 module": lambda c: c(3, 4)(torch.randn(5, 2, 3, dtype=torch.float64)),
    "hx wrong layers": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.randn(2, 2, 4)),
    "hx wrong batch": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 3, 4)),
    "hx wrong hidden": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 2, 5)),
    "hx 2-D for 3-D input": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.randn(2, 4)),
    "hx 3-D for 2-D input": lambda c: c(3, 4)(torch.randn(5, 3), torch.randn(1, 1, 4)),
    "hx float64": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 2, 4, dtype=torch.float64)),
    "hx int": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.ones(1, 2, 4, dtype=torch.long)),
    "hx on meta": lambda c: c(3, 4)(torch.randn(5, 2, 3), torch.randn(1, 2, 4, device="meta")),
    "input on meta": lambda c: c(3, 4)(torch.randn(5, 2, 3, device="meta")),
    "all on meta": lambda c: c(3, 4, device="meta")(torch.randn(5, 2, 3, device="meta")),
    # Without a bias torch.nn's ATen ops accept meta data with CPU weights and return meta outputs.
    "packed data on meta, no bias": lambda c: c(3, 4, bias=False)(
        pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]).to("meta")
    ),
    "packed hx on meta, no bias": lambda c: c(3, 4, bias=False)(
        pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), torch.randn(1, 2, 4, device="meta")
    ),
    "packed wrong features": lambda c: c(3, 4)(pack_padded_sequence(torch.randn(5, 2, 4), [5, 3])),
    "packed hx wrong batch": lambda c: c(3, 4)(
        pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), torch.randn(1, 3, 4)
    ),
    "empty sequence": lambda c: c(3, 4)(torch.randn(0, 2, 3)),
    "empty sequence unbatched": lambda c: c(3, 4)(torch.randn(0, 3)),
    "empty batch": lambda c: c(3, 4)(torch.randn(5, 0, 3)),
    "empty batch, batch_first": lambda c: c(3, 4, batch_first=True)(torch.randn(0, 5, 3)),
    "input_size 0": lambda c: c(0, 4),
    "hidden_size 0": lambda c: c(3, 0),
    "num_layers 0": lambda c: c(3, 4, 0),
    "bad nonlinearity": lambda c: c(3, 4, nonlinearity="gelu"),
    "dropout 1.5": lambda c: c(3, 4, dropout=1.5),
}

_CELL_CASES: dict[str, Callable] = {
    "cell 3-D input": lambda c: c(3, 4)(torch.randn(1, 2, 3)),
    "cell wrong features": lambda c: c(3, 4)(torch.randn(2, 4)),
    "cell int input": lambda c: c(3, 4)(torch.randint(0, 3, (2, 3))),
    "cell hx batch": lambda c: c(3, 4)(torch.randn(2, 3), torch.randn(3, 4)),
    "cell hx hidden": lambda c: c(3, 4)(torch.randn(2, 3), torch.randn(2, 5)),
    "cell hx 3-D": lambda c: c(3, 4)(torch.randn(2, 3), torch.randn(1, 2, 4)),
    "cell hx float64": lambda c: c(3, 4)(torch.randn(2, 3), torch.randn(2, 4, dtype=torch.float64)),
    "cell input on meta": lambda c: c(3, 4)(torch.randn(2, 3, device="meta")),
    "cell hx on meta": lambda c: c(3, 4)(torch.randn(2, 3), torch.randn(2, 4, device="meta")),
    "cell input on meta, no bias": lambda c: c(3, 4, bias=False)(torch.randn(2, 3, device="meta")),
    "cell hx on meta, no bias": lambda c: c(3, 4, bias=False)(
        torch.randn(2, 3), torch.randn(2, 4, device="meta")
    ),
    "cell empty batch": lambda c: c(3, 4)(torch.randn(0, 3)),
}


@pytest.mark.parametrize("case", list(_MODULE_CASES))
def test_rnn_bad_input_raises_like_torch_nn(case: str, still_works) -> None:
    want = outcome(lambda: _MODULE_CASES[case](nn.RNN))
    got = outcome(lambda: _MODULE_CASES[case](rnnext.RNN))
    assert got == want
    still_works()


@pytest.mark.parametrize("case", list(_CELL_CASES))
def test_rnn_cell_bad_input_raises_like_torch_nn(case: str, still_works) -> None:
    want = outcome(lambda: _CELL_CASES[case](nn.RNNCell))
    got = outcome(lambda: _CELL_CASES[case](rnnext.RNNCell))
    assert got == want
    still_works()


def test_rnn_cell_empty_batch_has_gradients_like_torch_nn() -> None:
    results = []
    for cls in (nn.RNNCell, rnnext.RNNCell):
        torch.manual_seed(0)
        cell = cls(3, 4)
        y = cell(torch.randn(0, 3))
        y.sum().backward()
        results.append([p.grad for p in cell.parameters()])
    for a, b in zip(*results):
        assert b is not None and torch.equal(a, b)
