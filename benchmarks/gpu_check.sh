#!/usr/bin/env bash
# The GPU check, one call on a lent H100/H200 (<= 6 minutes), from the repository root:
#   1. the tests marked `cuda` (training, masks stay zero, resume, each distiller, the app's device slots),
#   2. benchmarks/speed.py --json on CUDA (engine vs seed-style loop, inner loop steps/s, distillers),
#   3. one round of the cifar10-alexnet setting (AlexNet, ZCA, 60 epochs, the MTT 10 ipc set), IMP vs distilled,
#      on the carried CIFAR-10 subset (1,000 images per class),
# and writes benchmarks/results/<gpu>-<date>.md (also copied to $OUT when set).
# Before: bash benchmarks/make_carry.sh (here, with ../shared beside the checkout); carry benchmarks/carry.
# It also runs on a CPU box (no cuda tests, speed.py --quick, the AlexNet round shrunk to a smoke test), which is how
# it is tested: PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
carry=benchmarks/carry
py=${PYTHON:-python3}
if [ -d "$carry/whl" ] && ls "$carry"/whl/*.whl >/dev/null 2>&1 && ! "$py" -c "import textual, tomli_w" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$carry"/whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
out=${OUT:-benchmarks/results}
work=$(mktemp -d)
gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-') if torch.cuda.is_available() else 'cpu')")
report=benchmarks/results/$gpu-$(date +%Y-%m-%d).md
mkdir -p benchmarks/results "$out"

echo "== 1. tests marked cuda"
timeout 120 "$py" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$work/tests.txt"
echo "== 2. benchmarks/speed.py --json"
quick=(); [ "$gpu" = cpu ] && quick=(--quick)  # the full pass takes ~5 min on 2 CPU cores
timeout 200 "$py" benchmarks/speed.py --json "${quick[@]}" > "$work/speed.json" 2> "$work/speed.err"; echo "rc $?"
tail -3 "$work/speed.err"
echo "== 3. one round of cifar10-alexnet, IMP vs distilled, on the carried subset"
small=()  # on a CPU (how this script is tested) the same pipeline, shrunk to a smoke test
[ "$gpu" = cpu ] && small=(--set train.epochs=2 --set synthetic.epochs=3 --set data.subset=20)
timeout 240 "$py" -m dptui --headless --profile cifar10-alexnet --data-root "$carry" --runs-dir "$work/runs" \
  --set "data.dataset='npz'" --set "data.path='$carry/cifar10-subset.npz'" --set "prune.methods=['imp','distilled']" \
  --set prune.rounds=1 --set "run.seeds=[0]" "${small[@]}" --out "$work/alexnet" 2>&1 | tee "$work/alexnet.txt"

"$py" - "$work" "$report" "$gpu" <<'PY'
import json, sys, torch
from pathlib import Path
work, report, gpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
lines = [f"# GPU check: {gpu}", "", f"torch {torch.__version__}; written by benchmarks/gpu_check.sh", ""]
tests = (work / "tests.txt").read_text().strip().splitlines()
lines += ["## Tests marked cuda", "", "```", *(tests[-3:] or ["(none ran)"]), "```", ""]
try:
    speed = json.loads((work / "speed.json").read_text())
    lines += ["## benchmarks/speed.py", "", f"device {speed.get('device')}, threads {speed.get('threads')}", "",
              "| workload | setting | engine | seed-style | ratio |", "|---|---|---:|---:|---:|"]
    for name, w in speed.get("workloads", {}).items():
        unit = w.get("unit", "")
        for setting, v in (w.get("settings") or {}).items():
            rate, ratio = v.get("rate"), v.get("ratio")
            head = " *" if setting == w.get("engine_setting") else ""
            seed = w.get("seedstyle_steps_s") if w.get("kind") == "inner" else w.get("seedstyle_img_s")
            lines.append(f"| {name} | {setting}{head} | {rate:,.1f} {unit} | "
                         f"{'' if seed is None else f'{seed:,.1f}'} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    lines.append("")
except (OSError, ValueError) as err:
    lines += ["## benchmarks/speed.py", "", f"no result ({err}); see speed.err", ""]
summary = work / "alexnet" / "summary.md"
lines += ["## cifar10-alexnet, one round, carried subset (10k train images)", "",
          summary.read_text() if summary.exists() else "no result: see the log", ""]
report.write_text("\n".join(lines))
print(f"wrote {report}")
PY
cp "$report" "$work/speed.json" "$work/alexnet.txt" "$out/" 2>/dev/null || true
