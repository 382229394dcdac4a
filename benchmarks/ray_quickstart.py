"""The quickstart on the local executor vs a 2-node Ray cluster on this machine, side by side in one run.

    python benchmarks/ray_quickstart.py [--json OUT]

Two fresh run stores: local with ``run.threads=1``, and Ray (a head and
a worker node from ``ray.cluster_utils.Cluster``, one CPU each, so the quickstart's runs go two at a time,
one thread each, ``run.threads=1``). Each is ``dptui --headless`` in a subprocess, timed from start to exit;
the reference training (``../shared/bench/reference_training.py``) is timed before and after when it exists.
The two ``run.threads=1`` stores must hold the same rounds and masks: the script checks it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "bench" / "reference_training.py"
TIMING = {"inner_train_s", "prune_s", "val_train_s", "compile_s", "time_to_mask_s", "time_to_mask_validated_s"}


def reference() -> str:
    if not REFERENCE.exists():
        return "n/a"
    return subprocess.run([sys.executable, str(REFERENCE)], capture_output=True, text=True).stdout.strip()


def headless(store: Path, *extra: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dptui", "--headless", "--runs-dir", str(store), *extra],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dptui failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def same_results(a: Path, b: Path) -> int:
    """Number of runs compared; raises if any round row (timings aside) or mask differs."""
    from dpcore.safe_load import safe_torch_load

    runs = sorted(d.name for d in a.iterdir() if (d / "results.json").exists())
    assert runs == sorted(d.name for d in b.iterdir() if (d / "results.json").exists()), "different runs"
    for rid in runs:
        ra, rb = (json.loads((s / rid / "results.json").read_text()) for s in (a, b))
        for x, y in zip(ra["rounds"], rb["rounds"], strict=True):
            assert {k: v for k, v in x.items() if k not in TIMING} == {k: v for k, v in y.items() if k not in TIMING}
            ma = safe_torch_load(a / rid / f"round_{x['round']:03d}.pt")["mask"]
            mb = safe_torch_load(b / rid / f"round_{x['round']:03d}.pt")["mask"]
            assert all(torch.equal(ma[k], mb[k]) for k in ma), f"{rid} round {x['round']}: masks differ"
    return len(runs)


def main() -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    base = Path(tempfile.mkdtemp(prefix="dptui-ray-bench-"))
    out = {"reference_before_s": reference()}
    out["local_threads1_s"] = headless(base / "local1", "--set", "run.threads=1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        out["ray_2_nodes_threads1_s"] = headless(base / "ray", "--set", "run.threads=1", "--executor", "ray", env=env)
    finally:
        cluster.shutdown()
    out["reference_after_s"] = reference()
    out["identical_runs"] = same_results(base / "local1", base / "ray")
    nodes = {json.loads((d / "results.json").read_text()).get("node", "").split(" ")[0]
             for d in (base / "ray").iterdir() if (d / "results.json").exists()}
    out["ray_nodes_used"] = len(nodes)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
