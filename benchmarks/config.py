"""What one benchmark run does: :class:`RunConfig`, built from the command line by :func:`parse`.

The configuration is a frozen value: the run loop never changes it behind a caller's back. The one
decision taken during a run (stop compiling after a compile slower than ``compile_timeout``) makes a
new configuration with :meth:`RunConfig.without_compile`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from . import cases as cases_mod
from .cases import Case
from .timing import TimingConfig

__all__ = ["RunConfig", "parse", "DTYPES", "MODES", "CPU_DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
CPU_DTYPES = ("float32", "float64")  # rnnext's CPU kernels
MODES = ("inference", "training")
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class RunConfig:
    """One run: which cases on which devices and dtypes, how long to time, which extras to include."""

    cases: tuple[Case, ...]
    devices: tuple[str, ...] = ("cpu",)
    # Per device: the dtypes run there (the default: float32 on CPU, float32 and bfloat16 on CUDA).
    dtypes: dict = field(default_factory=lambda: {"cpu": ("float32",)})
    modes: tuple[str, ...] = MODES
    threads: int = 1
    timing: TimingConfig = TimingConfig()
    quick: bool = False
    compile: bool = True  # torch.compile(nn.RNN), CPU only
    compile_off: str = ""  # why not, when compile is False
    compile_max_steps: int = 20
    compile_timeout: float = 120.0
    onnx: bool = True
    cuda_fallback: bool = True  # on CUDA, also time rnnext forced onto its per-step path
    out: Path = HERE / "results"
    machine: str = "unnamed"
    notes: tuple[str, ...] = ()
    command: str = "python -m benchmarks"

    def pairs(self) -> list[tuple[str, str]]:
        """(device, dtype) in run order."""
        return [(d, t) for d in self.devices for t in self.dtypes.get(d, ())]

    def without_compile(self, reason: str) -> RunConfig:
        return dataclasses.replace(self, compile=False, compile_off=reason)


def _csv(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rnnext.RNN / rnnext.RNNCell against torch.nn on the same weights, same process, "
        "interleaved, on the CPU and on CUDA; writes <out>/<machine>.json, .md and .png.",
    )
    p.add_argument("--cases", type=_csv, default=None,
                   help="comma-separated case names or groups (default: the default grid; --list shows all)")
    p.add_argument("--modes", type=_csv, default=list(MODES), help="inference,training (default: both)")
    p.add_argument("--dtypes", type=_csv, default=None,
                   help=f"{','.join(DTYPES)} (default: float32 on CPU, float32,bfloat16 on CUDA; the CPU "
                   f"runs only {' and '.join(CPU_DTYPES)})")
    p.add_argument("--devices", type=_csv, default=None,
                   help="cpu,cuda (default: cpu, plus cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch (and onnxruntime) intra-op threads (default: torch's default)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a few cases, tiny repeats, no torch.compile (seconds, not minutes)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="output folder (default: %(default)s)")
    p.add_argument("--machine", default=None,
                   help="results file name (default: cpu-<cpu>-<threads>t or cuda-<gpu>, -quick under "
                   "--quick)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile(nn.RNN)")
    p.add_argument("--compile", action="store_true", help="include torch.compile(nn.RNN) under --quick too")
    p.add_argument("--compile-max-steps", type=int, default=20,
                   help="compile only cases with T*layers*directions up to this (Inductor unrolls the "
                   "sequence; compile time grows with it) (default: %(default)s)")
    p.add_argument("--compile-timeout", type=float, default=120.0,
                   help="after a compile slower than this many seconds, skip torch.compile for the rest "
                   "of the run (default: %(default)s)")
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime")
    p.add_argument("--no-cuda-fallback", action="store_true",
                   help="on CUDA, do not also time rnnext forced onto its per-step path")
    p.add_argument("--budget", type=float, default=None,
                   help="timing seconds per (case, mode), all implementations together "
                   "(default 2, quick 0.1)")
    p.add_argument("--min-rounds", type=int, default=None,
                   help="interleaved rounds at least (default 5, quick 3)")
    p.add_argument("--note", action="append", default=[], help="a note to record in the results (repeatable)")
    p.add_argument("--list", action="store_true", help="list the cases and groups, and exit")
    return p


def parse(argv: list[str], machine_name=None) -> tuple[Optional[RunConfig], bool]:
    """The configuration of ``python -m benchmarks ARGV``, and whether only ``--list`` was asked
    (then the configuration is None). Sets torch's thread count to ``--threads``.
    ``machine_name(devices, threads)`` names the results when ``--machine`` is not given."""
    p = _parser()
    a = p.parse_args(argv)
    if a.list:
        return None, True
    for m in a.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {MODES}")
    for d in a.dtypes or []:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {tuple(DTYPES)}")
    for d in a.devices or []:
        if d not in ("cpu", "cuda"):
            p.error(f"unknown device {d!r}; choose from ('cpu', 'cuda')")
    if a.threads is not None:
        if a.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    notes = list(a.note)
    cuda_ok = torch.cuda.is_available()
    devices = a.devices if a.devices is not None else (["cpu", "cuda"] if cuda_ok else ["cpu"])
    if "cuda" in devices and not cuda_ok:
        notes.append("CUDA was requested but is not available: CUDA cases skipped")
        devices = [d for d in devices if d != "cuda"]
    dtypes: dict[str, tuple[str, ...]] = {}
    for d in devices:
        want = a.dtypes or (["float32"] if d == "cpu" else ["float32", "bfloat16"])
        if d == "cpu":
            dropped = [t for t in want if t not in CPU_DTYPES]
            if dropped:
                notes.append(f"cpu: {', '.join(dropped)} not run (rnnext's CPU kernels support "
                             f"{' and '.join(CPU_DTYPES)})")
            want = [t for t in want if t in CPU_DTYPES]
        dtypes[d] = tuple(want)
    timing = TimingConfig.quick() if a.quick else TimingConfig()
    if a.budget is not None or a.min_rounds is not None:
        timing = dataclasses.replace(
            timing,
            budget_s=a.budget if a.budget is not None else timing.budget_s,
            min_rounds=a.min_rounds if a.min_rounds is not None else timing.min_rounds,
        )
    compile_on = not a.no_compile and (not a.quick or a.compile)
    machine = a.machine
    if machine is None:
        machine = machine_name(devices, threads) if machine_name else "unnamed"
        machine += "-quick" if a.quick else ""
    cfg = RunConfig(
        cases=tuple(cases_mod.select(a.cases, a.quick)),
        devices=tuple(devices),
        dtypes=dtypes,
        modes=tuple(a.modes),
        threads=threads,
        timing=timing,
        quick=a.quick,
        compile=compile_on,
        compile_off="" if compile_on else ("disabled by --no-compile" if a.no_compile
                                           else "skipped under --quick (add --compile to include it)"),
        compile_max_steps=a.compile_max_steps,
        compile_timeout=a.compile_timeout,
        onnx=not a.no_onnx,
        cuda_fallback=not a.no_cuda_fallback,
        out=a.out,
        machine=machine,
        notes=tuple(notes),
        command=" ".join(["python -m benchmarks"] + [shlex.quote(x) for x in argv]),
    )
    return cfg, False
