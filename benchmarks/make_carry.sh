#!/usr/bin/env bash
# Prepare benchmarks/carry/ (git-ignored, < 64 MiB) for benchmarks/gpu_check.sh on a lent GPU machine, where
# ../shared does not travel and nothing can be downloaded:
#   - cifar10-subset.npz: 1,000 train + 200 test images per class of the real CIFAR-10 (uint8, ~30 MB),
#   - mtt-cifar10-ipc10/: the published MTT set (the cifar10-alexnet profile's synthetic source),
#   - whl/: wheels of what the GPU image lacks (tomli-w, textual, textual-plotext, plotext and their needs).
# Usage: bash benchmarks/make_carry.sh [SHARED_DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
out=benchmarks/carry
mkdir -p "$out/whl"
py=${PYTHON:-.venv/bin/python}
"$py" - "$data" "$out" <<'PY'
import shutil, sys
from pathlib import Path
import numpy as np
from dpcore.data import load_dataset

data, out = Path(sys.argv[1]), Path(sys.argv[2])
ds = load_dataset("cifar10", data)
rng = np.random.default_rng(0)

def take(y, per_class):
    y = y.numpy()
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)]))

tr, te = take(ds.y_train, 1000), take(ds.y_test, 200)
np.savez_compressed(out / "cifar10-subset.npz",
                    x_train=ds.x_train.numpy()[tr], y_train=ds.y_train.numpy()[tr],
                    x_test=ds.x_test.numpy()[te], y_test=ds.y_test.numpy()[te])
shutil.copytree(data / "mtt-cifar10-ipc10", out / "mtt-cifar10-ipc10", dirs_exist_ok=True)
print(f"{out}/cifar10-subset.npz: {len(tr)} train, {len(te)} test images")
PY
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
for pkg in tomli-w textual textual-plotext plotext platformdirs mdit-py-plugins linkify-it-py uc-micro-py; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
    -d "$out/whl" "$pkg" 2>/dev/null || "$py" -m pip download -q --no-deps -d "$out/whl" "$pkg"
done
du -sh "$out"
