#!/usr/bin/env bash
# The GPU check: one call on a lent H100/H200, at most ~6 minutes after start-up whatever happens, from the
# repository root. Every stage has its own timeout and writes into $OUT (default benchmarks/results/<gpu>-<date>/)
# as soon as it ends, so a stage that hangs loses only itself; 8 files, the most the device tool brings back:
#   stages.txt     nvidia-smi, python, torch, CUDA and the commit; then each stage's exit code and seconds, the
#                  tests marked `cuda` (bf16/fp16 x channels_last x compile, the graphed inner loop, ...) and
#                  the wall times of 4 quick-start-sized runs sharing the GPU (--jobs 4) against one at a time
#   speed-convnet-128.json, speed-inner-convnet.json, speed-inner-alexnet.json, speed-alexnet.json
#                  one benchmarks/speed.py --json per workload (rates, compile warm-up, fallbacks, peak memory)
#   alexnet.txt + alexnet-results.json   one round of the cifar10-alexnet setting on the carried subset
#   summary.txt    one PASS/FAIL line per target (also printed last)
# Before: bash benchmarks/make_carry.sh (here, with ../shared beside the checkout); carry benchmarks/carry.
# Worst case on a GPU: the stages' timeouts add up to 375 s. On a CPU box it runs the same stages shrunk to
# smoke tests, with 3x the timeouts, which is how it is tested (about 3 minutes on 2 cores):
#   PYTHON=.venv/bin/python OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
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
gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-') if torch.cuda.is_available() else 'cpu')")
out=${OUT:-benchmarks/results/$gpu-$(date +%Y-%m-%d)}
mkdir -p "$out"
work=$(mktemp -d)
quick=0; scale=1
[ "$gpu" = cpu ] && quick=1 && scale=3  # a CPU: the same pipeline, each stage shrunk to a smoke test

stage() {  # stage NAME TIMEOUT_S COMMAND...: run it with its timeout (x3 on a CPU), record rc and seconds
  local name=$1 limit=$(( $2 * scale )); shift 2
  local t0=$SECONDS
  echo "== $name (timeout ${limit}s)"
  timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@"  # the stage's whole process group goes at its limit
  local rc=$?
  echo "stage $name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$out/stages.txt"
}

env_report() {
  { nvidia-smi 2>&1 || echo "no nvidia-smi"; "$py" -c "
import sys, torch
print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    echo "commit $(git rev-parse HEAD 2>/dev/null)"; } > "$out/stages.txt" 2>&1
}

speed() {  # speed NAME ARGS...: one workload's JSON
  local name=$1; shift
  "$py" benchmarks/speed.py --json --reps "$reps" "$@" > "$out/speed-$name.json" 2> "$work/speed-$name.err"
  local rc=$?
  tail -3 "$work/speed-$name.err"
  return $rc
}

jobs_share() {  # 4 quick-start-sized runs (2 seeds x imp/random): --jobs 4 against one at a time, same machine
  local small=(--set "run.seeds=[0,1]" --set "prune.methods=['imp','random']" --set prune.rounds=3)
  [ $quick = 1 ] && small+=(--set train.epochs=1 --set prune.rounds=1)
  for j in 1 4; do
    local t0=$SECONDS
    "$py" -m dptui --headless --profile quickstart --runs-dir "$work/jobs$j" --jobs "$j" "${small[@]}" \
      > "$work/jobs$j.txt" 2>&1
    echo "jobs=$j rc=$? wall_s=$((SECONDS - t0))"
  done | tee -a "$out/stages.txt"
}

