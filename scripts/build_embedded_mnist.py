"""Build the MNIST copies shipped inside the package, from the IDX files under ``--data-root``/MNIST/raw:

- dpcore/data/embedded/mnist.npz: all of MNIST (60,000 train and 10,000 test images, uint8, in MNIST's order),
  the data of ``data.dataset = "mnist"`` when no data root holds MNIST (the quick start's);
- dpcore/data/embedded/mnist_subset.npz: a class-balanced subset (``mnist-embedded``): 1000 train and 200 test
  images per class, drawn with numpy ``default_rng(0)`` (train classes 0..9, then test classes 0..9) and kept in
  their original MNIST order.

Usage:

    python scripts/build_embedded_mnist.py [--data-root /work/shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from dpcore.data.idx import load_idx_dataset  # noqa: E402

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
EMBEDDED = Path(__file__).resolve().parents[1] / "dpcore" / "data" / "embedded"


def pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="/work/shared/data", help="folder that holds MNIST/raw/")
    parser.add_argument("--out", type=Path, default=EMBEDDED, help="folder to write both files into")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = (t.numpy() for t in load_idx_dataset(args.data_root, "MNIST"))
    rng = np.random.default_rng(0)
    tr = pick(y_train, TRAIN_PER_CLASS, rng)
    te = pick(y_test, TEST_PER_CLASS, rng)
    args.out.mkdir(parents=True, exist_ok=True)
    full = args.out / "mnist.npz"
    np.savez_compressed(full, x_train=x_train[:, 0].astype(np.uint8), y_train=y_train.astype(np.uint8),
                        x_test=x_test[:, 0].astype(np.uint8), y_test=y_test.astype(np.uint8))
    print(f"wrote {full} ({full.stat().st_size / 1e6:.2f} MB): {len(y_train)} train, {len(y_test)} test")
    subset = args.out / "mnist_subset.npz"
    np.savez_compressed(
        subset,
        x_train=x_train[tr, 0].astype(np.uint8),
        y_train=y_train[tr].astype(np.uint8),
        x_test=x_test[te, 0].astype(np.uint8),
        y_test=y_test[te].astype(np.uint8),
        train_index=tr.astype(np.int32),
        test_index=te.astype(np.int32),
    )
    print(f"wrote {subset} ({subset.stat().st_size / 1e6:.2f} MB): {len(tr)} train, {len(te)} test")


if __name__ == "__main__":
    main()
