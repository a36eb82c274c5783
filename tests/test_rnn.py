"""Equivalence of rnnext.RNN with the installed torch.nn.RNN: constructor, parameters, state, and
outputs plus every gradient over a grid crossing every option."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnext

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def make_pair(*args, seed: int = 0, **kwargs) -> tuple[nn.RNN, rnnext.RNN]:
    """nn.RNN and rnnext.RNN built from the same arguments and the same seed."""
    torch.manual_seed(seed)
    ref = nn.RNN(*args, **kwargs)
    torch.manual_seed(seed)
    ours = rnnext.RNN(*args, **kwargs)
    return ref, ours


def grads(module: nn.Module, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [t.grad for t in tensors if t is not None] + [p.grad for p in module.parameters()]


def run(module, x, hx, lengths, batch_first, enforce_sorted, out_w, h_w):
    """Forward (padded, unbatched or packed input), then backward of a random linear functional of
    output and h_n. Returns output (padded), h_n and the gradients of x, hx and every parameter."""
    x = x.detach().clone().requires_grad_()
    hx = hx.detach().clone().requires_grad_() if hx is not None else None
    inp = x
    if lengths is not None:
        inp = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    # On CUDA, torch.nn runs cuDNN, which may use TF32 for float32 unless told not to: in its
    # forward and in its backward, so both run inside the block.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        out, h = module(inp, hx)
        if lengths is not None:
            assert isinstance(out, PackedSequence)
            out, _ = pad_packed_sequence(out, batch_first=batch_first)
        (out * out_w[tuple(slice(0, s) for s in out.shape)]).sum().add((h * h_w).sum()).backward()
    return [out.detach(), h.detach()] + grads(module, x, hx)


GRID = list(
    itertools.product(
        [1, 2],  # num_layers
        [False, True],  # bidirectional
        [True, False],  # bias
        ["tanh", "relu"],  # nonlinearity
        [False, True],  # batch_first
        ["padded", "unbatched", "packed", "packed_unsorted"],  # input kind
        [False, True],  # hx given
        [torch.float64, torch.float32],
    )
)


@pytest.mark.parametrize(
    "layers,bidirectional,bias,nonlinearity,batch_first,kind,with_hx,dtype",
    GRID,
    ids=["-".join(str(v).replace("torch.", "") for v in case) for case in GRID],
)
def test_equivalence_grid(
    device, close, layers, bidirectional, bias, nonlinearity, batch_first, kind, with_hx, dtype
):
    T, B, I, H = 5, 3, 4, 6  # noqa: E741
    D = 2 if bidirectional else 1
    ref, ours = make_pair(
        I, H, layers, nonlinearity, bias, batch_first, 0.0, bidirectional, device=device, dtype=dtype
    )
    g = torch.Generator().manual_seed(1234)
    opts = dict(dtype=dtype, device=device)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    lengths = None
    if kind == "unbatched":
        x = rand(T, I)
        hx = rand(layers * D, H) if with_hx else None
        out_w, h_w = rand(T, D * H), rand(layers * D, H)
    else:
        x = rand(B, T, I) if batch_first else rand(T, B, I)
        hx = rand(layers * D, B, H) if with_hx else None
        out_w = rand(B, T, D * H) if batch_first else rand(T, B, D * H)
        h_w = rand(layers * D, B, H)
        if kind == "packed":
            lengths = torch.tensor([T, T - 2, 1])
        elif kind == "packed_unsorted":
            lengths = torch.tensor([2, T, 4])
    del opts
    enforce_sorted = kind == "packed"
    expected = run(ref, x, hx, lengths, batch_first, enforce_sorted, out_w, h_w)
    actual = run(ours, x, hx, lengths, batch_first, enforce_sorted, out_w, h_w)
    assert len(expected) == len(actual)
    slack = [0.0] * len(expected)
    if device == "cuda":
        # cuDNN is not the truth: torch.nn on the CPU in float64 is. Ours against it first, so that a
        # failure says which side is off; then ours against cuDNN with cuDNN's own distance from the
        # truth allowed on top (two float32 algorithms, neither exact; the CPU has no such slack).
        ref64 = copy.deepcopy(ref).to("cpu", torch.float64)
        ref64.zero_grad(set_to_none=True)

        def f64(t):
            return None if t is None else t.to("cpu", torch.float64)

        truth = run(ref64, f64(x), f64(hx), lengths, batch_first, enforce_sorted, f64(out_w), f64(h_w))
        for t, a in zip(truth, actual):
            close(f64(a), t, **TOL[dtype], dtype=dtype)
        slack = [float((f64(e) - t).abs().max()) if t.numel() else 0.0 for e, t in zip(expected, truth)]
    for e, a, s in zip(expected, actual, slack):
        assert a.dtype == e.dtype and a.device == e.device
        close(a, e, **TOL[dtype], slack=s)


@pytest.mark.parametrize(
    "T,B,I,H,layers",
    [
        (1, 1, 1, 1, 1),
        (1, 3, 2, 5, 2),
        (40, 2, 3, 4, 2),
        (7, 1, 16, 1, 3),
        (3, 5, 1, 33, 1),
        (300, 2, 3, 8, 1),
    ],
)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias,with_hx", [(True, True), (False, False)])
def test_shapes(device, close, T, B, I, H, layers, nonlinearity, bias, with_hx):  # noqa: E741
    """Batch 1, hidden 1, sequence length 1, long sequences, many layers: float64, tight."""
    ref, ours = make_pair(
        I, H, layers, nonlinearity, bias, bidirectional=True, dtype=torch.float64, device=device
    )
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    hx = torch.randn(2 * layers, B, H, dtype=torch.float64, device=device) if with_hx else None
    # Scaled so that long relu sequences stay finite and the gradients stay informative.
    out_w = torch.randn(T, B, 2 * H, dtype=torch.float64, device=device) / T
    h_w = torch.randn(2 * layers, B, H, dtype=torch.float64, device=device)
    for e, a in zip(
        run(ref, x, hx, None, False, True, out_w, h_w), run(ours, x, hx, None, False, True, out_w, h_w)
    ):
        close(a, e, rtol=1e-10, atol=1e-10)


def test_tutorial_example():
    """The classic example: RNN(input_size=100, hidden_size=20, num_layers=1) on [10, 3, 100]."""
    ours = rnnext.RNN(input_size=100, hidden_size=20, num_layers=1)
    ref = nn.RNN(input_size=100, hidden_size=20, num_layers=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(10, 3, 100)
    h0 = torch.zeros(1, 3, 20)
    out, h = ours(x, h0)
    assert out.shape == (10, 3, 20) and h.shape == (1, 3, 20)
    out_ref, h_ref = ref(x, h0)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_non_contiguous_inputs(device, close):
    ref, ours = make_pair(4, 5, 2, bidirectional=True, dtype=torch.float64, device=device)
    x = torch.randn(3, 6, 8, dtype=torch.float64, device=device)[:, ::2, ::2].transpose(0, 1)  # strided
    hx = torch.randn(4, 3, 10, dtype=torch.float64, device=device)[..., ::2]
    assert not x.is_contiguous() and not hx.is_contiguous()
    out_w = torch.randn(3, 3, 10, dtype=torch.float64, device=device)
    h_w = torch.randn(4, 3, 5, dtype=torch.float64, device=device)
    for e, a in zip(
        run(ref, x, hx, None, False, True, out_w, h_w), run(ours, x, hx, None, False, True, out_w, h_w)
    ):
        close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_same_masks(kind, bidirectional):
    """In training, dropout after every layer but the last draws the masks torch.nn draws."""
    ref, ours = make_pair(4, 6, 3, dropout=0.4, bidirectional=bidirectional, dtype=torch.float64)
    ref.train()
    ours.train()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 2]) if kind == "packed" else None
    out_w = torch.randn(7, 3, 12 if bidirectional else 6, dtype=torch.float64)
    h_w = torch.randn(6 if bidirectional else 3, 3, 6, dtype=torch.float64)
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected = run(ref, x, None, lengths, False, True, out_w, h_w)
        after_ref = torch.rand(3)
        torch.manual_seed(seed)
        actual = run(ours, x, None, lengths, False, True, out_w, h_w)
        assert torch.equal(torch.rand(3), after_ref)  # the same number of random draws
        ref.zero_grad()
        ours.zero_grad()
        for e, a in zip(expected, actual):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    # The masks matter: with dropout the output differs from the eval-mode output.
    ours.eval()
    torch.manual_seed(0)
    eval_out = run(ours, x, None, lengths, False, True, out_w, h_w)[0]
    assert not torch.allclose(eval_out, expected[0])


def test_eval_mode_has_no_dropout():
    ref, ours = make_pair(4, 6, 2, dropout=0.9, dtype=torch.float64)
    ref.eval()
    ours.eval()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    a, b = ours(x), ours(x)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[0], ref(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_zero_batch(batch_first, with_hx):
    """torch.nn accepts an empty batch; so does rnnext, with the same shapes and (zero) gradients."""
    ref, ours = make_pair(4, 3, 2, bidirectional=True, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn((0, 5, 4) if batch_first else (5, 0, 4), dtype=torch.float64)
    hx = torch.randn(4, 0, 3, dtype=torch.float64) if with_hx else None
    out_w = torch.randn(x.shape[:2] + (6,), dtype=torch.float64)
    h_w = torch.randn(4, 0, 3, dtype=torch.float64)
    expected = run(ref, x, hx, None, batch_first, True, out_w, h_w)
    actual = run(ours, x, hx, None, batch_first, True, out_w, h_w)
    for e, a in zip(expected, actual):
        assert a is not None and e is not None
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_packed_extra_rows_are_ignored():
    """ATen reads only sum(batch_sizes) rows of a PackedSequence's data; so does rnnext."""
    ref, ours = make_pair(4, 3, dtype=torch.float64)
    packed = pack_padded_sequence(torch.randn(5, 2, 4, dtype=torch.float64), torch.tensor([5, 3]))
    longer = PackedSequence(torch.cat([packed.data, packed.data]), packed.batch_sizes)
    (out_ref, h_ref), (out, h) = ref(longer), ours(longer)
    torch.testing.assert_close(out.data, out_ref.data, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_on_cpu(dtype, seed):
    """torch.nn runs float16/bfloat16 on the CPU; rnnext computes them in float32 and casts back.
    Outputs and gradients are checked against a float64 run of the same weights: rnnext must be
    at least about as accurate as torch.nn's own half-precision path."""
    ref, ours = make_pair(4, 8, 2, bidirectional=True, seed=seed)
    exact = copy.deepcopy(ref).double()
    ref.to(dtype)
    ours.to(dtype)
    exact.load_state_dict(ref.state_dict())  # the rounded weights, in float64
    x0 = torch.randn(6, 3, 4).to(dtype)
    results = []
    for m, x_dtype in ((ref, dtype), (ours, dtype), (exact, torch.float64)):
        x = x0.to(x_dtype, copy=True).requires_grad_()
        out, h = m(x)
        assert out.dtype == x_dtype and h.dtype == x_dtype
        (out.sum() + h.sum()).backward()
        results.append([out, h, x.grad] + [p.grad for p in m.parameters()])
    for e, a, f in zip(*results):
        assert a.dtype == dtype
        err_nn = (e.double() - f).abs().max().item()
        err_ours = (a.double() - f).abs().max().item()
        scale = f.abs().max().item()
        assert err_ours <= 2 * err_nn + 1e-2 * scale, (err_ours, err_nn, scale)


def test_autocast_cpu():
    ref, ours = make_pair(4, 8, 2)
    x = torch.randn(6, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, h_ref = ref(x)
        out, h = ours(x)
    assert out.dtype == out_ref.dtype and h.dtype == h_ref.dtype
    torch.testing.assert_close(out, out_ref, rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------------------------
# Constructor, parameters, state


CONSTRUCTIONS = [
    ((10, 20), {}),
    ((10, 20, 2), {}),
    ((10, 20, 3, "relu", False, True, 0.25, True), {}),
    ((3, 4), dict(num_layers=2, nonlinearity="relu", bias=False, batch_first=True, bidirectional=True)),
    ((3, 4, 2), dict(dropout=0.5)),
    ((), dict(input_size=5, hidden_size=7, dtype=torch.float64)),
    ((2, 2, 1, "tanh", True, False, 0.0, False), dict(device="cpu", dtype=torch.float64)),
]


@pytest.mark.parametrize("args,kwargs", CONSTRUCTIONS)
def test_constructor_parity(args, kwargs):
    ref, ours = make_pair(*args, seed=7, **kwargs)
    assert repr(ours) == repr(ref)
    assert str(ours) == str(ref)
    for attr in [
        "mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
        "bidirectional", "proj_size", "nonlinearity", "_flat_weights_names", "_all_weights", "training",
    ]:  # fmt: skip
        assert getattr(ours, attr) == getattr(ref, attr), attr
    ref_params, our_params = list(ref.named_parameters()), list(ours.named_parameters())
    assert [n for n, _ in our_params] == [n for n, _ in ref_params]
    for (_, p), (_, q) in zip(our_params, ref_params):
        assert p.shape == q.shape and p.dtype == q.dtype and p.device == q.device
        assert torch.equal(p, q)  # same seed, same init
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    assert len(ours.all_weights) == len(ref.all_weights)
    for ws, ps in zip(ours.all_weights, ref.all_weights):
        assert len(ws) == len(ps) and all(torch.equal(w, p) for w, p in zip(ws, ps))
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))


def test_dropout_warning_like_torch():
    with warnings.catch_warnings(record=True) as ref_w:
        warnings.simplefilter("always")
        nn.RNN(3, 4, 1, dropout=0.3)
    with warnings.catch_warnings(record=True) as our_w:
        warnings.simplefilter("always")
        rnnext.RNN(3, 4, 1, dropout=0.3)
    assert [(w.category, str(w.message)) for w in our_w] == [(w.category, str(w.message)) for w in ref_w]
    assert len(ref_w) == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_dict_both_ways(dtype):
    ref, _ = make_pair(4, 5, 2, bidirectional=True, dtype=dtype, seed=1)
    _, ours = make_pair(4, 5, 2, bidirectional=True, dtype=dtype, seed=2)
    x = torch.randn(3, 2, 4, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x)[0], ref(x)[0], **TOL[dtype])
    ref2 = nn.RNN(4, 5, 2, bidirectional=True, dtype=dtype)
    ours2 = rnnext.RNN(4, 5, 2, bidirectional=True, dtype=dtype)
    ref2.load_state_dict(ours2.state_dict())
    torch.testing.assert_close(ours2(x)[0], ref2(x)[0], **TOL[dtype])
    # The forward reads the loaded values (load_state_dict copies in place).
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))


