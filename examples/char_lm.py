r"""A character-level language model trained twice, with torch.nn.RNN and with rnnext.RNN.

Model: ``nn.Embedding(V, E) -> RNN(E, H, layers, batch_first=True) -> nn.Linear(H, V)``, trained to
predict the next character (cross-entropy, Adam, gradient clipping). Corpus: the Python standard
library's own source, which every Python install has: the ``.py`` files directly in
``os.path.dirname(os.__file__)``, sorted by name, concatenated up to ``--chars`` characters (the last
10% held out for validation). No download.

Both runs start from the same seed (so the same initial weights: rnnext.RNN initialises exactly as
torch.nn.RNN), see the same batches in the same order and reseed the global RNG at each epoch (so
dropout draws the same masks). Their epochs are interleaved (torch.nn, rnnext, rnnext, torch.nn, ...)
so both see the same machine load. The script asserts that the two loss curves agree to float
tolerance, prints each one's time per epoch and the speedup, and writes a PNG of both loss curves
(needs matplotlib; without it the PNG is skipped with a note).

The speedup is end to end (embedding, RNN, linear head, softmax, optimiser): the RNN's own share of
the step bounds it. benchmarks/ measures the RNN alone.

    python examples/char_lm.py                       # a few minutes on 2 CPU cores
    python examples/char_lm.py --epochs 20 --chars 2000000 --hidden 256 --layers 2
    python examples/char_lm.py --quick               # seconds: the test suite's mode
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import rnnext
except ImportError:  # a source checkout built in place but not installed: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import rnnext

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- corpus
def load_corpus(n_chars: int) -> tuple[str, list[str]]:
    """The first ``n_chars`` characters of the standard library's top-level ``.py`` files, sorted."""
    stdlib = os.path.dirname(os.__file__)
    names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py"))
    parts, used, total = [], [], 0
    for name in names:
        with open(os.path.join(stdlib, name), encoding="utf-8", errors="replace") as f:
            text = f.read()
        parts.append(text)
        used.append(name)
        total += len(text)
        if total >= n_chars:
            break
    corpus = "".join(parts)[:n_chars]
    if len(corpus) < n_chars:
        print(f"note: the standard library has only {len(corpus)} characters; using all", file=sys.stderr)
    return corpus, used


