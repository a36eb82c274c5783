"""Constructor arguments of the wrong type: rnnext rejects what the installed torch.nn rejects, at the
same point (construction or the first forward) and with the same exception type and message."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import nn

import rnnext

WRONG = {
    "input_size": [3.0, "3", True, None, -1, 0],
    "hidden_size": [4.0, "4", True, None, 0, -1],
    "num_layers": [2.0, "2", True, False, 0, None],
    "nonlinearity": [1, None, "Tanh"],
    "bias": [1, 0, "yes", None, 1.0],
    "batch_first": [1, 0, None, "x"],
    "dropout": [1, "0.1", True, None, 2, -0.1],
    "bidirectional": [1, 0, None, "x", 2.0],
}
CELL_ARGS = ("input_size", "hidden_size", "nonlinearity", "bias")


def _outcome(cls, kwargs, cell: bool) -> tuple[str, Optional[type], str]:
    """(stage, exception type, message) of building the module and running one forward."""
    try:
        module = cls(**kwargs)
    except Exception as e:  # noqa: BLE001
        return "init", type(e), str(e)
    torch.manual_seed(0)
    x = torch.randn(2, 3) if cell else torch.randn(5, 2, 3)
    try:
        module(x)
    except Exception as e:  # noqa: BLE001
        return "forward", type(e), str(e)
    return "ok", None, ""


CASES = [(name, value) for name, values in WRONG.items() for value in values]


def _check(ours, ref, name, value, cell: bool) -> None:
    """rnnext's module fails (or not) at the same stage, with the same exception type and message,
    as torch.nn's (for an argument-parser TypeError, the message names the ATen function and the
    types it got: it must match too)."""
    kwargs = dict(input_size=3, hidden_size=4)
    kwargs[name] = value
    want = _outcome(ref, kwargs, cell)
    got = _outcome(ours, kwargs, cell)
    assert got[:2] == want[:2]
    if want[1] is not None:
        assert got[2] == want[2]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name,value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_rnn_argument_types(name, value):
    _check(rnnext.RNN, nn.RNN, name, value, cell=False)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "name,value",
    [c for c in CASES if c[0] in CELL_ARGS],
    ids=[f"{n}={v!r}" for n, v in CASES if n in CELL_ARGS],
)
def test_cell_argument_types(name, value):
    _check(rnnext.RNNCell, nn.RNNCell, name, value, cell=True)


@pytest.mark.parametrize("name,value", [("bidirectional", 1), ("batch_first", 0), ("num_layers", True)])
def test_attribute_changed_after_construction(name, value):
    """torch.nn checks at forward time: an attribute set after construction is rejected too."""
    ref, ours = nn.RNN(3, 4), rnnext.RNN(3, 4)
    setattr(ref, name, value)
    setattr(ours, name, value)
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError) as want:
        ref(x)
    with pytest.raises(TypeError) as got:
        ours(x)
    assert str(got.value) == str(want.value)
