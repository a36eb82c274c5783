"""Representing text for an RNN: one-hot vectors, nn.Embedding lookups, pretrained GloVe vectors.

1. One-hot: word ``i`` of a vocabulary of ``V`` words is the vector ``e_i`` (``V`` numbers, one 1).
   Multiplying a one-hot vector by a matrix ``W [V, E]`` just picks row ``i`` of ``W``.
2. ``nn.Embedding(V, E)`` is that matrix, stored once, and ``emb(i)`` is the row lookup: the same
   numbers as ``one_hot(i) @ W`` without building the ``V``-wide vectors.
3. Pretrained vectors (GloVe's text format) loaded into ``nn.Embedding.from_pretrained``, words
   missing from the file mapped to a chosen vector, then fed to ``rnnext.RNN``.

Run: ``python examples/text_representation.py [--glove PATH] [--unknown zeros|random|mean]``.
The default file is a small synthetic sample (see examples/data/README.md), not real GloVe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

try:
    import rnnext
except ImportError:  # a source checkout built in place but not installed: use the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import rnnext

from glove import SAMPLE, UNKNOWN_POLICIES, load_glove


def one_hot_vs_embedding(sentence: list[str]) -> None:
    print("== 1. one-hot versus nn.Embedding ==")
    vocab = sorted(set(sentence))
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index[w] for w in sentence])  # [T]
    one_hot = F.one_hot(ids, num_classes=len(vocab)).float()  # [T, V]
    print(f"vocabulary ({len(vocab)} words): {vocab}")
    print(f"sentence as ids: {ids.tolist()}")
    print(f"one-hot matrix [T={len(sentence)}, V={len(vocab)}]:")
    for w, row in zip(sentence, one_hot.int().tolist()):
        print(f"  {w:>6} {row}")

    torch.manual_seed(0)
    emb = nn.Embedding(len(vocab), 4)  # W: [V, E=4]
    dense = emb(ids)  # [T, E]: a row lookup
    via_matmul = one_hot @ emb.weight  # [T, V] @ [V, E]: the same rows, computed the long way
    torch.testing.assert_close(dense, via_matmul, rtol=0, atol=0)
    print(f"nn.Embedding({len(vocab)}, 4)(ids) == one_hot(ids) @ embedding.weight: exactly equal")
    print(
        f"numbers per word: one-hot {len(vocab)} (grows with the vocabulary, all but one zero), "
        f"embedding {emb.embedding_dim} (chosen, dense, learned)\n"
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0))


def pretrained_vectors(path: str, unknown: str) -> None:
    print("== 2. pretrained vectors (GloVe text format) ==")
    full = load_glove(path)
    print(f"{path}: {len(full.words)} words, dim {full.dim}")
    sentence = "the king and the queen eat an apple".split()
    vocab = sorted(set(sentence))
    wv = load_glove(path, vocab=vocab, unknown=unknown)
    missing = [w for w, ok in zip(wv.words, wv.found) if not ok]
    print(f"vocabulary {vocab}; not in the file -> '{unknown}' vector: {missing}")
    emb = nn.Embedding.from_pretrained(wv.vectors, freeze=True)  # frozen: no gradient to the table
    index = wv.index()
    ids = torch.tensor([index[w] for w in sentence])
    x = emb(ids)  # [T, E]
    assert x.shape == (len(sentence), full.dim)

    if {"king", "man", "woman", "queen"} <= set(full.words):
        fi = full.index()
        v = {w: full.vectors[fi[w]] for w in ("king", "man", "woman", "queen")}
        target = v["king"] - v["man"] + v["woman"]
        others = [(w, i) for w, i in fi.items() if w not in ("king", "man", "woman")]
        scores = sorted(((cosine(target, full.vectors[i]), w) for w, i in others), reverse=True)
        print("king - man + woman is closest to: " + ", ".join(f"{w} ({s:.2f})" for s, w in scores[:3]))

    # The embedded sentence goes into an RNN as [T, B=1, E] (seq-first layout, see rnn_by_hand.py).
    torch.manual_seed(0)
    rnn = rnnext.RNN(input_size=full.dim, hidden_size=6)
    out, h_n = rnn(x.unsqueeze(1))
    print(f"rnnext.RNN({full.dim}, 6) on the embedded sentence: output {list(out.shape)}, "
          f"h_n {list(h_n.shape)}")
    ref = nn.RNN(full.dim, 6)
    ref.load_state_dict(rnn.state_dict())
    torch.testing.assert_close(out, ref(x.unsqueeze(1))[0])
    print("same output as torch.nn.RNN with the same weights: OK")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--glove", default=SAMPLE, help="a GloVe .txt file (default: the synthetic sample)")
    p.add_argument("--unknown", choices=UNKNOWN_POLICIES, default="zeros", help="vector for missing words")
    args = p.parse_args(argv)
    one_hot_vs_embedding("the cat sat on the mat".split())
    pretrained_vectors(args.glove, args.unknown)
    print("text_representation: all checks passed")


if __name__ == "__main__":
    main()
