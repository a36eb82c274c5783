"""``python -m benchmarks``: rnnext against torch.nn (and extras) over a grid of RNN shapes, on the CPU
and on CUDA, with one set of cases, one timer per device, one FLOP count and one report.

Run ``python -m benchmarks --help`` for the options. The results go to ``<out>/<machine>.json``,
``<out>/<machine>.md`` and ``<out>/<machine>.png`` (``--out`` defaults to ``benchmarks/results``).
The machine name defaults to ``cpu-<cpu model slug>-<threads>t`` (e.g. ``cpu-amd-epyc-2t``), or
``cuda-<gpu model slug>`` when CUDA is among the devices, with ``-quick`` appended under ``--quick``
so a smoke run never overwrites a full one; ``--machine`` sets it.

Every row carries its achieved GFLOP/s against two references measured in the same run on the same
threads: the FMA peak (CPU: register-only FMA chains in the extension, the ceiling) and torch.mm's
rate (the BLAS torch uses; on CUDA the only one), and the path rnnext ran as the extension reports
it (CPU: the kernels' ISA; CUDA: the planner's choice).
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

import rnnext

from . import cases as cases_mod
from . import impls as impls_mod
from . import report, timing
from .cases import Case
from .config import DTYPES, RunConfig, parse

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


class Progress:
    """A plain progress bar on stderr: redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, total: int, stream=None) -> None:
        # sys.stderr at the call, not at import (pytest swaps it per test)
        self.total, self.done, self.stream = total, 0, sys.stderr if stream is None else stream
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


