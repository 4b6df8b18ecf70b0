"""One rank of the DistributedDataParallel checks in test_reliability_distributed.py.

Run as ``python reliability_ddp_worker.py PORT OUT_DIR``: it spawns two ranks (gloo, CPU), runs
every scenario on both, and each rank saves what it ends with to OUT_DIR/{scenario}.rank{r}.pt
(one start-up for all scenarios keeps the test fast).
"""

from __future__ import annotations

import datetime
import faulthandler
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fgsmkit as fk

WORLD = 2
STEPS = 3


def make_model(batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(10, 16)] + ([nn.BatchNorm1d(16)] if batch_norm else []) + [nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(8, 10, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(STEPS)]


def adversarial_training(model: nn.Module, batches, shard: slice | None = None,
                         autocast: torch.dtype | None = None) -> nn.Module:
    """STEPS steps of eq. (6) training; every step also runs the attacks on the model."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=0.1)
    for x, y in batches:
        if shard is not None:
            x, y = x[shard], y[shard]
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            fk.fgsm(model, x, y, eps=0.1)
            fk.pgd(model, x, y, eps=0.1, step_size=0.04, steps=2, restarts=2)
            loss = criterion(model, x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def run(rank: int, port: int, out_dir: str) -> None:
    faulthandler.enable(all_threads=True)  # an abort prints the Python line every thread was on
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=90))
    try:
        for scenario, body in SCENARIOS.items():
            torch.save(body(rank), os.path.join(out_dir, f"{scenario}.rank{rank}.pt"))
        # Tear down only once both ranks are done: a rank that destroys the group while the
        # other still has gloo work in flight aborts ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train(rank: int, autocast: torch.dtype | None = None, **ddp_options) -> dict:
    shard = slice(rank * 4, (rank + 1) * 4)  # each rank half of every batch
    ddp = DistributedDataParallel(make_model(), **ddp_options)
    adversarial_training(ddp, make_batches(), shard, autocast)
    return {"params": [p.detach().clone() for p in ddp.module.parameters()]}


def attack_on_rank_zero_only(rank: int) -> dict:
    """Evaluation on rank 0 alone, as training scripts do: the attack must not need rank 1."""
    ddp = DistributedDataParallel(make_model(batch_norm=True))
    x, y = make_batches()[0]
    result = {}
    if rank == 0:
        result["x_adv"] = fk.pgd(ddp, x, y, eps=0.1, step_size=0.04, steps=3,
                                 generator=torch.Generator().manual_seed(0))
        result["expected"] = fk.pgd(ddp.module, x, y, eps=0.1, step_size=0.04, steps=3,
                                    generator=torch.Generator().manual_seed(0))
    # The ranks' next collective must pair up: the attack issued none of its own.
    check = torch.tensor([float(rank + 1)])
    dist.all_reduce(check)
    result["sum"] = check
    return result


class Routed(nn.Module):
    """Takes another branch for the clean pass than for the adversarial one, as routing or
    LayerDrop may: the clean input requires grad inside AdversarialLoss, the adversarial one not."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = make_model()
        self.clean_branch, self.other_branch = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.clean_branch if x.requires_grad else self.other_branch)(self.trunk(x))


def clean_only_parameter(rank: int) -> dict:
    """find_unused_parameters=True with a parameter only the clean pass uses: refused by name,
    before DDP's backward fails on it."""
    ddp = DistributedDataParallel(Routed(), find_unused_parameters=True)
    x, y = make_batches()[0]
    try:
        fk.AdversarialLoss(alpha=0.5, eps=0.1)(ddp, x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4])
    except ValueError as error:
        return {"error": str(error)}
    return {"error": ""}


SCENARIOS = {
    "train": train,
    "train_unused": lambda rank: train(rank, find_unused_parameters=True),
    "train_static": lambda rank: train(rank, static_graph=True),
    "train_bfloat16_autocast": lambda rank: train(rank, autocast=torch.bfloat16),
    "attack_on_rank_zero_only": attack_on_rank_zero_only,
    "clean_only_parameter": clean_only_parameter,  # last: its DDP wrapper never runs a backward
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    port, out_dir = int(sys.argv[1]), sys.argv[2]
    mp.spawn(run, args=(port, out_dir), nprocs=WORLD)
