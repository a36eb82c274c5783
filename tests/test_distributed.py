"""DistributedDataParallel over gloo: two processes on this machine (127.0.0.1), a model holding
:class:`rnnext.RNN`, trained a few steps; its all-reduced (averaged) gradients and its parameters
must match those of the same model built on ``torch.nn.RNN``, trained in the same processes on the
same data, and both ranks must hold the same parameters.

Each rank gets its own shard of every batch (different data per rank, so the averaging matters);
steps alternate padded and packed (unsorted) input.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.nn.utils.rnn import pack_padded_sequence

WORLD = 2
STEPS = 4
T, B, C, H = 11, 5, 6, 8  # B per rank


class Tagger(nn.Module):
    """RNN (2 layers, bidirectional) followed by a linear read-out of every step."""

    def __init__(self, rnn_cls: type) -> None:
        super().__init__()
        self.rnn = rnn_cls(C, H, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.head = nn.Linear(2 * H, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if lengths is None:
            out, h_n = self.rnn(x)
            return self.head(out).square().mean() + h_n.square().mean()
        out, h_n = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return self.head(out.data).square().mean() + h_n.square().mean()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        import rnnext

        torch.manual_seed(0)  # the same initial weights on both ranks (DDP also broadcasts them)
        ref = Tagger(nn.RNN)
        ours = Tagger(rnnext.RNN)
        ours.load_state_dict(ref.state_dict())
        local = Tagger(rnnext.RNN)  # no DDP: this rank's own gradient, for the averaging check
        local.load_state_dict(ref.state_dict())
        models = {"ref": DDP(ref), "ours": DDP(ours)}
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in models.items()}
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        record: dict[str, list] = {"ref": [], "ours": [], "local": []}
        for step in range(STEPS):
            x = torch.randn(T, B, C, generator=gen, dtype=torch.float64)
            lengths = torch.randint(1, T + 1, (B,), generator=gen) if step % 2 else None
            if step == 0:
                local(x, lengths).backward()
                record["local"].append({n: p.grad.clone() for n, p in local.named_parameters()})
            for k, model in models.items():
                opts[k].zero_grad(set_to_none=True)
                model(x, lengths).backward()  # DDP all-reduces (averages) during backward
                record[k].append({n: p.grad.clone() for n, p in model.module.named_parameters()})
                opts[k].step()
        for k, model in models.items():
            record[k].append({n: p.detach().clone() for n, p in model.module.named_parameters()})
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)
@pytest.mark.skipif(sys.platform != "linux", reason="loopback gloo test written for Linux")
def test_ddp_gloo_two_processes_matches_torch_nn(tmp_path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    records = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rank, rec in enumerate(records):
        assert len(rec["ours"]) == len(rec["ref"]) == STEPS + 1
        for step, (got, want) in enumerate(zip(rec["ours"], rec["ref"])):
            assert got.keys() == want.keys()
            for name in want:
                torch.testing.assert_close(
                    got[name],
                    want[name],
                    rtol=1e-10,
                    atol=1e-10,
                    msg=lambda m, n=name, s=step, r=rank: f"rank {r}, step {s}, {n}: {m}",
                )
    # After all-reduce both ranks hold the same gradients and parameters ...
    for step in range(STEPS + 1):
        for name, g0 in records[0]["ours"][step].items():
            assert torch.equal(g0, records[1]["ours"][step][name]), f"ranks differ at step {step}, {name}"
    # ... and the gradient is the average of the ranks' own gradients, which differ (other shards).
    for name, g in records[0]["ours"][0].items():
        own = [records[r]["local"][0][name] for r in range(WORLD)]
        assert not torch.allclose(own[0], own[1]), name
        torch.testing.assert_close(g, sum(own) / WORLD, rtol=1e-10, atol=1e-12)