@dataclass
class CaseResult:
    """One case's rows and skip notes, and, if its compile was too slow, why compiling stops."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    stop_compiling: Optional[str] = None


def run_case(case: Case, device: torch.device, dtype: torch.dtype, cfg: RunConfig,
             progress: Progress) -> CaseResult:
    """Check and time every implementation of one case in each mode of ``cfg``."""
    res = CaseResult()
    dname, tname = device.type, str(dtype).replace("torch.", "")

    def skip(impl: str, mode: str, reason: str) -> None:
        res.skipped.append(dict(case=case.name, mode=mode, impl=impl, device=dname, dtype=tname,
                                reason=reason))
        if reason.startswith(("failed", "output mismatch")):  # never only in the results file
            print(f"\nWARNING: {impl} at {case.name}/{mode} ({dname}, {tname}): {reason}", file=sys.stderr)

    ref = impls_mod.make_reference(case, dtype, device)
    inputs = impls_mod.make_inputs(case, dtype, device)
    use_compile = cfg.compile and dname == "cpu"
    impls, skipped_impls = impls_mod.build_impls(
        case, ref, inputs, threads=cfg.threads, compile_=use_compile, onnx=cfg.onnx,
        compile_max_steps=cfg.compile_max_steps, cuda_fallback=cfg.cuda_fallback,
    )
    for name, reason in skipped_impls:
        if name == impls_mod.COMPILE_IMPL and not use_compile:
            reason = cfg.compile_off if dname == "cpu" else "CPU only in this suite"
        for mode in cfg.modes:
            ort_training = name == impls_mod.ORT_IMPL and mode == "training"
            skip(name, mode, "inference only" if ort_training else reason)
    shape_params = {"shape": case.shape(), **case.params()}
    for mode in cfg.modes:
        progress.show(f"{case.name}/{mode} ({dname}, {tname}): checking")
        active = [i for i in impls if mode in i.modes]
        for i in impls:
            if mode not in i.modes:
                skip(i.name, mode, "inference only" if mode == "training" else f"{mode} not supported")
        want = impls_mod.reference_result(impls, inputs, mode)
        tol = impls_mod.tolerance(dtype, mode, device)
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
                if first_s > cfg.compile_timeout and res.stop_compiling is None:
                    res.stop_compiling = (f"skipped: compiling {case.name}/{mode} took {first_s:.0f} s "
                                          f"(> --compile-timeout {cfg.compile_timeout:.0f} s)")
            err = impls_mod.compare(tuple(got), want)
            if impl.name != impls_mod.BASELINE and not err <= tol:
                skip(impl.name, mode, f"output mismatch against torch.nn.RNN: scaled max error {err:.3g} "
                     f"> {tol:g}; not timed")
                continue
            calls[impl.name], errors[impl.name], info[impl.name] = call, err, extra
        progress.show(f"{case.name}/{mode} ({dname}, {tname}): timing {len(calls)} impls")
        alone = [i.name for i in active if i.alone and i.name in calls]
        groups = [{n: c for n, c in calls.items() if n not in alone}] + [{n: calls[n]} for n in alone]
        results = {}
        for group in groups:  # the others interleaved, then each spinning one on its own
            if alone:
                time.sleep(timing.SETTLE_S)  # a spinning implementation ran (its check, or its block)
            results.update(timing.interleaved(
                group, cfg.timing,
                on_round=lambda r, m=mode: progress.show(f"{case.name}/{m} ({dname}, {tname}): round {r}",
                                                         True),
                threads=cfg.threads, device=device,
            ))
        if alone:
            time.sleep(timing.SETTLE_S)  # before the next mode's or case's checks and blocks
        results = {n: results[n] for n in calls}
        fl = cases_mod.flops(case, mode)
        base = results.get(impls_mod.BASELINE)
        for name, st in results.items():
            res.rows.append(dict(
                case=case.name, mode=mode, impl=name, median_ms=st.median * 1e3, iqr_ms=st.iqr * 1e3,
                **shape_params, tokens=cases_mod.tokens(case), dtype=tname, device=dname, threads=cfg.threads,
                path=impls_mod.path_of(name, case, dtype, device, mode),
                flops=fl, gflops=fl / st.median / 1e9,
                speedup_vs_torch=(base.median / st.median) if base else None,
                max_err=errors[name], samples=st.samples, calls_per_sample=st.number, **info[name]))
        progress.advance()
    if use_compile:
        torch._dynamo.reset()
    return res


class References:
    """The rates every row is a share of, per (device, dtype), measured at the start, after every case
    (shortly; not under --quick) and at the end; other processes only slow a measurement down, so
    the highest is the machine's capability. ``peak``: the CPU's FMA peak (register-only FMA chains
    in the extension, csrc/cpu/peak.cpp), the ceiling; ``gemm``: torch.mm's rate, the BLAS torch
    uses, a second reference (on CUDA the only one)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.gemm: dict[str, dict] = {}
        self.peak: dict[str, dict] = {}
        self.notes: list[str] = []
        self.gemm_s, self.gemm_between = (0.2, 0.0) if cfg.quick else (1.0, 0.3)
        self.peak_s, self.peak_between = (0.1, 0.0) if cfg.quick else (0.5, 0.1)

    def measure(self, dev: str, dt: str, between: bool = False) -> None:
        key, threads = f"{dev}/{dt}", self.cfg.threads
        gemm_s, peak_s = (self.gemm_between, self.peak_between) if between else (self.gemm_s, self.peak_s)
        if gemm_s:
            rate = timing.gemm_gflops(DTYPES[dt], torch.device(dev), gemm_s, threads)
            g = self.gemm.setdefault(key, {"n": 2048 if dev == "cpu" else 8192, "start": rate, "samples": []})
            g["samples"].append(rate)
        if dev == "cpu" and peak_s:
            rate, ran, isa = timing.fma_peak(DTYPES[dt], peak_s, threads)
            if ran != threads:
                self.notes.append(f"the FMA peak ({key}) ran on {ran} threads, not {threads}")
            p = self.peak.setdefault(key, {"isa": isa, "threads": ran, "start": rate, "samples": []})
            p["samples"].append(rate)

    def finish(self) -> None:
        for ref in (self.gemm, self.peak):
            for g in ref.values():
                g["end"] = g["samples"][-1]
                g["used"] = max(g["samples"])

    def annotate(self, row: dict) -> None:
        """Adds the references and the row's shares of them; floor_ms: the row's FLOPs at the ceiling
        (the FMA peak on the CPU, torch.mm's rate on CUDA)."""
        key = f"{row['device']}/{row['dtype']}"
        gemm, peak = self.gemm[key]["used"], self.peak.get(key, {}).get("used")
        row["gemm_gflops"], row["gemm_share"] = gemm, row["gflops"] / gemm
        row["peak_gflops"] = peak
        row["peak_share"] = row["gflops"] / peak if peak else None
        row["floor_ms"] = row["flops"] / ((peak or gemm) * 1e9) * 1e3


