"""rnnext.convert on real models, whole-model pickling (torch.save / torch.load), deepcopy, and
several threads calling one module at once."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from torch import nn

import rnnext


class Tagger(nn.Module):
    """A model with torch.nn recurrent layers in several places: attribute, Sequential, ModuleList,
    shared between two parents, and a subclass that must be left alone."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.rnn = nn.RNN(8, 10, num_layers=2, bidirectional=True, batch_first=True, nonlinearity="relu")
        self.cell = nn.RNNCell(20, 12)
        self.stack = nn.Sequential(nn.Linear(12, 12), nn.ModuleList([nn.RNNCell(12, 5, bias=False)]))
        self.shared = self.cell
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        y, h = self.rnn(self.embed(x))
        s = self.cell(y[:, -1])
        s = self.stack[1][0](self.stack[0](s))
        return self.head(s) + h.sum()


class MyRNN(nn.RNN):
    def forward(self, input, hx=None):
        out, h = super().forward(input, hx)
        return out * 2, h


def test_convert_model_in_place():
    torch.manual_seed(0)
    model = Tagger().double()
    model.eval()
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    expected = model(x)
    params_before = dict(model.named_parameters())
    calls = []
    handle = model.rnn.register_forward_hook(lambda m, i, o: calls.append(type(m)))
    returned = rnnext.convert(model)
    assert returned is model
    assert type(model.rnn) is rnnext.RNN
    assert type(model.cell) is rnnext.RNNCell and model.shared is model.cell
    assert type(model.stack[1][0]) is rnnext.RNNCell
    assert type(model.embed) is nn.Linear
    # The same Parameter objects, dtype and training mode; the hook still fires and still removes.
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert model.rnn.weight_ih_l0.dtype == torch.float64 and not model.rnn.training
    assert model.rnn._flat_weights[0] is params_before["rnn.weight_ih_l0"]
    actual = model(x)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    assert calls == [rnnext.RNN]
    handle.remove()
    model(x)
    assert calls == [rnnext.RNN]
    assert repr(model.rnn) == "RNN(8, 10, num_layers=2, batch_first=True, bidirectional=True)"
    assert model.rnn.nonlinearity == "relu" and model.rnn.mode == "RNN_RELU"


def test_optimizer_built_before_convert_keeps_working():
    torch.manual_seed(0)
    model = nn.Sequential(nn.RNN(3, 4))
    reference = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    rnnext.convert(model)
    x = torch.randn(5, 2, 3)
    for m, o in ((model, opt), (reference, opt_ref)):
        for _ in range(3):
            o.zero_grad()
            m(x)[0].square().sum().backward()
            o.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_convert_root_module_and_leave_others():
    rnn = nn.RNN(3, 4, 2, dropout=0.25)
    rnn.train()
    new = rnnext.convert(rnn)
    assert type(new) is rnnext.RNN and new.training and new.dropout == 0.25
    assert new.weight_hh_l1 is rnn.weight_hh_l1
    cell = rnnext.convert(nn.RNNCell(3, 4, nonlinearity="relu"))
    assert type(cell) is rnnext.RNNCell and cell.nonlinearity == "relu"
    mine = MyRNN(3, 4)
    assert rnnext.convert(mine) is mine and type(mine) is MyRNN
    lstm = nn.Sequential(nn.LSTM(3, 4))
    rnnext.convert(lstm)
    assert type(lstm[0]) is nn.LSTM
    already = nn.Sequential(rnnext.RNN(3, 4))
    inner = already[0]
    rnnext.convert(already)
    assert already[0] is inner


def test_converted_module_state_dict_and_new_parameters():
    model = rnnext.convert(nn.RNN(3, 4, bidirectional=True))
    ref = nn.RNN(3, 4, bidirectional=True)
    ref.load_state_dict(model.state_dict())
    # A new Parameter on the converted module is used by it, and does not leak into the original.
    model.weight_ih_l0 = nn.Parameter(torch.randn(4, 3))
    assert model._flat_weights[0] is model.weight_ih_l0
    ref.weight_ih_l0 = model.weight_ih_l0
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(model(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def _build():
    torch.manual_seed(0)
    model = rnnext.convert(Tagger())
    model.eval()
    return model


def test_torch_save_whole_model(tmp_path):
    model = _build()
    x = torch.randn(2, 5, 6)
    expected = model(x)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert type(loaded.rnn) is rnnext.RNN and type(loaded.cell) is rnnext.RNNCell
    assert loaded.shared is loaded.cell
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    # The state dict alone also loads into an unconverted torch.nn model.
    torch.save(model.state_dict(), tmp_path / "state.pt")
    plain = Tagger().eval()
    plain.load_state_dict(torch.load(tmp_path / "state.pt"))
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)


def test_pickle_and_deepcopy():
    model = _build()
    x = torch.randn(2, 5, 6)
    expected = model(x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert clone.rnn.weight_ih_l0 is not model.rnn.weight_ih_l0
        assert clone.rnn._flat_weights[0] is clone.rnn.weight_ih_l0
        torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
        clone(x).sum().backward()
        assert all(p.grad is not None for p in clone.parameters())


@pytest.mark.parametrize("packed", [False, True])
def test_threads_share_one_module(packed):
    """Several threads calling one module at once get each their own correct result."""
    torch.manual_seed(0)
    model = rnnext.RNN(5, 16, num_layers=2, bidirectional=True, dtype=torch.float64)
    ref = nn.RNN(5, 16, num_layers=2, bidirectional=True, dtype=torch.float64)
    ref.load_state_dict(model.state_dict())
    inputs = [torch.randn(20 + i, 3, 5, dtype=torch.float64) for i in range(8)]
    if packed:
        lengths = torch.tensor([20, 11, 3])
        inputs = [nn.utils.rnn.pack_padded_sequence(x, lengths) for x in inputs]
    expected = [ref(x) for x in inputs]
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for i in range(k, len(inputs), 4):
                for _ in range(3):
                    out, h = model(inputs[i])
                    results[i] = (out, h)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (out_ref, h_ref) in enumerate(expected):
        out, h = results[i]
        if packed:
            out, out_ref = out.data, out_ref.data
        torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_threads_backward():
    torch.manual_seed(0)
    model = rnnext.RNN(4, 8, num_layers=2, dtype=torch.float64)
    inputs = [torch.randn(15, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(6)]
    expected = []
    for x in inputs:
        (g,) = torch.autograd.grad(model(x)[0].sum(), x)
        expected.append(g)
    got: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        (got[i],) = torch.autograd.grad(model(inputs[i])[0].sum(), inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, g in enumerate(expected):
        torch.testing.assert_close(got[i], g, rtol=1e-10, atol=1e-10)


def test_convert_parametrized_rnn():
    """A parametrized torch.nn.RNN (here weight_norm on a recurrent weight) keeps its
    parametrization on the rnnext side: same outputs and gradients."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    ref = weight_norm(nn.RNN(3, 4, 2, dtype=torch.float64), "weight_hh_l0")
    model = nn.Sequential(copy.deepcopy(ref))
    rnnext.convert(model)
    assert isinstance(model[0], rnnext.RNN)
    assert nn.utils.parametrize.is_parametrized(model[0], "weight_hh_l0")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out_ref, out = ref(x)[0], model[0](x)[0]
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    out_ref.sum().backward()
    out.sum().backward()
    for (n, p), (m, q) in zip(ref.named_parameters(), model[0].named_parameters()):
        assert n == m
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-10)