alexnet_round() {
  local small=()
  [ $quick = 1 ] && small=(--set train.epochs=1 --set synthetic.epochs=2 --set data.subset=10 --set "run.compile='off'")
  "$py" -m dptui --headless --profile cifar10-alexnet --data-root "$carry" --runs-dir "$work/runs" \
    --set "data.dataset='npz'" --set "data.path='$carry/cifar10-subset.npz'" --set "prune.methods=['imp','distilled']" \
    --set prune.rounds=1 --set "run.seeds=[0]" --set run.jobs=2 "${small[@]}" --out "$work/alexnet" \
    > "$out/alexnet.txt" 2>&1
  local rc=$?
  local res; res=$(ls "$work"/runs/*/results.json 2>/dev/null | head -1)
  [ -n "$res" ] && cp "$res" "$out/alexnet-results.json"
  return $rc
}

cuda_tests() {
  "$py" -m pytest -m cuda tests/test_cuda.py -o addopts= -q -p no:cacheprovider > "$work/tests.txt" 2>&1
  local rc=$?
  { echo "tests marked cuda:"; tail -25 "$work/tests.txt"; } >> "$out/stages.txt"
  return $rc
}

env_report
if [ $quick = 1 ]; then
  reps=1; images=(--images 512); big=(--setting bf16:off); inner=(--inner-epochs 5 --setting bf16:off)
else
  # the inner loop as the GPU profiles run it: bf16, channels-last, compile "auto" (whole-step CUDA graphs)
  reps=3; images=(); big=(--setting bf16:on --channels-last); inner=(--setting bf16:auto --channels-last)
fi
export py out work reps quick carry
export -f speed jobs_share alexnet_round cuda_tests
stage tests 75 cuda_tests
stage convnet-128 60 speed convnet-128 --only convnet-128 "${big[@]}" "${images[@]}"
stage inner-convnet 45 speed inner-convnet --only inner --inner-model convnet "${inner[@]}"
stage inner-alexnet 45 speed inner-alexnet --only inner --inner-model alexnet "${inner[@]}"
stage alexnet 45 speed alexnet --only alexnet "${big[@]}" "${images[@]}"
stage jobs 60 jobs_share
stage alexnet-round 45 alexnet_round

"$py" - "$out" "$quick" <<'PY' | tee "$out/summary.txt"
import json, re, sys
from pathlib import Path
out, quick = Path(sys.argv[1]), sys.argv[2] == "1"

def speed(name):
    try:
        return json.loads((out / f"speed-{name}.json").read_text())
    except (OSError, ValueError):
        return None

def rate(report, key):
    if not report:
        return None, "no result (the stage failed or timed out: see stages.txt)"
    (w,) = report["workloads"].values()
    fell = report.get("fallbacks") or []
    return w.get(key), (f"compile or CUDA graphs fell back to eager in {', '.join(fell)}" if fell else "")

def line(ok, target, got, why=""):
    verdict = "PASS" if ok else "FAIL"
    print(f"{verdict}  {target}: {got}" + (f" ({why})" if why else ""))

print(f"GPU check summary ({'CPU smoke test: the targets are GPU targets' if quick else 'on the GPU'})")
r, why = rate(speed("convnet-128"), "engine_img_s")
line(r is not None and r >= 100_000 and not why, "ConvNet-128 bf16 compiled channels-last training >= 100k img/s",
     "-" if r is None else f"{r:,.0f} img/s", why)
for name, label in (("inner-convnet", "ConvNet-128"), ("inner-alexnet", "AlexNet")):
    r, why = rate(speed(name), "engine_steps_s")
    line(r is not None and r >= 2000 and not why, f"synthetic inner loop on {label} bf16 >= 2,000 steps/s",
         "-" if r is None else f"{r:,.0f} steps/s", why)
r, why = rate(speed("alexnet"), "engine_img_s")
est = None if not r else 60 * 50_000 / r
line(est is not None and est <= 60 and not why, "AlexNet validation training, 60 epochs on 50k images <= 60 s",
     "-" if est is None else f"{est:.0f} s, extrapolated from one timed epoch at {r:,.0f} img/s", why)
log = (out / "stages.txt").read_text() if (out / "stages.txt").exists() else ""
walls = {int(m[1]): (int(m[2]), int(m[3])) for m in re.finditer(r"jobs=(\d+) rc=(\d+) wall_s=(\d+)", log)}
if 1 in walls and 4 in walls and walls[1][0] == walls[4][0] == 0:
    ratio = walls[1][1] / max(walls[4][1], 1)
    line(ratio > 1.0, "4 quick-start-sized runs sharing one GPU, --jobs 4 faster than one at a time",
         f"{walls[4][1]} s vs {walls[1][1]} s one at a time ({ratio:.1f}x)")
else:
    line(False, "4 quick-start-sized runs sharing one GPU", f"no result ({walls or 'see stages.txt'})")
tests = log.split("tests marked cuda:", 1)[1].strip().splitlines() if "tests marked cuda:" in log else []
last = next((ln for ln in reversed(tests) if " in " in ln and ("passed" in ln or "skipped" in ln or "failed" in ln)),
            "no summary line (the stage failed or timed out: see stages.txt)")
if "passed" in last and "failed" not in last and "error" not in last:
    print(f"PASS  tests marked cuda: {last}")
else:
    print(f"{'SKIP' if 'skipped' in last and 'failed' not in last else 'FAIL'}  tests marked cuda: {last}")
res = out / "alexnet-results.json"
line(res.exists(), "one round of cifar10-alexnet, results.json written", "yes" if res.exists() else "no (see alexnet.txt)")
PY
echo "files in $out:"; ls -la "$out"