def run(cfg: RunConfig) -> dict:
    """Runs ``cfg``; returns the results (what goes into the JSON file)."""
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    load0 = _loadavg()
    gpu = torch.cuda.get_device_name(0) if "cuda" in cfg.devices else None
    device_desc = f"{cpu_model()} ({os.cpu_count()} logical CPUs)" + (f"; {gpu}" if gpu else "")
    pairs = cfg.pairs()
    print(f"rnnext benchmarks on {cfg.machine}: {device_desc}; torch {torch.__version__}, "
          f"{cfg.threads} threads, "
          f"{', '.join(f'{d}/{t}' for d, t in pairs)}, modes {list(cfg.modes)}, {len(cfg.cases)} cases",
          file=sys.stderr)
    refs = References(cfg)
    for dev, dt in pairs:
        refs.measure(dev, dt)
    progress = Progress(len(pairs) * len(cfg.cases) * len(cfg.modes))
    rows: list[dict] = []
    skipped: list[dict] = []
    for dev, dt in pairs:
        for case in cfg.cases:
            r = run_case(case, torch.device(dev), DTYPES[dt], cfg, progress)
            rows += r.rows
            skipped += r.skipped
            if r.stop_compiling:
                cfg = cfg.without_compile(r.stop_compiling)
            refs.measure(dev, dt, between=True)
    progress.show("references (end)")
    progress.close()
    for dev, dt in pairs:
        refs.measure(dev, dt)
    refs.finish()
    for row in rows:
        refs.annotate(row)
    result = dict(
        machine=cfg.machine,
        device=device_desc,
        cpu=cpu_model(),
        gpu=gpu,
        torch=torch.__version__,
        rnnext=rnnext.__version__,
        commit=_git_commit(),
        python=platform.python_version(),
        threads=cfg.threads,
        devices=list(cfg.devices),
        dtypes=sorted({t for _, t in pairs}, key=list(DTYPES).index),
        modes=list(cfg.modes),
        cases=[dict(name=c.name, shape=c.shape(), note=c.note, **c.params()) for c in cfg.cases],
        timing=dict(cfg.timing.__dict__),
        command=cfg.command,
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        duration_s=round(time.perf_counter() - t_start, 1),
        loadavg_start=load0,
        loadavg_end=_loadavg(),
        gemm_gflops=refs.gemm,
        fma_peak_gflops=refs.peak,
        cpu_isa=impls_mod.cpu_isa() if "cpu" in cfg.devices else None,
        cuda=impls_mod.cuda_environment() if "cuda" in cfg.devices else None,
        notes=list(cfg.notes) + refs.notes,
        skipped=skipped,
        rows=rows,
    )
    busy = _busy_note(load0, result["loadavg_end"], cfg.threads)
    if busy:
        result["notes"].append(busy)
    return result


def write(result: dict, out: Path) -> None:
    """<out>/<machine>.json, .md and .png (the plot skipped, with a note, without matplotlib)."""
    out.mkdir(parents=True, exist_ok=True)
    base = out / result["machine"]
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


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, list_only = parse(argv, machine_name)
    if list_only:
        for c in cases_mod.DEFAULT_CASES + cases_mod.EXTRA_CASES:
            default = "default" if c in cases_mod.DEFAULT_CASES else "extra"
            print(f"{c.name:20s} {default:8s} {c.shape():40s} {c.note}")
        for group, names in cases_mod.GROUPS.items():
            print(f"{group:20s} {'group':8s} {', '.join(names)}")
        return 0
    if not cfg.pairs():
        print("nothing to run (no device, or no dtype it runs)", file=sys.stderr)
        return 2
    write(run(cfg), cfg.out)
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
