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
    "peak_gflops": float, "peak_share": float, "threads": int, "max_err": float, "samples": int,
}


def _run(tmp_path: Path, *args: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--machine", "t",
           "--threads", "1", "--devices", "cpu", *args]
    # The timeout guards against a hang (a quick run takes seconds), not the machine's speed.
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
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
    peak = tutorial["fma_peak_gflops"]["cpu/float32"]
    assert peak["used"] == max(peak["samples"]) >= max(peak["start"], peak["end"]) > 0
    assert peak["threads"] == 1 and peak["isa"] in ("avx512", "avx2", "base")
    assert tutorial["cpu_isa"] in ("avx512", "avx2", "base")


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
        assert math.isclose(r["peak_share"], r["gflops"] / r["peak_gflops"], rel_tol=1e-9)
        assert math.isclose(r["gemm_share"], r["gflops"] / r["gemm_gflops"], rel_tol=1e-9)
        assert math.isclose(r["floor_ms"], r["flops"] / (r["peak_gflops"] * 1e9) * 1e3, rel_tol=1e-9)
        assert r["threads"] == 1
        if r["impl"].startswith("rnnext."):  # "<isa> <planner's path>[/<backward's>]"
            isa, plan = r["path"].split(" ")
            assert isa == tutorial["cpu_isa"] and plan, r["path"]
        else:
            assert r["path"] is None
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


def test_targets_are_read_off_the_rows(tmp_path: Path) -> None:
    """benchmarks.targets flags exactly the rows that miss issue 11's targets (made-up rows, no
    timing): a share under its floor at a GEMM-bound shape, rnnext slower than torch.nn.RNN or than
    ONNX Runtime; rows outside a target's scope are not counted."""
    from benchmarks import report, targets

    def row(impl, case, mode, dtype, B, H, ms, share=None):
        return dict(case=case, mode=mode, impl=impl, median_ms=ms, iqr_ms=0.0, shape="s", T=10, B=B,
                    I=H, H=H, layers=1, bidirectional=False, packed=False, dtype=dtype, device="cpu",
                    threads=2, peak_share=share, gflops=1.0, gemm_share=0.5, floor_ms=0.1, path="p")

    rows = [
        row("rnnext.RNN", "ok", "inference", "float32", 16, 128, 1.0, 0.70),
        row("torch.nn.RNN", "ok", "inference", "float32", 16, 128, 2.0),
        row("onnxruntime", "ok", "inference", "float32", 16, 128, 1.5),
        row("rnnext.RNN", "low", "inference", "float32", 32, 256, 1.0, 0.6999),
        row("torch.nn.RNN", "low", "inference", "float32", 32, 256, 0.9),  # rnnext slower
        row("onnxruntime", "low", "inference", "float32", 32, 256, 1.0),  # a tie is not faster
        row("rnnext.RNN", "small", "inference", "float32", 8, 128, 1.0, 0.10),  # B < 16: no share
        row("rnnext.RNN", "narrow", "training", "float32", 64, 64, 1.0, 0.10),  # H < 128: no share
        row("rnnext.RNN", "ok", "training", "float32", 16, 128, 1.0, 0.59),
        row("rnnext.RNN", "ok", "inference", "float64", 16, 128, 1.0, 0.61),
        row("rnnext.RNN", "ok", "training", "float64", 16, 128, 1.0, 0.30),  # no float64 training target
    ]
    result = dict(rows=rows, threads=2, device="d", commit="c", cpu_isa="avx512")
    got = {c.target.split(" >=")[0]: (c.rows, c.misses) for c in targets.check(result)}
    assert got == {
        "float32 forward": (2, ["low 69.9%"]),
        "float32 forward + backward": (1, ["ok 59.0%"]),
        "float64 forward": (1, []),
        "faster than torch.nn.RNN": (2, ["float32 low inference 0.90x"]),
        "faster than onnxruntime (inference)": (2, ["float32 low inference 1.00x"]),
    }
    assert "low 69.9%" in targets.summary(result) and "low 69.9%" in targets.markdown(result)
    assert "Issue 11's targets" in report.markdown(dict(
        result, machine="m", torch="t", rnnext="r", python="p", command="c", started="s",
        duration_s=1.0, loadavg_start=None, loadavg_end=None, gemm_gflops={}))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    assert targets.main([str(path)]) == 1
    for r in rows:  # every row meets every target
        r["peak_share"] = None if r["peak_share"] is None else 0.9
        r["median_ms"] = 0.5 if r["impl"] == "rnnext.RNN" else 2.0
    path.write_text(json.dumps(result))
    assert targets.main([str(path)]) == 0
    assert targets.summary(result).startswith("Issue 11's targets: met by every row they cover (8 checks)")
    assert targets.check(dict(result, rows=[dict(r, device="cuda") for r in rows])) == []


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


