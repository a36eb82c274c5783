"""``python -m benchmarks``: rnnext against torch.nn (and extras) over a grid of RNN shapes.

Run ``python -m benchmarks --help`` for the options. The results go to ``<out>/<machine>.json``,
``<out>/<machine>.md`` and ``<out>/<machine>.png`` (``--out`` defaults to ``benchmarks/results``).
The machine name defaults to ``cpu-<cpu model slug>-<threads>t`` (e.g. ``cpu-amd-epyc-2t``), or
``cuda-<gpu model slug>`` when CUDA is among the devices, with ``-quick`` appended under ``--quick``
so a smoke run never overwrites a full one; ``--machine`` sets it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

import rnnext

from . import cases as cases_mod
from . import impls as impls_mod
from . import report, timing
from .cases import Case

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODES = ("inference", "training")
HERE = Path(__file__).resolve().parent


def _slug(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", " ", text, flags=re.I)
    text = re.sub(r"@.*$", " ", text)
    text = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_name(devices: list[str], threads: int) -> str:
    """``cuda-<gpu slug>`` when CUDA is benchmarked, else ``cpu-<cpu slug>-<threads>t``."""
    if "cuda" in devices:
        return "cuda-" + _slug(torch.cuda.get_device_name(0))
    return f"cpu-{_slug(cpu_model())}-{threads}t"


def _git_commit() -> str:
    try:
        root = HERE.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rnnext", "csrc"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rnnext.RNN / rnnext.RNNCell against torch.nn on the same weights, same process, "
        "interleaved; writes <out>/<machine>.json, .md and .png.",
    )
    p.add_argument("--cases", type=_csv, default=None,
                   help="comma-separated case names (default: the default grid; --list shows all)")
    p.add_argument("--modes", type=_csv, default=list(MODES), help="inference,training (default: both)")
    p.add_argument("--dtypes", type=_csv, default=["float32"], help="float32,float64 (default: float32)")
    p.add_argument("--devices", type=_csv, default=None,
                   help="cpu,cuda (default: cpu, plus cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch (and onnxruntime) intra-op threads (default: torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a few cases, tiny repeats, no torch.compile (seconds, not minutes)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default: %(default)s)")
    p.add_argument("--machine", default=None, help="results file name (default: see the module docstring)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(nn.RNN)")
    p.add_argument("--compile", action="store_true", help="include torch.compile(nn.RNN) under --quick too")
    p.add_argument("--compile-max-steps", type=int, default=20,
                   help="compile only cases with T*layers*directions up to this (Inductor unrolls the "
                   "sequence; compile time grows with it) (default: %(default)s)")
    p.add_argument("--compile-timeout", type=float, default=120.0,
                   help="after a compile slower than this many seconds, skip torch.compile for the rest "
                   "of the run (default: %(default)s)")
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument("--budget", type=float, default=None,
                   help="timing seconds per (case, mode), all implementations together "
                   "(default 2, quick 0.1)")
    p.add_argument("--min-rounds", type=int, default=None,
                   help="interleaved rounds at least (default 5, quick 3)")
    p.add_argument("--note", action="append", default=[], help="a note to record in the results (repeatable)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {MODES}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {tuple(DTYPES)}")
    if args.devices is not None:
        for d in args.devices:
            if d not in ("cpu", "cuda"):
                p.error(f"unknown device {d!r}; choose from ('cpu', 'cuda')")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    return args


class Progress:
    """A plain progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.start = time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.label = ""

    def show(self, label: str, minor: bool = False) -> None:
        """Draw the bar with ``label``; ``minor`` updates (each timing round) only on a terminal."""
        if not self.tty and (minor or label == self.label):
            return
        self.label = label
        width = 24
        filled = int(width * self.done / max(1, self.total))
        elapsed = time.perf_counter() - self.start
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{report.fmt_seconds(elapsed)} {label}")
        if self.tty:
            self.stream.write("\r" + line[:150].ljust(150))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_case(
    case: Case,
    device: torch.device,
    dtype: torch.dtype,
    modes: list[str],
    args: argparse.Namespace,
    cfg: timing.TimingConfig,
    state: dict,
    progress: Progress,
) -> tuple[list[dict], list[dict]]:
    """Check and time every implementation of one case in each mode; returns (rows, skipped)."""
    rows: list[dict] = []
    skipped: list[dict] = []
    dname, tname = device.type, str(dtype).replace("torch.", "")

    def skip(impl: str, mode: str, reason: str) -> None:
        skipped.append(dict(case=case.name, mode=mode, impl=impl, device=dname, dtype=tname, reason=reason))
        if reason.startswith(("failed", "output mismatch")):  # never only in the results file
            print(f"\nWARNING: {impl} at {case.name}/{mode} ({dname}, {tname}): {reason}", file=sys.stderr)

    ref = impls_mod.make_reference(case, dtype, device)
    inputs = impls_mod.make_inputs(case, dtype, device)
    use_compile = state["compile"] and dname == "cpu"
    impls, skipped_impls = impls_mod.build_impls(
        case, ref, inputs, threads=state["threads"], compile_=use_compile, onnx=not args.no_onnx,
        compile_max_steps=args.compile_max_steps,
    )
    for name, reason in skipped_impls:
        if name == impls_mod.COMPILE_IMPL and not use_compile:
            reason = state["compile_reason"] if dname == "cpu" else "CPU only in this suite"
        for mode in modes:
            ort_training = name == impls_mod.ORT_IMPL and mode == "training"
            skip(name, mode, "inference only" if ort_training else reason)
    shape_params = {"shape": case.shape(), **case.params()}
    for mode in modes:
        progress.show(f"{case.name}/{mode} ({dname}, {tname}): checking")
        active = [i for i in impls if mode in i.modes]
        for i in impls:
            if mode not in i.modes:
                skip(i.name, mode, "inference only" if mode == "training" else f"{mode} not supported")
        want = impls_mod.reference_result(impls, inputs, mode)
        tol = impls_mod.tolerance(dtype, mode)
        calls, errors, info = {}, {}, {}
        for impl in active:
            call = impls_mod.make_call(impl, inputs, mode)
            t0 = time.perf_counter()
            try:
                got = call()
            except Exception as e:  # an extra that cannot run this case: note it, go on
                first = (str(e).strip().splitlines() or [""])[0][:160]
                skip(impl.name, mode, f"failed: {type(e).__name__}: {first}")
                if os.environ.get("RNNEXT_BENCH_DEBUG"):
                    traceback.print_exc()
                continue
            first_s = time.perf_counter() - t0
            extra = dict(impl.info)
            if impl.name == impls_mod.COMPILE_IMPL:
                extra["compile_s"] = round(first_s, 2)
                if first_s > args.compile_timeout:
                    state["compile"] = False
                    state["compile_reason"] = (
                        f"skipped: compiling {case.name}/{mode} took {first_s:.0f} s "
                        f"(> --compile-timeout {args.compile_timeout:.0f} s)")
            err = impls_mod.compare(tuple(got), want)
            if impl.name != impls_mod.BASELINE and not err <= tol:
                skip(impl.name, mode, f"output mismatch against torch.nn.RNN: scaled max error {err:.3g} "
                     f"> {tol:g}; not timed")
                continue
            calls[impl.name], errors[impl.name], info[impl.name] = call, err, extra
        progress.show(f"{case.name}/{mode} ({dname}, {tname}): timing {len(calls)} impls")
        results = timing.interleaved(
            calls, cfg,
            on_round=lambda r, m=mode: progress.show(f"{case.name}/{m} ({dname}, {tname}): round {r}", True),
            threads=state["threads"],
        )
        fl = cases_mod.flops(case, mode)
        base = results.get(impls_mod.BASELINE)
        for name, st in results.items():
            row = dict(case=case.name, mode=mode, impl=name, median_ms=st.median * 1e3, iqr_ms=st.iqr * 1e3,
                       **shape_params, tokens=cases_mod.tokens(case),
                       dtype=tname, device=dname, threads=state["threads"],
                       path=impls_mod.path_of(name, device),
                       flops=fl, gflops=fl / st.median / 1e9,
                       speedup_vs_torch=(base.median / st.median) if base else None,
                       max_err=errors[name], samples=st.samples, calls_per_sample=st.number, **info[name])
            rows.append(row)
        progress.advance()
    if state["compile"] and use_compile:
        torch._dynamo.reset()
    return rows, skipped


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        for c in cases_mod.DEFAULT_CASES + cases_mod.EXTRA_CASES:
            default = "default" if c in cases_mod.DEFAULT_CASES else "extra"
            print(f"{c.name:20s} {default:8s} {c.shape():40s} {c.note}")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cuda_ok = torch.cuda.is_available()
    devices = args.devices if args.devices is not None else (["cpu", "cuda"] if cuda_ok else ["cpu"])
    notes = list(args.note)
    if "cuda" in devices and not cuda_ok:
        notes.append("CUDA was requested but is not available: CUDA cases skipped")
        devices = [d for d in devices if d != "cuda"]
    if not devices:
        print("no device to run on", file=sys.stderr)
        return 2
    selected = cases_mod.select(args.cases, args.quick)
    cfg = timing.TimingConfig.quick() if args.quick else timing.TimingConfig()
    if args.budget is not None or args.min_rounds is not None:
        cfg = dataclasses.replace(
            cfg,
            budget_s=args.budget if args.budget is not None else cfg.budget_s,
            min_rounds=args.min_rounds if args.min_rounds is not None else cfg.min_rounds,
        )
    machine = args.machine or (machine_name(devices, threads) + ("-quick" if args.quick else ""))
    compile_on = not args.no_compile and (not args.quick or args.compile)
    state = dict(
        threads=threads,
        compile=compile_on,
        compile_reason="disabled by --no-compile" if args.no_compile
        else "skipped under --quick (add --compile to include it)",
    )
    args.out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    load0 = _loadavg()
    gpu = torch.cuda.get_device_name(0) if "cuda" in devices else None
    device_desc = f"{cpu_model()} ({os.cpu_count()} logical CPUs)" + (f"; {gpu}" if gpu else "")
    print(f"rnnext benchmarks on {machine}: {device_desc}; torch {torch.__version__}, {threads} threads, "
          f"devices {devices}, dtypes {args.dtypes}, modes {args.modes}, {len(selected)} cases",
          file=sys.stderr)

    # The references, measured at the start, after every case (shortly; not under --quick) and at the
    # end; other processes only slow a measurement down, so the highest is the machine's capability:
    # the CPU's FMA peak (register-only FMA chains, csrc/cpu/peak.cpp), the ceiling every row is a
    # share of, and torch.mm's rate, the BLAS torch uses (on CUDA only the latter).
    gemm_min, gemm_between = (0.2, 0.0) if args.quick else (1.0, 0.3)
    peak_s, peak_between = (0.1, 0.0) if args.quick else (0.5, 0.1)
    gemm: dict[str, dict] = {}
    peak: dict[str, dict] = {}

    def measure(dev: str, dt: str, gemm_s: float, fma_s: float) -> None:
        key = f"{dev}/{dt}"
        if gemm_s:
            rate = timing.gemm_gflops(DTYPES[dt], torch.device(dev), gemm_s, threads)
            gemm.setdefault(key, {"n": 2048 if dev == "cpu" else 8192, "start": rate, "samples": []})
            gemm[key]["samples"].append(rate)
        if dev == "cpu" and fma_s:
            rate, ran, isa = timing.fma_peak(DTYPES[dt], fma_s, threads)
            if ran != threads:
                notes.append(f"the FMA peak ran on {ran} threads, not {threads}")
            peak.setdefault(key, {"isa": isa, "threads": ran, "start": rate, "samples": []})
            peak[key]["samples"].append(rate)

    for dev in devices:
        for dt in args.dtypes:
            measure(dev, dt, gemm_min, peak_s)

    progress = Progress(len(devices) * len(args.dtypes) * len(selected) * len(args.modes))
    rows: list[dict] = []
    skipped: list[dict] = []
    for dev in devices:
        for dt in args.dtypes:
            for case in selected:
                r, s = run_case(case, torch.device(dev), DTYPES[dt], args.modes, args, cfg, state, progress)
                rows += r
                skipped += s
                measure(dev, dt, gemm_between, peak_between)
    progress.show("references (end)")
    progress.close()
    for dev in devices:
        for dt in args.dtypes:
            measure(dev, dt, gemm_min, peak_s)
            for ref in (gemm, peak):
                g = ref.get(f"{dev}/{dt}")
                if g is not None:
                    g["end"] = g["samples"][-1]
                    g["used"] = max(g["samples"])
    for row in rows:
        key = f"{row['device']}/{row['dtype']}"
        used = gemm[key]["used"]
        row["gemm_gflops"] = used
        row["gemm_share"] = row["gflops"] / used
        p = peak.get(key)
        row["peak_gflops"] = p["used"] if p else None
        row["peak_share"] = row["gflops"] / p["used"] if p else None
        # The least time the case's FLOPs take: at the FMA peak (CPU), else at torch.mm's rate (CUDA).
        row["floor_ms"] = row["flops"] / ((p["used"] if p else used) * 1e9) * 1e3

    result = dict(
        machine=machine,
        device=device_desc,
        cpu=cpu_model(),
        gpu=gpu,
        torch=torch.__version__,
        rnnext=rnnext.__version__,
        commit=_git_commit(),
        python=platform.python_version(),
        threads=threads,
        devices=devices,
        dtypes=args.dtypes,
        modes=args.modes,
        cases=[dict(name=c.name, shape=c.shape(), note=c.note, **c.params()) for c in selected],
        timing=dict(cfg.__dict__),
        command=" ".join(["python -m benchmarks"] + [shlex.quote(a) for a in (argv if argv is not None
                                                                                else sys.argv[1:])]),
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        duration_s=round(time.perf_counter() - t_start, 1),
        loadavg_start=load0,
        loadavg_end=_loadavg(),
        gemm_gflops=gemm,
        fma_peak_gflops=peak,
        cpu_isa=impls_mod.cpu_isa(),
        notes=notes,
        skipped=skipped,
        rows=rows,
    )
    busy = _busy_note(load0, result["loadavg_end"], threads)
    if busy:
        result["notes"].append(busy)
    base = args.out / machine
    report.write_json(result, base.with_suffix(".json"))
    why_not = report.plot(result, base.with_suffix(".png"))
    if why_not:
        result["notes"].append(why_not)
        report.write_json(result, base.with_suffix(".json"))
    md = report.markdown(result)
    base.with_suffix(".md").write_text(md + "\n")
    print(md)
    written = [base.with_suffix(s) for s in (".json", ".md") + (() if why_not else (".png",))]
    print("wrote " + ", ".join(str(w) for w in written), file=sys.stderr)
    if why_not:
        print(f"note: {why_not}", file=sys.stderr)
    return 0


def _busy_note(start: Optional[str], end: Optional[str], threads: int) -> Optional[str]:
    """A warning when other work ran on the machine: the 1-minute load average at the start, or at
    the end less this run's own threads, above ~3/4 of the CPUs."""
    ncpu = os.cpu_count() or 1
    first = float(start.split()[0]) if start else 0.0
    last = max(0.0, float(end.split()[0]) - threads) if end else 0.0
    if max(first, last) <= 0.75 * ncpu:
        return None
    plural = "s" if threads != 1 else ""
    return (f"the machine had other work (1-minute load average {first:.1f} at the start, {last:.1f} at "
            f"the end less this run's {threads} thread{plural}, on {ncpu} CPUs), so the timings are noisy "
            "and multi-threaded implementations lose most (their threads wait for descheduled siblings); "
            "compare implementations within a row (they were interleaved), and re-run on an idle "
            "machine before drawing conclusions")


def _loadavg() -> Optional[str]:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return None
