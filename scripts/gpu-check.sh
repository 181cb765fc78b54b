#!/usr/bin/env bash
# check.sh of the GPU bundle (scripts/gpu-bundle.sh copies this file into it):
# every GPU check of glam in one call, inside a time budget, everything logged.
#
# usage: check.sh [--no-gpu-ok] [--budget SECONDS] [BENCH_CONFIG...]
#   BENCH_CONFIG  configs for the last step, bench_gpu (default: glam-0.1b-64e, glam-1.7b)
#   --budget S    the whole script's time (default 540 s = 9 min, or GLAM_CHECK_BUDGET):
#                 each step runs under `timeout` with its own limit, cut to what is
#                 left of the budget; a step that would start with under 10 s left
#                 is not run and counts as failed
#                 (GLAM_CHECK_MAX_STEP=S caps every step's own limit at S seconds)
#   --no-gpu-ok   (or GLAM_CHECK_NO_GPU_OK=1) for testing the bundle on a machine
#                 without a GPU (the gpu_bundle CTest): exit 77 ("no GPU visible")
#                 and a missing compute-sanitizer count as SKIPPED. Without it, on
#                 the GPU machine, they are FAILURES: a machine whose driver cannot be
#                 reached must not pass.
#
# Logs go to $OUT when it is set (the device machine's folder that comes back),
# else to logs/ beside this script, as three files (the device tool returns at
# most 8 from $OUT):
#   check.log       everything, written as it runs (each step's output after a
#                   "== [NN-name] command" header)
#   summary.txt     one line per step: name, rc, seconds, PASSED|FAILED|SKIPPED and why;
#                   then "check: N passed, N failed, N skipped"
#   steps.tar.gz    steps/NN-name.log, one per step (and the loss files of `repeat`),
#                   refreshed after every step
# Exit status: 0 when no step failed, else 1.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here" || exit 2

no_gpu_ok=${GLAM_CHECK_NO_GPU_OK:-0}
budget=${GLAM_CHECK_BUDGET:-540}
configs=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-gpu-ok) no_gpu_ok=1 ;;
    --budget) budget=${2:?--budget needs seconds}; shift ;;
    --budget=*) budget=${1#*=} ;;
    -h|--help) sed -n '2,/^set -u/p' "$here/${0##*/}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) configs+=("$1") ;;
  esac
  shift
done
[[ $budget =~ ^[0-9]+$ ]] || { echo "check.sh: --budget must be whole seconds, got '$budget'" >&2; exit 2; }
[[ ${#configs[@]} -gt 0 ]] || configs=(input/glam-0.1b-64e.cfg input/glam-1.7b.cfg)

log_dir=${OUT:-$here/logs}
steps_dir=$here/logs/steps
mkdir -p "$log_dir" || exit 2
rm -rf "$steps_dir" && mkdir -p "$steps_dir" || exit 2
combined=$log_dir/check.log
summary=$log_dir/summary.txt
: > "$combined"
: > "$summary"
export steps_dir

# Every program runs through run.sh, which sets the bundle's environment (Open MPI
# without ssh, its libraries, CUDA's); this script's own tools keep the system's.
# One thread per rank unless told otherwise; the single-process steps use the cores.
cores=$(nproc 2>/dev/null || echo 4)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cores} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$cores}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(now_ms)
reserve=15  # seconds kept back: timeout's grace (-k 10) and the final lines
say() { echo "$*"; echo "$*" >> "$combined"; }
n_pass=0 n_fail=0 n_skip=0 idx=0

# record NAME RC SECONDS STATUS WHY
record() {
  local line
  line=$(printf '%-12s rc=%-4s %7ss  %s%s' "$1" "$2" "$3" "$4" "${5:+  ($5)}")
  say "$line"
  echo "$line" >> "$summary"
  case $4 in PASSED) n_pass=$((n_pass + 1)) ;; SKIPPED) n_skip=$((n_skip + 1)) ;; *) n_fail=$((n_fail + 1)) ;; esac
  tar czf "$log_dir/steps.tar.gz" -C "$here/logs" steps 2>/dev/null
}

# step NAME LIMIT COMMAND... : runs COMMAND (a program or a function below) under
# timeout, its output into check.log and steps/NN-NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  idx=$((idx + 1))
  local tag log left start rc secs status why=
  tag=$(printf '%02d-%s' "$idx" "$name")
  log=$steps_dir/$tag.log
  left=$(( budget - ($(now_ms) - t0) / 1000 - reserve ))
  if (( left < 10 )); then
    echo "not run: under 10s of the ${budget}s budget left" > "$log"
    record "$name" - 0 FAILED "not run: under 10s of the ${budget}s budget left"
    return
  fi
  (( limit > left )) && limit=$left
  [[ -n ${GLAM_CHECK_MAX_STEP:-} ]] && (( limit > GLAM_CHECK_MAX_STEP )) && limit=$GLAM_CHECK_MAX_STEP
  say "== [$tag] $* (limit ${limit}s)"
  local offset
  offset=$(stat -c %s "$combined")
  start=$(now_ms)
  if declare -F "$1" >/dev/null; then
    timeout -k 10 "$limit" bash -c '"$@"' _ "$@" < /dev/null >> "$combined" 2>&1
  else
    timeout -k 10 "$limit" "$@" < /dev/null >> "$combined" 2>&1
  fi
  rc=$?
  secs=$(( $(now_ms) - start ))
  secs=$(printf '%d.%d' $((secs / 1000)) $(( (secs % 1000) / 100 )))
  tail -c +$((offset + 1)) "$combined" > "$log"
  if (( rc == 0 )); then status=PASSED
  elif (( rc == 77 )); then
    if (( no_gpu_ok )); then status=SKIPPED why="exit 77: no GPU visible; --no-gpu-ok"
    else status=FAILED why="exit 77: the program saw no GPU: the CUDA driver could not be reached"; fi
  elif (( rc == 124 || rc == 137 )); then status=FAILED why="timed out after ${limit}s (or killed)"
  else status=FAILED why="exit $rc"
  fi
  if [[ $status == FAILED ]]; then
    echo "--- last lines of $tag:"
    tail -n 25 "$log"
  fi
  record "$name" "$rc" "$secs" "$status" "$why"
}