class Vocab:
    """Characters <-> ids (sorted, so the same corpus gives the same ids everywhere)."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.ids = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.ids[c] for c in text], dtype=torch.long)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def batches(data: Tensor, seq_len: int, batch: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """One epoch: non-overlapping windows of ``seq_len`` (+1 for the targets), shuffled with ``seed``,
    grouped into ``batch``-sized (inputs, targets) pairs of shape ``[batch, seq_len]``."""
    if data.numel() < seq_len + 2:
        return []
    starts = torch.arange(0, data.numel() - seq_len - 1, seq_len)
    order = starts[torch.randperm(starts.numel(), generator=torch.Generator().manual_seed(seed))]
    out = []
    for k in range(0, order.numel() - batch + 1, batch):
        idx = order[k : k + batch, None] + torch.arange(seq_len + 1)  # [batch, seq_len + 1]
        chunk = data[idx]
        out.append((chunk[:, :-1], chunk[:, 1:]))
    return out


# ------------------------------------------------------------------------------------------ model
class CharLM(nn.Module):
    """``Embedding -> RNN (batch_first) -> Linear``; ``rnn_cls`` is ``torch.nn.RNN`` or ``rnnext.RNN``."""

    def __init__(
        self, vocab: int, embed: int, hidden: int, layers: int, dropout: float, rnn_cls: type
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = rnn_cls(embed, hidden, layers, batch_first=True, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor, h: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        out, h = self.rnn(self.embed(x), h)  # [B, T, H], [layers, B, H]
        return self.head(out), h  # logits [B, T, V]


@dataclass
class Run:
    name: str
    model: CharLM
    opt: torch.optim.Optimizer
    losses: list[float] = field(default_factory=list)  # every training step
    val: list[float] = field(default_factory=list)  # after each epoch
    epoch_s: list[float] = field(default_factory=list)


class Progress:
    """A one-line progress bar on stderr (no dependency), redrawn at most 10 times a second."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        self.start = self.last = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        width = 30
        fill = width * done // self.total
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / max(rate, 1e-9)
        sys.stderr.write(
            f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total} "
            f"loss {loss:.3f} {rate:.1f} it/s eta {eta:4.0f}s "
        )
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def train_epoch(run: Run, data: list[tuple[Tensor, Tensor]], clip: float, progress: Progress) -> float:
    run.model.train()
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(data, start=1):
        logits, _ = run.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        run.opt.step()
        run.losses.append(loss.item())
        progress.update(step, run.losses[-1])
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: CharLM, data: list[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in data:
        logits, _ = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        n += y.numel()
    return total / n


@torch.no_grad()
def sample(model: CharLM, vocab: Vocab, prompt: str, n: int, seed: int) -> str:
    """Generate ``n`` characters after ``prompt``, one step at a time, carrying the hidden state."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    logits, h = model(vocab.encode(prompt)[None])  # warm the state up on the prompt
    out = []
    for _ in range(n):
        probs = torch.softmax(logits[0, -1] / 0.8, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        out.append(nxt)
        logits, h = model(torch.tensor([[nxt]]), h)
    return prompt + vocab.decode(out)


# ------------------------------------------------------------------------------------------- plot
def write_png(path: Path, runs: list[Run], steps_per_epoch: int, title: str) -> Optional[str]:
    """Both loss curves (top) and their absolute difference (bottom). Returns a note if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: PNG skipped (pip install matplotlib to get it)"
    ref, new = runs
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1.3])
    steps = range(1, len(ref.losses) + 1)
    ax.plot(steps, ref.losses, lw=2.5, color="tab:blue", alpha=0.6, label="torch.nn.RNN (train)")
    ax.plot(steps, new.losses, lw=1, color="tab:red", ls="--", label="rnnext.RNN (train)")
    epochs_x = [steps_per_epoch * (e + 1) for e in range(len(ref.val))]
    ax.plot(epochs_x, ref.val, "o", ms=9, mfc="none", color="tab:blue", label="torch.nn.RNN (validation)")
    ax.plot(epochs_x, new.val, "x", ms=7, color="tab:red", label="rnnext.RNN (validation)")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    diff = [abs(a - b) for a, b in zip(ref.losses, new.losses)]
    ax2.semilogy(steps, [d if d > 0 else float("nan") for d in diff], color="k", lw=0.8)
    ax2.set_ylabel("|difference|\n(0 not drawn)")
    ax2.set_xlabel("training step")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--chars", type=int, default=300_000, help="corpus size in characters")
    p.add_argument("--embed", type=int, default=32, help="embedding size")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.0, help="between RNN layers (needs --layers > 1)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads; 0 keeps torch's default. Default 1: on a shared machine\n"
                        "a 1-thread run is stable, where oversubscribed OpenMP threads stall")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--tol", type=float, default=None, help="allowed max |loss difference| (default by dtype)")
    p.add_argument("--png", type=Path, default=REPO / "docs" / "char_lm_loss.png", help="loss curve PNG path")
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--sample", type=int, default=200, help="characters to generate at the end (0: none)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for tests (overrides the size flags)")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.chars, a.embed, a.hidden, a.seq_len, a.batch, a.sample = 2, 8_000, 16, 32, 32, 8, 40
    for flag in ("epochs", "chars", "embed", "hidden", "layers", "seq_len", "batch"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return a


def main(argv: Optional[Sequence[str]] = None) -> dict:
    a = parse_args(argv)
    if a.threads < 0:
        raise SystemExit("--threads must be 0 (torch's default) or more")
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    # float32: the two implementations round differently (summation order), and training amplifies
    # those 1e-7 differences slowly (1e-4 to 1e-3 after the default 655 steps), so the float32
    # tolerance is loose and long runs may need --tol; --dtype float64 is the tight check (it agrees
    # to ~1e-15 in the quick run).
    tol = a.tol if a.tol is not None else (1e-2 if dtype == torch.float32 else 1e-8)

    text, files = load_corpus(a.chars)
    vocab = Vocab(text)
    data = vocab.encode(text)
    split = int(len(data) * 0.9)
    train, val = data[:split], data[split:]
    val_batches = batches(val, a.seq_len, a.batch, seed=0) or batches(val, a.seq_len, 1, seed=0)
    steps_per_epoch = len(batches(train, a.seq_len, a.batch, seed=0))
    if steps_per_epoch == 0 or not val_batches:
        raise SystemExit(f"--chars {a.chars} is too small for --seq-len {a.seq_len} and --batch {a.batch}")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    print(
        f"corpus: {len(text):,} chars of Python {platform.python_version()}'s standard library "
        f"({len(files)} files, {files[0]} .. {files[-1]}; sha256 {digest}), vocabulary {len(vocab)}"
    )
    print(
        f"model: Embedding({len(vocab)}, {a.embed}) -> RNN({a.embed}, {a.hidden}, num_layers={a.layers}, "
        f"batch_first=True, dropout={a.dropout}) -> Linear({a.hidden}, {len(vocab)}), {a.dtype}"
    )
    print(
        f"training: {a.epochs} epochs x {steps_per_epoch} steps of [batch {a.batch}, seq {a.seq_len}], "
        f"Adam lr {a.lr}, clip {a.clip}, seed {a.seed}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU"
    )

    def make(name: str, rnn_cls: type) -> Run:
        torch.manual_seed(a.seed)
        model = CharLM(len(vocab), a.embed, a.hidden, a.layers, a.dropout, rnn_cls).to(dtype)
        return Run(name, model, torch.optim.Adam(model.parameters(), lr=a.lr))

    runs = [make("torch.nn", nn.RNN), make("rnnext", rnnext.RNN)]
    ref_state, new_state = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert list(ref_state) == list(new_state), "parameter names differ"
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), f"initial {k} differs between torch.nn and rnnext"
    print("same seed -> identical initial weights in both models: OK")

    show = a.progress if a.progress is not None else sys.stderr.isatty()
    for run in runs:  # warm-up: one forward/backward, untimed, no optimiser step (weights unchanged)
        x, y = batches(train, a.seq_len, a.batch, seed=0)[0]
        logits, _ = run.model(x)
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
        run.opt.zero_grad(set_to_none=True)
    for epoch in range(a.epochs):
        epoch_batches = batches(train, a.seq_len, a.batch, seed=a.seed * 1000 + epoch)
        order = runs if epoch % 2 == 0 else runs[::-1]  # alternate who goes first
        for run in order:
            torch.manual_seed(a.seed * 1000 + epoch)  # same dropout masks in both runs
            label = f"epoch {epoch + 1}/{a.epochs} {run.name:>8}"
            progress = Progress(len(epoch_batches), label, show)
            run.epoch_s.append(train_epoch(run, epoch_batches, a.clip, progress))
            run.val.append(evaluate(run.model, val_batches))
        ref, new = runs
        print(
            f"epoch {epoch + 1}: train loss {statistics.fmean(ref.losses[-steps_per_epoch:]):.4f} / "
            f"{statistics.fmean(new.losses[-steps_per_epoch:]):.4f}, "
            f"val {ref.val[-1]:.4f} / {new.val[-1]:.4f} "
            f"(torch.nn / rnnext); {ref.epoch_s[-1]:.2f} s / {new.epoch_s[-1]:.2f} s"
        )

    ref, new = runs
    diffs = [abs(x - y) for x, y in zip(ref.losses, new.losses)]
    max_diff = max(diffs)
    val_diff = max(abs(x - y) for x, y in zip(ref.val, new.val))
    param_diff = max(
        (p - q).abs().max().item() for p, q in zip(ref.model.parameters(), new.model.parameters())
    )
    t_ref, t_new = statistics.median(ref.epoch_s), statistics.median(new.epoch_s)
    speedup = t_ref / t_new
    print(f"loss curves: {len(diffs)} steps, max |loss(torch.nn) - loss(rnnext)| = {max_diff:.3e} "
          f"(tolerance {tol:g}); validation {val_diff:.3e}; final weights {param_diff:.3e}")
    # Significant digits, not decimals: the figures keep their precision however fast the machine.
    print(f"time per epoch (median of {a.epochs}): torch.nn.RNN {t_ref:.4g} s, rnnext.RNN {t_new:.4g} s "
          f"-> speedup {speedup:.3g}x (whole training step, {torch.get_num_threads()} threads)")
    tenth = max(len(new.losses) // 10, 1)
    first, last = statistics.fmean(new.losses[:tenth]), statistics.fmean(new.losses[-tenth:])
    print(f"rnnext training loss, mean of the first / last {tenth} steps: {first:.3f} -> {last:.3f} "
          f"(uniform guess: {math.log(len(vocab)):.3f}); validation {new.val[-1]:.3f}")

    if not a.no_png:
        title = (f"char LM on the Python stdlib ({len(text):,} chars), H={a.hidden}, "
                 f"layers={a.layers}, {a.dtype}, {torch.get_num_threads()} thread(s)\n"
                 f"per epoch: torch.nn.RNN {t_ref:.3g} s, rnnext.RNN {t_new:.3g} s ({speedup:.3g}x); "
                 f"max |loss diff| {max_diff:.1e}")
        note = write_png(a.png, runs, steps_per_epoch, title)
        print(note or f"wrote {a.png}")
    if a.sample:
        print("sample from the rnnext model:\n" + sample(new.model, vocab, "def ", a.sample, a.seed))

    assert max_diff <= tol, f"loss curves differ by {max_diff:.3e} > {tol:g}"
    assert last < first, "training did not reduce the loss"
    print("char_lm: all checks passed")
    return {"max_loss_diff": max_diff, "speedup": speedup, "epoch_s": (t_ref, t_new)}


if __name__ == "__main__":
    main()
