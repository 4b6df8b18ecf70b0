"""Adversarial training with DistributedDataParallel, on CPU processes (gloo) or GPUs (nccl).

Launch one process per CPU core or GPU with torchrun:

    torchrun --standalone --nproc_per_node 2 examples/distributed_training.py
    torchrun --standalone --nproc_per_node 2 examples/distributed_training.py --small   # a quick check

Run without torchrun it trains in a single process. The only fgsmkit-specific point: hand the
*wrapped* model to the criterion, ``criterion(ddp_model, x, y)``. Its adversarial forward goes
through DistributedDataParallel (its clean forward runs on the inner module: DDP expects one
forward per backward), and the one ``loss.backward()`` all-reduces the gradients of the clean and
the adversarial term together.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import fgsmkit as fk
from fgsmkit.datasets import mnist_sample


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer digits and epochs, for a quick check")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: 3, or 2 with --small)")
    parser.add_argument("--batch-size", type=int, default=100, help="global batch size, split across processes")
    parser.add_argument("--eps", type=float, default=0.25)
    parser.add_argument("--checkpoint", default=None, help="if given, rank 0 saves the trained weights there")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1; got {args.epochs}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1; got {args.batch_size}")
    return args


def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes in the environment (or a group of one)."""
    if "RANK" not in os.environ:                      # started without torchrun
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)                      # one core per process
    return rank, world, device


def summed(*values: float, device: torch.device) -> list[float]:
    """Add the values over all processes."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def main() -> None:
    args = parse_args()
    rank, world, device = setup()
    epochs = args.epochs if args.epochs is not None else (2 if args.small else 3)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"{world} process(es), backend {dist.get_backend()}, device {device}")

    x_train, y_train = mnist_sample("train")
    x_test, y_test = mnist_sample("test")
    if args.small:
        x_train, y_train, x_test, y_test = x_train[:2000], y_train[:2000], x_test[:500], y_test[:500]
    train_set = TensorDataset(x_train, y_train)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)   # each process its own shard
    loader = DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler)

    torch.manual_seed(args.seed)
    model = DistributedDataParallel(fk.models.MaxoutMLP().to(device))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = fk.AdversarialLoss(alpha=0.5, eps=args.eps)

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        correct = seen = 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = criterion(model, x, y)              # the wrapped model, not model.module
            optimizer.zero_grad()
            loss.backward()                            # all-reduces both terms' gradients
            optimizer.step()
            correct += (criterion.clean_logits.argmax(dim=1) == y).sum().item()
            seen += len(y)

        # Evaluate on each process's share of the test digits, then add up the counts.
        model.eval()
        x_part, y_part = x_test[rank::world].to(device), y_test[rank::world].to(device)
        # FGSM alone overstates the robustness of a model trained on FGSM examples: the
        # iterative attack (10 steps in the same budget) gives the error to judge it by.
        x_adv = fk.fgsm(model.module, x_part, y_part, eps=args.eps)
        x_iterative = fk.iterative_fgsm(model.module, x_part, y_part, eps=args.eps, step_size=args.eps / 4, steps=10)
        with torch.no_grad():
            clean_wrong = (model.module(x_part).argmax(dim=1) != y_part).sum().item()
            adv_wrong = (model.module(x_adv).argmax(dim=1) != y_part).sum().item()
            iterative_wrong = (model.module(x_iterative).argmax(dim=1) != y_part).sum().item()
        correct, seen, clean_wrong, adv_wrong, iterative_wrong, tested = summed(
            correct, seen, clean_wrong, adv_wrong, iterative_wrong, len(y_part), device=device)
        say(f"epoch {epoch + 1}/{epochs}: train accuracy (clean) {correct / seen:.1%} | "
            f"test error clean {clean_wrong / tested:.1%}, FGSM {adv_wrong / tested:.1%}, "
            f"iterative FGSM {iterative_wrong / tested:.1%}")

    # Every process should hold the same weights: DDP keeps the replicas in step.
    flat = torch.cat([p.detach().flatten() for p in model.module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    say(f"replicas identical after training: {all(torch.equal(g, gathered[0]) for g in gathered)}")

    if args.checkpoint and rank == 0:
        fk.save_checkpoint({"model": model.module.state_dict(), "epochs": epochs}, args.checkpoint)
        say(f"saved {args.checkpoint}")
    dist.barrier()  # tear down together: a rank leaving early can abort the other's gloo work
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
