"""How often the `hessian` regulariser R = clamp(1 - (g~ - g), -q, q) sits at its clamp +q.

Where R = +q the LeadFL term of the update, -lr*alpha*R, is the constant -lr*alpha*q. This
script draws random FashionMNIST batches, evaluates g at W and g~ at the lookahead W - lr*g
for `fmnist_cnn` (at its seeded initialisation and at the global model of each given run
checkpoint) and prints the share of element-steps with R = +q.

    python scripts/r_saturation.py [--checkpoint RUN/checkpoint.pt ...] [--batches 50]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sim.data import load_dataset  # noqa: E402
from sim.models import build_model, load_flat_parameters_, trainable_parameters  # noqa: E402
from sim.state import read_checkpoint  # noqa: E402


def saturation(model, dataset, *, lr: float, q: float, batches: int, batch_size: int, seed: int):
    """(share of element-steps with R = +q, largest |g~ - g| seen) over `batches` random batches."""
    params = [param for _, param in trainable_parameters(model)]
    generator = torch.Generator().manual_seed(seed)
    at_q = total = 0
    largest = 0.0
    for _ in range(batches):
        index = torch.randint(0, len(dataset.train_y), (batch_size,), generator=generator)
        x, y = dataset.train_x[index], dataset.train_y[index]
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-lr)
        lookahead = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=lr)
            for g, g_tilde in zip(grads, lookahead):
                difference = g_tilde - g
                r = torch.clamp(1 - difference, -q, q)
                at_q += int((r == q).sum())
                total += r.numel()
                largest = max(largest, float(difference.abs().max()))
    return at_q / total, largest, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="a run's checkpoint.pt (repeatable)")
    parser.add_argument("--data-dir", default=None, help="FashionMNIST IDX folder (default: the Debian package's)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--q", type=float, default=0.2)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in args.checkpoint:
        if not Path(path).is_file():
            parser.error(f"--checkpoint {path}: no such file; pass a run folder's checkpoint.pt")
    torch.set_num_threads(1)
    dataset = load_dataset("fashion_mnist", args.data_dir, "cpu")
    print(f"lr {args.lr}, q {args.q}, {args.batches} batches of {args.batch_size}")
    print("| model | R = +q (% of element-steps) | largest abs(g~ - g) |")
    print("| --- | ---: | ---: |")
    for path in [None, *args.checkpoint]:
        model = build_model("fmnist_cnn", dataset.image_shape, dataset.num_classes, seed=0)
        label = "seeded initialisation"
        if path is not None:
            state = read_checkpoint(path)  # verified, tensors and plain data only
            load_flat_parameters_(model, state["global_params"])
            label = f"{path} (after {state['next_round']} rounds)"
        share, largest, total = saturation(model, dataset, lr=args.lr, q=args.q, batches=args.batches,
                                           batch_size=args.batch_size, seed=args.seed)
        print(f"| {label} | {100 * share:.3f} | {largest:.3g} |")
    print(f"({total} element-steps per model)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