@pytest.mark.parametrize("threads", [1, 2])
def test_timed_block_runs_on_the_reported_threads(threads: int, set_threads) -> None:
    """torch.utils.benchmark.Timer sets torch's thread count around each block (to 1 unless told):
    every block the suite times must see the thread count the results report."""
    import torch

    from benchmarks import timing

    seen: list[int] = []

    def fn() -> None:
        seen.append(torch.get_num_threads())

    other = 2 if threads == 1 else 1
    set_threads(threads)  # the run's count, taken by default
    timing.interleaved({"a": fn, "b": fn}, timing.TimingConfig.quick())
    set_threads(other)  # a count given explicitly wins over the current one
    timing.interleaved({"a": fn}, timing.TimingConfig.quick(), threads=threads)
    assert torch.get_num_threads() == other
    timing.gemm_gflops(torch.float32, torch.device("cpu"), 0.01, threads=threads)
    assert seen and set(seen) == {threads}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fma_peak_is_measured_on_the_run_threads(threads: int, dtype: str) -> None:
    """The FMA peak runs on the thread count asked for, with the ISA asked for, at a rate no real
    core exceeds (a bound far above any CPU's, so the machine's speed cannot fail it): a loop the
    compiler had removed would time as (nearly) nothing, orders of magnitude above the bound."""
    import torch

    from benchmarks import timing
    from rnnext import _C

    isas = _C._cpu_isas()
    assert isas[-1] == "base" and _C._cpu_isa() in isas
    before = torch.get_num_threads()
    for isa in isas:
        gflops, ran, got = timing.fma_peak(getattr(torch, dtype), 0.02, threads, isa)
        lanes = {"avx512": 64, "avx2": 32, "base": 16}[isa] // (4 if dtype == "float32" else 8)
        # lanes x 2 FLOPs per FMA x 4 FMA units per core (today's have 2) x 8 GHz
        bound = lanes * 2 * 4 * 8.0 * threads
        assert got == isa and ran == threads and 0 < gflops < bound, (isa, gflops, bound)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="dtype"):
        _C._fma_peak("float16")
    with pytest.raises(ValueError, match="ISA"):
        _C._fma_peak("float32", "sse9")


def test_run_config_from_the_command_line(set_threads) -> None:
    import dataclasses

    import torch

    from benchmarks import cases
    from benchmarks.config import parse

    # (parse sets torch's thread count to the run's; the set_threads fixture puts it back after)
    argv = ["--quick", "--cases", "edges,edge-3l,tutorial", "--dtypes", "float32,bfloat16",
            "--devices", "cpu", "--threads", "1", "--no-onnx"]
    cfg, list_only = parse(argv, lambda d, t: f"m-{t}t")
    assert torch.get_num_threads() == 1
    assert not list_only and cfg is not None
    assert [c.name for c in cfg.cases] == cases.GROUPS["edges"] + ["tutorial"]  # each case once
    assert cfg.pairs() == [("cpu", "float32")] and cfg.threads == 1 and cfg.machine == "m-1t-quick"
    assert any("bfloat16 not run" in n for n in cfg.notes)
    assert not cfg.onnx and not cfg.compile and "--quick" in cfg.compile_off
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threads = 2  # type: ignore[misc]
    off = cfg.without_compile("too slow")
    assert off is not cfg and (off.compile, off.compile_off) == (False, "too slow")
    assert parse(["--list"]) == (None, True)
    with pytest.raises(SystemExit):
        parse(["--cases", "no-such-case"])


