"""The examples run (each in a subprocess, in a quick mode) and their own checks pass; the GloVe loader
reads good files and rejects malformed ones with the file name and line number."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _load_glove_module():
    spec = importlib.util.spec_from_file_location("rnnext_examples_glove", EXAMPLES / "glove.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


glove = _load_glove_module()


# Every example and the arguments the tests run it with (small sizes; char_lm with two layers and
# dropout, so the two runs must also draw the same dropout masks, and a tolerance tighter than its
# default: a short float32 run agrees to ~1e-6). test_every_example_is_tested keeps this complete.
QUICK = {
    "glove.py": [],
    "text_representation.py": ["--unknown", "mean"],
    "rnn_by_hand.py": ["--seq-len", "7", "--batch", "2", "--input", "3", "--hidden", "5"],
    "rnn_vs_cell.py": ["--seq-len", "9", "--batch", "3", "--input", "5", "--hidden", "7"],
    "char_lm.py": ["--quick", "--layers", "2", "--dropout", "0.3", "--progress", "--tol", "1e-4"],
}


class Example:
    """One example running in a subprocess (all are started at once: most of each run is importing
    torch, which overlaps well); ``result()`` waits for it and checks its exit status."""

    def __init__(self, name: str, args: list[str], out_dir: Path) -> None:
        self.name = name
        self.png: Optional[Path] = None
        self.stdout_path, self.stderr_path = out_dir / f"{name}.out", out_dir / f"{name}.err"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("OMP_NUM_THREADS", "1")
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / name), *args], stdout=out, stderr=err, env=env, cwd=REPO
            )

    # A guard against a hang, not a speed check: many times the few seconds to a minute an example
    # takes here, even with all of them (and other work) sharing two cores.
    def result(self, timeout: float = 900) -> tuple[str, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        out, err = self.stdout_path.read_text(), self.stderr_path.read_text()
        assert rc == 0, f"{self.name} failed ({rc}):\n{out}\n{err}"
        return out, err


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Iterator[dict[str, Example]]:
    out_dir = tmp_path_factory.mktemp("examples")
    png = out_dir / "curves.png"
    started = {}
    try:
        for name, args in QUICK.items():
            extra = ["--png", str(png)] if name == "char_lm.py" else []
            started[name] = Example(name, args + extra, out_dir)
        started["char_lm.py"].png = png
        yield started
    finally:
        for ex in started.values():
            if ex.proc.poll() is None:
                ex.proc.kill()
                ex.proc.wait()


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(QUICK)


def test_glove_example(examples):
    out, _ = examples["glove.py"].result()
    assert "glove_sample.txt: 40 words, dim 8" in out
    assert re.search(r"'king'\s+found", out)
    assert re.search(r"'zebra-not-in-file'\s+unknown -> zeros\s+\[\+0\.000 \+0\.000", out)


def test_text_representation_example(examples):
    out, _ = examples["text_representation.py"].result()
    assert "exactly equal" in out
    assert "not in the file -> 'mean' vector: ['an']" in out
    assert "king - man + woman is closest to: queen" in out
    assert "same output as torch.nn.RNN with the same weights: OK" in out
    assert out.rstrip().endswith("text_representation: all checks passed")


def test_rnn_by_hand_example(examples):
    out, _ = examples["rnn_by_hand.py"].result()
    assert "seq-first   input [7, 2, 3] -> output [7, 2, 5], h_n [1, 2, 5]" in out
    assert "batch_first input [2, 7, 3] -> output [2, 7, 5], h_n [1, 2, 5]" in out
    diff = float(re.search(r"output vs by hand: max \|diff\| = (\S+);", out).group(1))
    assert diff < 1e-12
    assert out.rstrip().endswith("rnn_by_hand: all checks passed")


def test_rnn_vs_cell_example(examples):
    out, _ = examples["rnn_vs_cell.py"].result()
    assert "RNN: output [9, 3, 7], h_n [1, 3, 7];  RNNCell x 9 steps: h [3, 7]" in out
    diff = float(re.search(r"max \|h_n - h_T\| = (\S+),", out).group(1))
    assert diff < 1e-5
    assert out.rstrip().endswith("rnn_vs_cell: all checks passed")


def test_char_lm_quick(examples):
    ex = examples["char_lm.py"]
    out, err = ex.result()
    assert "num_layers=2, batch_first=True, dropout=0.3" in out
    assert "identical initial weights in both models: OK" in out
    m = re.search(r"max \|loss\(torch.nn\) - loss\(rnnext\)\| = (\S+) ", out)
    assert m and float(m.group(1)) <= 1e-4
    # The example's arithmetic, not the machine's speed: the times (4 significant digits) and the
    # speedup (3) are printed to a relative precision that does not depend on their size, so their
    # rounding moves the ratio by under 0.7% on any machine (decimals once made this fail on a
    # faster one: 2.85x printed against 0.064 s / 0.022 s).
    m = re.search(r"torch.nn.RNN (\S+) s, rnnext.RNN (\S+) s -> speedup (\S+)x", out)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
    assert math.isclose(float(m.group(3)), float(m.group(1)) / float(m.group(2)), rel_tol=0.01)
    assert "] 28/28 loss" in err  # the progress bar reached the end
    if importlib.util.find_spec("matplotlib") is not None:
        assert f"wrote {ex.png}" in out
        assert ex.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "PNG skipped" in out
    assert out.rstrip().endswith("char_lm: all checks passed")


# ------------------------------------------------------------------------------------ GloVe loader
def write(tmp_path: Path, text: str, name: str = "vecs.txt") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_glove_reads_every_word_in_file_order(tmp_path):
    path = write(tmp_path, "b 1 2 3\na 4 5 6\n\nc -1e-3 0 7.5 \n")
    wv = glove.load_glove(path)
    assert wv.words == ["b", "a", "c"] and wv.found == [True, True, True]
    torch.testing.assert_close(wv.vectors, torch.tensor([[1.0, 2, 3], [4, 5, 6], [-1e-3, 0, 7.5]]))


def test_glove_vocab_and_unknown_policies(tmp_path):
    rows = torch.randn(5, 4, dtype=torch.float64)
    text = "".join(f"w{i} " + " ".join(repr(v) for v in r.tolist()) + "\n" for i, r in enumerate(rows))
    path = write(tmp_path, text)
    vocab = ["w3", "missing", "w0"]
    z = glove.load_glove(path, vocab=vocab, unknown="zeros", dtype=torch.float64)
    assert z.words == vocab and z.found == [True, False, True]
    torch.testing.assert_close(z.vectors[0], rows[3])
    torch.testing.assert_close(z.vectors[2], rows[0])
    assert torch.equal(z.vectors[1], torch.zeros(4, dtype=torch.float64))
    m = glove.load_glove(path, vocab=vocab, unknown="mean", dtype=torch.float64)
    torch.testing.assert_close(m.vectors[1], rows.mean(0))
    r1 = glove.load_glove(path, vocab=vocab, unknown="random", seed=3)
    r2 = glove.load_glove(path, vocab=vocab, unknown="random", seed=3)
    r3 = glove.load_glove(path, vocab=vocab, unknown="random", seed=4)
    assert torch.equal(r1.vectors, r2.vectors) and not torch.equal(r1.vectors[1], r3.vectors[1])
    assert r1.vectors[1].abs().sum() > 0
    emb, index = glove.embedding_from_glove(path, vocab=vocab, unknown="mean")
    assert emb.weight.requires_grad is False and index == {"w3": 0, "missing": 1, "w0": 2}
    torch.testing.assert_close(emb(torch.tensor([2]))[0], rows[0].float())


def test_glove_word_with_spaces(tmp_path):
    # GloVe 840B has a few tokens containing spaces: the vector is read from the right.
    wv = glove.load_glove(write(tmp_path, "a 1 2\n. . . 3 4\n"))
    assert wv.words == ["a", ". . ."]
    torch.testing.assert_close(wv.vectors[1], torch.tensor([3.0, 4.0]))


@pytest.mark.parametrize(
    "text, lineno, what",
    [
        ("a 1 2 3\nb 1 2\n", 2, "expected 3 numbers after the word 'b'"),  # too few values
        ("a 1 2 3\nb 1 2 3 4\n", 2, "expected 3 numbers after the word 'b'"),  # too many values
        ("a 1 2 3\nb 1 x 3\n", 2, "value 2 of word 'b' is not a number: 'x'"),  # not a number
        ("a 1 2 3\nb 1 2 3\nc 1 2 3\nd 0.5 nan 1\n", 4, "value 2 of word 'd' is not finite"),
        ("a 1 2,5 3\n", 1, "value 2 of word 'a' is not a number: '2,5'"),  # first line too
        ("a 1 2\nlonely\n", 2, "expected a word followed by numbers"),
    ],
)
def test_glove_malformed_line(tmp_path, text, lineno, what):
    path = write(tmp_path, text, name="bad_vectors.txt")
    with pytest.raises(ValueError) as err:
        glove.load_glove(path)
    msg = str(err.value)
    assert "bad_vectors.txt" in msg and f"line {lineno}:" in msg and what in msg, msg


def test_glove_bad_arguments(tmp_path):
    path = write(tmp_path, "a 1 2\n")
    with pytest.raises(ValueError, match="unknown must be one of"):
        glove.load_glove(path, unknown="ones")
    with pytest.raises(ValueError, match="vocab has the word 'a' twice"):
        glove.load_glove(path, vocab=["a", "b", "a"])
    with pytest.raises(ValueError, match="empty"):
        glove.load_glove(write(tmp_path, "\n\n", name="empty.txt"))


def test_glove_streams(tmp_path):
    # iter_glove is a generator over the open file: the first row arrives before the bad line is read.
    path = write(tmp_path, "a 1 2\nb 3 4\nc 5\n")
    it = glove.iter_glove(path)
    assert next(it) == ("a", [1.0, 2.0]) and next(it) == ("b", [3.0, 4.0])
    with pytest.raises(ValueError, match="line 3"):
        next(it)