# ---- compound steps (run by step in a child bash: exported) ---------------------

# Two identical runs of bench_gpu must write the same losses and gradient norms, bit for bit.
repeat_check() {
  local a=$steps_dir/repeat-1.txt b=$steps_dir/repeat-2.txt f rc
  for f in "$a" "$b"; do
    ./run.sh bench_gpu --rows 8 --steps 6 --warmup 0 --losses "$f" input/glam-tiny.cfg
    rc=$?
    [[ $rc -eq 0 ]] || return $rc
  done
  [[ -s $a ]] || { echo "repeat: bench_gpu wrote no losses"; return 1; }
  echo "--- run 1 (run 2 must be the same bytes):"
  cat "$a"
  if cmp "$a" "$b"; then
    echo "repeat: two runs gave identical losses and gradient norms, bit for bit"
  else
    echo "--- diff run 1 run 2:"
    diff "$a" "$b"
    return 1
  fi
}

find_sanitizer() {
  local f
  for f in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
           /opt/nvidia/compute-sanitizer/compute-sanitizer; do
    [[ -n $f && -x $f ]] && { echo "$f"; return 0; }
  done
  return 1
}

# sanitize TOOL CATCH_TEST_SPEC: compute-sanitizer on test_cuda_layers (a subset of its cases)
sanitize() {
  local tool=$1 spec=$2 san
  san=$(find_sanitizer) || return 78
  echo "$san --tool $tool on test_cuda_layers '$spec'"
  eval "$(./run.sh --env)"
  "$san" --tool "$tool" --error-exitcode 1 --target-processes application-only \
    "$here/bin/test_cuda_layers" "$spec"
}
export -f repeat_check find_sanitizer sanitize
export here

# ---- the checks ------------------------------------------------------------------

say "check.sh: $(cat VERSION 2>/dev/null || echo 'glam bundle') on $(hostname 2>/dev/null), $(date -u '+%F %T UTC')"
say "budget ${budget}s; logs in $log_dir; no-gpu-ok=$no_gpu_ok; OMP_NUM_THREADS=$OMP_NUM_THREADS"
if command -v nvidia-smi >/dev/null; then
  say "$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
else
  say "nvidia-smi: not on PATH"
fi

step libs 20 ./run.sh --check-libs
step mpi_1 30 ./run.sh bench_gpu --mpi-check
step mpi_2 45 ./run.sh mpirun -np 2 -x LD_LIBRARY_PATH -x OMP_NUM_THREADS=1 "$here/bin/bench_gpu" --mpi-check
step layers 120 ./run.sh test_cuda_layers
step model 180 ./run.sh test_cuda_model
for shape in 2x1 1x2 2x2 1x3; do
  np=$(( ${shape%x*} * ${shape#*x} ))
  step "mesh_$shape" 90 ./run.sh mpirun -np "$np" -x LD_LIBRARY_PATH -x GLAM_TEST_MESH="$shape" \
    -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 "$here/bin/test_cuda_mesh"
done
step repeat 120 repeat_check

# compute-sanitizer: memcheck on every case of the layer test; racecheck (shared
# memory hazards, slower) on the cases with glam's own kernels, not cuBLAS's GEMMs.
memcheck_spec=${GLAM_CHECK_MEMCHECK_TESTS:-*}
racecheck_spec=${GLAM_CHECK_RACECHECK_TESTS:-~matmul*}
for tool in memcheck racecheck; do
  if ! find_sanitizer > /dev/null; then
    idx=$((idx + 1))
    why="compute-sanitizer not found on PATH, in /usr/local/cuda/bin or /usr/local/cuda/compute-sanitizer"
    echo "$why" > "$steps_dir/$(printf '%02d' "$idx")-$tool.log"
    if (( no_gpu_ok )); then record "$tool" - 0 SKIPPED "$why; --no-gpu-ok"
    else record "$tool" - 0 FAILED "$why"; fi
    continue
  fi
  spec=$memcheck_spec
  [[ $tool == racecheck ]] && spec=$racecheck_spec
  step "$tool" 120 sanitize "$tool" "$spec"
done

step bench 150 ./run.sh bench_gpu --rows 8 --steps 3 --warmup 1 "${configs[@]}"

total=$(( ($(now_ms) - t0) / 1000 ))
line="check: $n_pass passed, $n_fail failed, $n_skip skipped"
say "total ${total}s of a ${budget}s budget"
echo "$line" >> "$summary"
say "$line"
(( n_fail == 0 ))