def test_flat_weights_stay_in_sync():
    ours = rnnext.RNN(3, 4, 2, bidirectional=True)
    ref = nn.RNN(3, 4, 2, bidirectional=True)
    ours.flatten_parameters()
    ref.flatten_parameters()

    def in_sync(m):
        return all(w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names))

    assert in_sync(ours)
    ours.double()
    assert in_sync(ours) and ours._flat_weights[0].dtype == torch.float64
    ours.to(torch.float32)
    assert in_sync(ours) and ours._flat_weights[0].dtype == torch.float32
    new = nn.Parameter(torch.randn(4, 3))
    ours.weight_ih_l0 = new
    assert ours._flat_weights[0] is new and ours.all_weights[0][0] is new
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    # Replacing a parameter behind the module's back (as torch.func.functional_call does) is seen.
    with torch.no_grad():
        zeros = {n: torch.zeros_like(p) for n, p in ours.named_parameters()}
    out, h = torch.func.functional_call(ours, zeros, (x,))
    assert torch.count_nonzero(out) == 0 and torch.count_nonzero(h) == 0
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    assert in_sync(ours)
    # Even a parameter swapped in behind RNNBase.__setattr__'s back is used, as torch.nn does.
    other = nn.Parameter(torch.randn(4, 4))
    ours._parameters["weight_hh_l1"] = other
    ref._parameters["weight_hh_l1"] = other
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    assert in_sync(ours) and ours._flat_weights[ours._flat_weights_names.index("weight_hh_l1")] is other


