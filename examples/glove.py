"""Load word vectors in GloVe's text format into ``torch.nn.Embedding.from_pretrained``.

GloVe's text format (https://nlp.stanford.edu/projects/glove/) has one word per line followed by its
vector, separated by single spaces::

    the 0.418 0.24968 -0.41242 0.1217 ...
    , 0.013441 0.23682 -0.16899 0.40951 ...

This module depends only on torch (not on rnnext) so it can be copied into any project:

* the file is streamed line by line (a 5 GB ``glove.840B.300d.txt`` never sits in memory as text;
  with ``vocab`` given, only the rows of the words you asked for are kept);
* words missing from the file get a vector you choose: ``"zeros"``, ``"random"`` (normal, scaled to the
  file's standard deviation, seeded) or ``"mean"`` (the mean of every vector in the file);
* a malformed line raises :class:`ValueError` naming the file, the line number and what is wrong
  (wrong number of values, a token that is not a number, a dimension that differs from the first line).

Some GloVe releases (840B) contain "words" with spaces in them, so the vector is read from the right:
the last ``dim`` tokens are the numbers and everything before them is the word.

Run it on a file to see a summary::

    python examples/glove.py                        # the shipped synthetic sample
    python examples/glove.py ~/glove.6B.50d.txt     # a real GloVe file you downloaded
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

__all__ = ["UNKNOWN_POLICIES", "WordVectors", "iter_glove", "load_glove", "embedding_from_glove"]

UNKNOWN_POLICIES = ("zeros", "random", "mean")

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "glove_sample.txt")


@dataclass
class WordVectors:
    """A vocabulary and its vectors: row ``i`` of ``vectors`` belongs to ``words[i]``.

    ``found[i]`` is False where ``words[i]`` was not in the file and got the unknown-word vector.
    """

    words: list[str]
    vectors: torch.Tensor  # [len(words), dim]
    found: list[bool]

    @property
    def dim(self) -> int:
        return self.vectors.size(1)

    def index(self) -> dict[str, int]:
        """Word -> row, for looking words up before calling the embedding."""
        return {w: i for i, w in enumerate(self.words)}


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _parse_line(line: str, path: str, lineno: int, dim: Optional[int]) -> tuple[str, list[float]]:
    """Split one line into (word, floats), checking it against the dimension ``dim`` of line 1.

    Line 1: the first token is the word, every other token a number (this fixes ``dim``). Later lines:
    a word and exactly ``dim`` numbers; more tokens than that are read as a word containing spaces
    (GloVe 840B has some) unless they are all numbers, which is a wrong count.
    """
    tokens = line.rstrip("\r\n").split(" ")
    while tokens and tokens[-1] == "":  # trailing spaces, as some exports have
        tokens.pop()
    where = f"{path}, line {lineno}"
    if len(tokens) < 2:
        raise ValueError(f"{where}: expected a word followed by numbers, got {line.strip()[:60]!r}")
    n = len(tokens) - 1
    if dim is None or n == dim:
        word, values = tokens[0], tokens[1:]
    elif n < dim or all(_is_number(t) for t in tokens[1:]):
        raise ValueError(
            f"{where}: expected {dim} numbers after the word {tokens[0]!r} (the dimension set by the "
            f"first line), got {n}"
        )
    else:
        word, values = " ".join(tokens[: len(tokens) - dim]), tokens[len(tokens) - dim :]
    floats = []
    for k, tok in enumerate(values, start=1):
        try:
            v = float(tok)
        except ValueError:
            raise ValueError(f"{where}: value {k} of word {word!r} is not a number: {tok!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{where}: value {k} of word {word!r} is not finite: {tok!r}")
        floats.append(v)
    return word, floats


def iter_glove(path: str, encoding: str = "utf-8") -> Iterator[tuple[str, list[float]]]:
    """Yield ``(word, vector)`` for each line of a GloVe text file, streaming it.

    The first line fixes the dimension; every later line must have as many numbers. Blank lines are
    skipped. Raises :class:`ValueError` (file, line number, problem) on a malformed line.
    """
    dim: Optional[int] = None
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            word, vec = _parse_line(line, path, lineno, dim)
            if dim is None:
                dim = len(vec)
            yield word, vec


def load_glove(
    path: str,
    vocab: Optional[Sequence[str]] = None,
    unknown: str = "zeros",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> WordVectors:
    """Read a GloVe text file into a :class:`WordVectors`.

    Args:
        path: the ``.txt`` file (one word and its numbers per line).
        vocab: the words you need, in the row order you want. None keeps every word of the file, in
            file order. With a vocabulary, only its rows are kept while streaming, so memory is
            ``len(vocab) * dim`` however large the file is.
        unknown: vector for words of ``vocab`` that are not in the file: ``"zeros"``, ``"random"``
            (``N(0, std^2)`` with ``std`` the standard deviation of all the file's numbers, drawn from a
            generator seeded with ``seed``) or ``"mean"`` (the mean vector of the whole file).
        seed: seed for ``unknown="random"``.
        dtype: dtype of the returned vectors.

    Returns:
        A :class:`WordVectors` with ``vectors`` of shape ``[len(vocab), dim]``.

    Raises:
        ValueError: a malformed line (with file name and line number), an empty file, an unknown
            ``unknown`` policy, or a vocabulary with repeated words.
    """
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
    if vocab is not None:
        wanted = {}
        for i, w in enumerate(vocab):
            if w in wanted:
                raise ValueError(f"vocab has the word {w!r} twice (positions {wanted[w]} and {i})")
            wanted[w] = i
    # Kept rows go into one growing tensor of the requested dtype (a Python list of floats would
    # take ~6x the memory); the mean and spread of the whole file are running float64 sums.
    buf: Optional[torch.Tensor] = None
    row_of: dict[str, int] = {}  # word -> row of buf, in file order
    total: Optional[torch.Tensor] = None
    total_sq, count = 0.0, 0
    for word, vec in iter_glove(path):
        t = torch.tensor(vec, dtype=torch.float64)
        if total is None:
            total = torch.zeros_like(t)
        total += t
        total_sq += float(t.dot(t))
        count += 1
        if word in row_of or (vocab is not None and word not in wanted):
            continue  # keep the first occurrence of a word, as GloVe's own tools do
        if buf is None or len(row_of) == buf.size(0):
            cap = len(vocab) if vocab is not None else 1024
            grown = torch.empty(max(cap, 2 * len(row_of)), t.numel(), dtype=dtype)
            if buf is not None:
                grown[: len(row_of)] = buf
            buf = grown
        buf[len(row_of)] = t
        row_of[word] = len(row_of)
    if total is None:
        raise ValueError(f"{path}: no word vectors found (the file is empty)")
    dim = total.numel()
    mean = total / count
    std = math.sqrt(max(total_sq / (count * dim) - float((mean * mean).mean()), 0.0)) or 1.0
    if vocab is None:
        words = list(row_of)
        return WordVectors(words=words, vectors=buf[: len(words)].clone(), found=[True] * len(words))
    words = list(vocab)
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(len(words), dim, dtype=dtype)
    found = []
    for i, w in enumerate(words):
        if w in row_of:
            out[i] = buf[row_of[w]]
        elif unknown == "zeros":
            out[i] = 0.0
        elif unknown == "mean":
            out[i] = mean
        else:
            out[i] = torch.randn(dim, generator=gen, dtype=torch.float64) * std
        found.append(w in row_of)
    return WordVectors(words=words, vectors=out, found=found)


def embedding_from_glove(
    path: str,
    vocab: Optional[Sequence[str]] = None,
    unknown: str = "zeros",
    freeze: bool = True,
    padding_idx: Optional[int] = None,
    seed: int = 0,
) -> tuple[nn.Embedding, dict[str, int]]:
    """``nn.Embedding.from_pretrained`` on a GloVe file; returns the layer and its word -> index map."""
    wv = load_glove(path, vocab=vocab, unknown=unknown, seed=seed)
    emb = nn.Embedding.from_pretrained(wv.vectors, freeze=freeze, padding_idx=padding_idx)
    return emb, wv.index()


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", default=SAMPLE, help="GloVe text file (default: the synthetic sample)")
    p.add_argument("--unknown", choices=UNKNOWN_POLICIES, default="zeros")
    p.add_argument("--words", nargs="*", default=["king", "queen", "zebra-not-in-file"])
    args = p.parse_args(argv)
    all_vectors = load_glove(args.path)
    print(f"{args.path}: {len(all_vectors.words)} words, dim {all_vectors.dim}")
    wv = load_glove(args.path, vocab=args.words, unknown=args.unknown)
    emb = nn.Embedding.from_pretrained(wv.vectors)
    for i, (w, ok) in enumerate(zip(wv.words, wv.found)):
        vec = emb(torch.tensor([i]))[0]
        shown = " ".join(f"{v:+.3f}" for v in vec[:4].tolist())
        print(f"  {w!r:>22} {'found' if ok else 'unknown -> ' + args.unknown:>18}  [{shown} ...]")


if __name__ == "__main__":
    main()