def test_cuda_path_is_asked_of_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path of a CUDA row is what rnnext._C._cuda_path answers (the planner itself, compiled only in
    the CUDA build), under the RNNEXT_CUDA_PATH the row ran with; a build without it gives None."""
    import os

    import torch

    from benchmarks import cases, impls
    from rnnext import _C

    case, cuda0 = cases.ALL_CASES["medium"], torch.device("cuda", 0)
    if not hasattr(_C, "_cuda_path"):
        assert impls.path_of("rnnext.RNN", case, torch.float32, cuda0, "training") is None
    calls = []

    def planner(dtype: str, B: int, H: int, backward: bool, device: int) -> str:
        forced = os.environ.get(impls.CUDA_PATH_ENV)
        calls.append((dtype, B, H, backward, device, forced))
        return forced or ("bwd-plan" if backward else "fwd-plan")

    monkeypatch.setattr(_C, "_cuda_path", planner, raising=False)
    monkeypatch.delenv(impls.CUDA_PATH_ENV, raising=False)
    assert impls.path_of("rnnext.RNN", case, torch.float32, cuda0, "inference") == "fwd-plan"
    assert impls.path_of("rnnext.RNN", case, torch.bfloat16, cuda0, "training") == "fwd-plan/bwd-plan"
    assert impls.path_of(impls.FALLBACK_IMPL, case, torch.float32, cuda0, "training") == "fallback"
    assert impls.path_of("torch.nn.RNN", case, torch.float32, cuda0, "training") is None
    assert calls[0] == ("float32", 32, 128, False, 0, None)
    assert calls[1][:4] == ("bfloat16", 32, 128, False) and calls[2][3] is True
    assert impls.CUDA_PATH_ENV not in os.environ  # the forced setting did not leak
    monkeypatch.setenv(impls.CUDA_PATH_ENV, "smem")  # an override the user set is what ran
    assert impls.path_of("rnnext.RNN", case, torch.float32, cuda0, "inference") == "smem"
    assert os.environ[impls.CUDA_PATH_ENV] == "smem"


def test_cpu_path_is_the_kernels_isa_and_the_planners_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks import cases, impls
    from rnnext import _C

    cpu = torch.device("cpu")
    case = cases.ALL_CASES["tutorial"]
    monkeypatch.delenv("RNNEXT_CPU_PATH", raising=False)
    plan = _C._cpu_plan(case.T, case.B, case.I, case.H, torch.float32, False, False).split(":")[0]
    assert impls.path_of("rnnext.RNN", case, torch.float32, cpu, "inference") == f"{_C._cpu_isa()} {plan}"
    # The row names what the planner picks, so forcing a path shows in it.
    monkeypatch.setenv("RNNEXT_CPU_PATH", "blas")
    assert impls.path_of("rnnext.RNN", case, torch.float32, cpu, "training") == f"{_C._cpu_isa()} blas"
    assert impls.path_of("torch.nn.RNN", case, torch.float32, cpu, "training") is None


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_run(tmp_path: Path) -> None:
    """On a GPU: the one driver times CUDA rows with events, with the planner's path per row."""
    import torch

    from benchmarks import cases, impls

    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--machine", "g",
           "--devices", "cuda", "--cases", "tutorial,medium", "--dtypes", "float32"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "g.json").read_text())
    assert res["cuda"]["gpu"] == torch.cuda.get_device_name(0)
    rows = {(r["case"], r["mode"], r["impl"]): r for r in res["rows"]}
    for (case, mode, impl), r in rows.items():
        assert r["device"] == "cuda" and r["median_ms"] > 0 and r["peak_share"] is None
        if impl.startswith("rnnext."):
            want = impls.path_of(impl, cases.ALL_CASES[case], torch.float32, torch.device("cuda", 0), mode)
            assert r["path"] == want and want is not None
    assert rows[("medium", "inference", impls.FALLBACK_IMPL)]["path"] == "fallback"


def test_tolerance_allows_cudnn_tf32_only_on_cuda() -> None:
    import torch

    from benchmarks.impls import tolerance

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert tolerance(torch.float32, "inference", cpu) == 2e-5
    assert tolerance(torch.float64, "training", cuda) == 1e-9
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        assert tolerance(torch.float32, "inference", cuda) > tolerance(torch.float32, "inference", cpu)
        torch.backends.cudnn.allow_tf32 = False
        assert tolerance(torch.float32, "inference", cuda) == tolerance(torch.float32, "inference", cpu)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def test_driver_times_every_call_on_the_threads_it_reports(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           set_threads) -> None:
    """End to end through ``python -m benchmarks --threads 2``: every call the driver makes of an
    implementation (the check before timing, the warm-up, calibration and the timed blocks) sees
    the thread count the results report."""
    import torch

    from benchmarks import cli, impls

    seen: list[int] = []
    build = impls.build_impls

    def with_probe(*args, **kwargs):
        built, skipped = build(*args, **kwargs)
        forward = built[1].forward  # rnnext.RNN

        def probed(inp, h0):
            seen.append(torch.get_num_threads())
            return forward(inp, h0)

        built[1] = impls.Impl(built[1].name, probed, built[1].params)
        return built, skipped

    monkeypatch.setattr(impls, "build_impls", with_probe)
    set_threads(1)
    argv = ["--quick", "--cases", "tutorial", "--no-onnx", "--devices", "cpu", "--threads", "2",
            "--out", str(tmp_path), "--machine", "m"]
    assert cli.main(argv) == 0
    res = json.loads((tmp_path / "m.json").read_text())
    assert res["threads"] == 2 and {r["threads"] for r in res["rows"]} == {2}
    assert res["fma_peak_gflops"]["cpu/float32"]["threads"] == 2
    assert len(seen) > 10 and set(seen) == {2}
