"""Training throughput of the engine's hot loop (images/s), with the device synchronised.

A benchmark, not a test:  python benchmarks/train_throughput.py [--model convnet --width 128] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from dpcore.augment import crop_flip
from dpcore.masks import full_mask, magnitude_prune
from dpcore.models import build_model
from dpcore.training import Schedule, Stopwatch, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sparsity-rounds", type=int, default=3, help="prune this many 20%% rounds first")
    args = ap.parse_args()
    device = torch.device(args.device)
    opts = {"width": args.width} if args.model == "convnet" else {}
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, in_shape=(3, 32, 32), **opts).to(device)
    mask = full_mask(model)
    for r in range(1, args.sparsity_rounds + 1):
        mask = magnitude_prune(model, mask, total_round=r, fraction=0.2, scope="global")
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (args.images,), device=device)
    schedule = Schedule("sgd", 0.01, args.epochs, args.batch)
    prepare = lambda t: t.float().div_(255)  # noqa: E731
    augment = lambda t, g: crop_flip(t, 4, generator=g)  # noqa: E731
    train(model, x[: args.batch * 2], y[: args.batch * 2], schedule=Schedule("sgd", 0.01, 1, args.batch),
          seed=0, prepare=prepare, mask=mask, augment=augment)  # warm-up
    watch = Stopwatch(device)
    train(model, x, y, schedule=schedule, seed=0, prepare=prepare, mask=mask, augment=augment)
    seconds = watch.elapsed()
    print(f"{args.model} width={args.width} on {device}: {args.images * args.epochs / seconds:,.0f} img/s "
          f"({seconds:.2f} s for {args.epochs} epochs of {args.images} images, batch {args.batch}, masked)")


if __name__ == "__main__":
    main()