def test_deepcopy_and_pickle_roundtrip(tmp_path):
    ours = rnnext.RNN(3, 4, 2, nonlinearity="relu", bidirectional=True, batch_first=True)
    x = torch.randn(2, 5, 3)
    expected = ours(x)
    clone = copy.deepcopy(ours)
    assert type(clone) is rnnext.RNN and repr(clone) == repr(ours)
    assert all(c is not p for c, p in zip(clone.parameters(), ours.parameters()))
    path = tmp_path / "rnn.pt"
    torch.save(ours, path)
    loaded = torch.load(path, weights_only=False)
    for m in (clone, loaded):
        assert all(w is getattr(m, n) for w, n in zip(m._flat_weights, m._flat_weights_names))
        out, h = m(x)
        torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
        torch.testing.assert_close(h, expected[1], rtol=0, atol=0)


def test_functional_matches_module():
    """rnnext.functional.rnn / rnn_cell are the modules' computation without module state."""
    ref, ours = make_pair(4, 5, 2, "relu", bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    hx = torch.randn(4, 3, 5, dtype=torch.float64)
    out, h = rnnext.functional.rnn(
        x, hx, ref._flat_weights, num_layers=2, nonlinearity="relu", bidirectional=True, batch_first=True
    )
    out_ref, h_ref = ref(x, hx)
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    cell = nn.RNNCell(4, 5, dtype=torch.float64)
    x1 = torch.randn(3, 4, dtype=torch.float64)
    h1 = rnnext.functional.rnn_cell(x1, hx[0], cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    torch.testing.assert_close(h1, cell(x1, hx[0]), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError):
        rnnext.functional.rnn(x, hx, ref._flat_weights[:-1], num_layers=2, bidirectional=True)


def _forbidden(name: str) -> bool:
    """ATen's own RNN entry points (and cuDNN's / MIOpen's), which rnnext must never call."""
    base = name.split("::")[-1].split(".")[0]
    return base in {"rnn_tanh", "rnn_relu", "rnn_tanh_cell", "rnn_relu_cell"} or "cudnn_rnn" in base or (
        "miopen_rnn" in base
    )


def test_no_aten_rnn_call(monkeypatch):
    """Every layer and direction runs on rnnext's ops: ATen's rnn_tanh / rnn_relu (and their cells)
    are never called, neither from Python (torch._VF) nor from C++ (seen by the profiler)."""
    import torch._VF as VF

    def refuse(*args, **kwargs):
        raise AssertionError("rnnext called an ATen RNN entry point")

    for name in ("rnn_tanh", "rnn_relu", "rnn_tanh_cell", "rnn_relu_cell"):
        monkeypatch.setattr(VF, name, refuse)
    with pytest.raises(AssertionError):  # the patch is effective: torch.nn now fails
        nn.RNN(3, 4)(torch.randn(5, 2, 3))

    rnn = rnnext.RNN(3, 4, 2, nonlinearity="relu", bidirectional=True).train()
    rnn.dropout = 0.2
    cell = rnnext.RNNCell(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out, h = rnn(x)
        (out.sum() + h.sum()).backward()
        out, h = rnn(packed)
        (out.data.sum() + h.sum()).backward()
        cell(x[0]).sum().backward()
        rnnext.functional.rnn(x, None, rnn._flat_weights, num_layers=2, bidirectional=True)
    names = {e.name for e in prof.events()}
    assert "rnnext::rnn_forward" in names and "rnnext::rnn_backward" in names  # the profiler sees ops
    assert not [n for n in names if _forbidden(n)]
    # Control: the profiler does see ATen's rnn_tanh when torch.nn calls it.
    monkeypatch.undo()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        nn.RNN(3, 4)(torch.randn(5, 2, 3))
    assert any(_forbidden(e.name) for e in prof.events())


def test_meta_device():
    """A model on the meta device (shapes only) works as torch.nn's does."""
    ref, ours = make_pair(4, 3, 2, bidirectional=True, device="meta")
    x = torch.randn(5, 2, 4, device="meta")
    packed = pack_padded_sequence(torch.randn(5, 2, 4), torch.tensor([5, 2])).to("meta")
    for inp in (x, packed):
        (o_ref, h_ref), (o, h) = ref(inp), ours(inp)
        o, o_ref = (o.data, o_ref.data) if isinstance(o, PackedSequence) else (o, o_ref)
        assert o.shape == o_ref.shape and h.shape == h_ref.shape and o.device.type == "meta"
