"""The benchmark suite runs end to end (``python -m benchmarks --quick``) and writes well-formed results.

No timing is asserted: only that every implementation ran, was checked against torch.nn.RNN, and that
the JSON rows carry the fields the README's table and later tooling read.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ROW_FIELDS = {
    "case": str, "mode": str, "impl": str, "median_ms": float, "iqr_ms": float,
    "T": int, "B": int, "I": int, "H": int, "layers": int, "bidirectional": bool, "packed": bool,
    "dtype": str, "device": str, "gflops": float, "gemm_share": float, "floor_ms": float,
    "max_err": float, "samples": int,
}


def _run(tmp_path: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--machine", "t",
           "--threads", "1", "--devices", "cpu", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "t.md").read_text().startswith("# rnnext benchmarks")
    return json.loads((tmp_path / "t.json").read_text())


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run(tmp_path_factory.mktemp("bench"), "--cases", "tutorial", "--no-onnx")


def test_header(tutorial: dict) -> None:
    for key in ("machine", "device", "torch", "threads", "rows", "gemm_gflops", "command", "skipped"):
        assert key in tutorial
    assert tutorial["threads"] == 1
    gemm = tutorial["gemm_gflops"]["cpu/float32"]
    assert gemm["used"] == max(gemm["samples"]) >= max(gemm["start"], gemm["end"]) > 0


def test_rows(tutorial: dict) -> None:
    rows = tutorial["rows"]
    got = {(r["mode"], r["impl"]) for r in rows}
    want = {(m, i) for m in ("inference", "training")
            for i in ("torch.nn.RNN", "rnnext.RNN", "torch.nn.RNNCell loop", "rnnext.RNNCell loop")}
    assert got == want
    for r in rows:
        for field, typ in ROW_FIELDS.items():
            assert isinstance(r[field], typ), (field, r[field])
        assert r["case"] == "tutorial" and (r["T"], r["B"], r["I"], r["H"]) == (10, 3, 100, 20)
        assert r["dtype"] == "float32" and r["device"] == "cpu"
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["samples"] >= 3
        assert math.isclose(r["gflops"], r["flops"] / (r["median_ms"] * 1e-3) / 1e9, rel_tol=1e-9)
        assert r["max_err"] <= 1e-4
    fwd = 2 * 10 * 3 * (100 * 20 + 20 * 20)
    assert {r["mode"]: r["flops"] for r in rows} == {"inference": fwd, "training": 3 * fwd}


def test_extras_are_reported_as_skipped(tutorial: dict) -> None:
    skipped = {(s["impl"], s["mode"]): s["reason"] for s in tutorial["skipped"]}
    assert "--quick" in skipped[("torch.compile(nn.RNN)", "inference")]
    assert "flag" in skipped[("onnxruntime", "inference")]


def test_packed_bidirectional_float64(tmp_path: Path) -> None:
    res = _run(tmp_path, "--cases", "tiny-packed-bidir", "--dtypes", "float64", "--modes", "training",
               "--no-onnx")
    impls = {r["impl"] for r in res["rows"]}
    assert impls == {"torch.nn.RNN", "rnnext.RNN"}
    for r in res["rows"]:
        assert r["packed"] and r["bidirectional"] and r["layers"] == 2 and r["dtype"] == "float64"
        assert r["max_err"] <= 1e-9


def test_onnxruntime_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    res = _run(tmp_path, "--cases", "tutorial", "--modes", "inference")
    ort = [r for r in res["rows"] if r["impl"] == "onnxruntime"]
    assert len(ort) == 1 and ort[0]["max_err"] <= 2e-5


def test_flop_count_and_tokens() -> None:
    from benchmarks import cases

    c = cases.ALL_CASES["stack-2l-bidir"]  # T=100 B=32 I=128 H=256, 2 layers, bidirectional
    layer0 = 2 * (2 * 100 * 32 * (128 * 256 + 256 * 256))
    layer1 = 2 * (2 * 100 * 32 * (512 * 256 + 256 * 256))
    assert cases.flops(c, "inference") == layer0 + layer1
    assert cases.flops(c, "training") == 3 * (layer0 + layer1)
    packed, padded = cases.ALL_CASES["packed"], cases.ALL_CASES["packed-as-padded"]
    lengths = cases.lengths_for(packed)
    assert lengths == cases.lengths_for(padded) and max(lengths) == packed.T and min(lengths) < packed.T
    assert cases.tokens(packed) == sum(lengths) < cases.tokens(padded) == packed.T * packed.B


def test_stats() -> None:
    from benchmarks.timing import stats

    s = stats([5.0, 1.0, 3.0, 2.0, 4.0], number=7)
    assert (s.median, s.iqr, s.samples, s.number) == (3.0, 2.0, 5, 7)


def test_mismatch_is_reported_and_not_timed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    import rnnext
    from benchmarks import cli

    forward = rnnext.RNN.forward

    def wrong(self, input, hx=None):  # a plausible bug: off by 1e-3
        out, h = forward(self, input, hx)
        return out + 1e-3, h

    monkeypatch.setattr(rnnext.RNN, "forward", wrong)
    argv = ["--quick", "--cases", "tutorial", "--modes", "inference", "--no-onnx", "--devices", "cpu",
            "--out", str(tmp_path), "--machine", "m"]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert "rnnext.RNN" not in {r["impl"] for r in res["rows"]}
    assert "torch.nn.RNN" in {r["impl"] for r in res["rows"]}
    reasons = [s["reason"] for s in res["skipped"] if s["impl"] == "rnnext.RNN"]
    assert len(reasons) == 1 and reasons[0].startswith("output mismatch")
    assert "WARNING: rnnext.RNN" in capsys.readouterr().err
