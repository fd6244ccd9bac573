#!/usr/bin/env bash
# Issue 24 on one GPU, as stages that each fit one device command (< 10 minutes).
#
#   bash benchmarks/rl_gpu_session.sh speed    # RL GPU tests; AXMS frames/s GPU vs CPU at 256 envs; calibration
#   bash benchmarks/rl_gpu_session.sh bench1   # suite envs 1-3 x {lstm, gru, D, GD, AXMS} x 3 seeds
#   bash benchmarks/rl_gpu_session.sh bench2   # envs 4-6
#   bash benchmarks/rl_gpu_session.sh bench3   # envs 7-8
#   bash benchmarks/rl_gpu_session.sh bench4   # envs 9-10
#
# FRAMES (default 1000000) frames per run, JOBS (default 14) runs at a time, MINUTES (default 7) after which no
# new run starts. A bench stage writes results.json and table.md to $OUT (default runs/rl_device); runs it could
# not start are listed as not_run. To finish them, put the returned results.json in PRIOR=<dir> and run the stage
# again: finished runs are skipped. Merge the stages here with `cortex rl report <dirs> --out <dir>`.
# Needs torchrl, hoptorch, gymnasium, farama-notifications and popgym wheels in .whl (docs/rl.md says which).
set -uo pipefail
stage=${1:?usage: bash benchmarks/rl_gpu_session.sh speed|bench1|bench2|bench3|bench4}
cd "$(dirname "$0")/.."
out=${OUT:-runs/rl_device}
frames=${FRAMES:-1000000}
jobs=${JOBS:-14}
minutes=${MINUTES:-7}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/dev/null 2>&1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
cortex() { python3 -m cortexmem "$@"; }
work=/tmp/rl_work_$stage
mkdir -p "$work"

case "$stage" in
  speed)
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_rl_cuda.py 2>&1 | tail -15 | tee "$out/tests.log"
    common=(rl train --env RepeatPreviousEasy --stack AXMS --num-envs 256 --no-progress --checkpoint-every 0)
    timeout 120 cortex "${common[@]}" --frames 65536 --device cuda --out "$work/cuda" > "$out/speed_cuda.json"
    timeout 120 cortex "${common[@]}" --frames 65536 --device cuda --amp --out "$work/cuda_amp" > "$out/speed_cuda_amp.json"
    timeout 90 cortex "${common[@]}" --frames 32768 --device cpu --threads 1 --out "$work/cpu1" > "$out/speed_cpu1.json"
    timeout 90 cortex "${common[@]}" --frames 32768 --device cpu --threads 16 --out "$work/cpu16" > "$out/speed_cpu16.json"
    grep -h '"frames_per_second"' "$out"/speed_*.json
    # calibration: each suite stack alone and 5 at a time on one env (frames/s per run under sharing)
    timeout 150 cortex rl bench --envs RepeatPreviousEasy --seeds 1 --frames 131072 --jobs 5 --device cuda \
      --no-plots --out "$work/calib"
    cp "$work/calib/results.json" "$out/calibration_results.json"
    cp "$work/calib/table.md" "$out/calibration_table.md"
    ;;
  bench1|bench2|bench3|bench4)
    envs=$(case "$stage" in
      bench1) echo RepeatFirstEasy,RepeatPreviousEasy,AutoencodeEasy ;;
      bench2) echo CountRecallEasy,PositionOnlyCartPoleEasy,NoisyPositionOnlyCartPoleEasy ;;
      bench3) echo HigherLowerEasy,ConcentrationEasy ;;
      bench4) echo BattleshipEasy,MineSweeperEasy ;;
    esac)
    if [ -n "${PRIOR:-}" ] && [ -f "$PRIOR/results.json" ]; then cp "$PRIOR/results.json" "$work/results.json"; fi
    timeout 590 cortex rl bench --envs "$envs" --stacks suite --seeds 3 --frames "$frames" --jobs "$jobs" \
      --device cuda --max-minutes "$minutes" --no-plots --out "$work"
    cp "$work/results.json" "$work/table.md" "$out/"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
