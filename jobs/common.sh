# shellcheck shell=bash
# The body of every jobs/*.sbatch: each job script sets GLAM_MODEL (the config
# input/$GLAM_MODEL.cfg) and GLAM_MESH (DxM), then sources this file as its last
# line; its own arguments ("$@") are passed on to `glam train` as overrides, e.g.
#   sbatch jobs/glam-1.7b.sbatch --train.steps 1000 --checkpoint.every_steps 500
#
# It runs `glam train` on every task of the allocation through srun (which also
# wires up MPI) and turns exit status 75 (glam was sent SIGUSR1 or SIGTERM,
# finished its step and wrote a checkpoint) into `scontrol requeue`: the requeued
# job runs this script again on the same run dir, and `glam train` resumes from
# RUN_DIR/checkpoints/latest by itself. See jobs/README.md.
#
# Knobs (environment; sbatch passes the submitting shell's environment on):
#   GLAM_ROOT          the glam checkout             (default: $SLURM_SUBMIT_DIR)
#   GLAM_BIN           the glam executable           (default: $GLAM_ROOT/build/glam)
#   RUN_DIR            run dir, relative to GLAM_ROOT or absolute
#                                                    (default: runs/$SLURM_JOB_NAME)
#   GLAM_CKPT_MINUTES  checkpoint every N minutes of training, against failures that
#                      come without notice; 0 = only on a signal and at the end
#                      (default: 30; ignored when "$@" sets --checkpoint.every_minutes)
#   GLAM_MAX_REQUEUES  stop requeueing after this many restarts (default: 100)
#   GLAM_SRUN_FLAGS    extra srun flags, split on spaces (e.g. "--mpi=pmix --cpu-bind=cores")
#   GLAM_SITE          a file sourced first, for the site's module loads and variables
#                      (default: $GLAM_ROOT/jobs/site.sh when it exists)
#   GLAM_MESH          DxM; the job script's default is its plan's mesh
#   GLAM_SETTINGS      glam train options of the plan's memory savings, e.g.
#                      "--train.remat true --train.micro_rows 8" (the job script's
#                      default: its plan's, jobs/README.md); an option that "$@" also
#                      gives is dropped here, so the command line wins
#   GLAM_DEVICE        auto | cpu | cuda (default: auto: cuda when every rank sees a GPU).
#                      The scripts request no GPUs (they run on CPU-only nodes); on GPU
#                      nodes submit with SBATCH_GPUS_PER_TASK=1 or --gpus-per-task=1.
# OMP_NUM_THREADS and OPENBLAS_NUM_THREADS are set from SLURM_CPUS_PER_TASK.

set -euo pipefail

: "${GLAM_MODEL:?the job script must set GLAM_MODEL (a config name in input/)}"
: "${GLAM_MESH:?the job script must set GLAM_MESH (DxM)}"

glam_job_fail() {  # message -> stderr, exit 2 (bad set-up: requeueing would not help)
  echo "glam job: error: $*" >&2
  exit 2
}

# Relative paths (RUN_DIR, the [data] files of the configs) are relative to the checkout.
GLAM_ROOT="${GLAM_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
cd "$GLAM_ROOT" || glam_job_fail "GLAM_ROOT '$GLAM_ROOT' is not a directory"
# The site's modules and variables first: it may set any of the knobs below.
GLAM_SITE="${GLAM_SITE:-$GLAM_ROOT/jobs/site.sh}"
if [[ -f "$GLAM_SITE" ]]; then
  echo "glam job: sourcing $GLAM_SITE"
  # shellcheck source=/dev/null
  source "$GLAM_SITE"
fi
GLAM_BIN="${GLAM_BIN:-$GLAM_ROOT/build/glam}"
GLAM_CONFIG="$GLAM_ROOT/input/$GLAM_MODEL.cfg"
RUN_DIR="${RUN_DIR:-runs/${SLURM_JOB_NAME:-$GLAM_MODEL}}"
GLAM_CKPT_MINUTES="${GLAM_CKPT_MINUTES:-30}"
GLAM_MAX_REQUEUES="${GLAM_MAX_REQUEUES:-100}"
GLAM_DEVICE="${GLAM_DEVICE:-auto}"
[[ -x "$GLAM_BIN" ]] || glam_job_fail "no glam executable at '$GLAM_BIN' (build it: make build, or set GLAM_BIN)"
[[ -f "$GLAM_CONFIG" ]] || glam_job_fail "no config '$GLAM_CONFIG' (GLAM_MODEL=$GLAM_MODEL)"
[[ "$GLAM_MESH" =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || glam_job_fail "GLAM_MESH '$GLAM_MESH' is not DxM"
mesh_cells=$((BASH_REMATCH[1] * BASH_REMATCH[2]))
[[ "$GLAM_DEVICE" =~ ^(auto|cpu|cuda)$ ]] || glam_job_fail "GLAM_DEVICE '$GLAM_DEVICE' is not auto, cpu or cuda"
if [[ -n "${SLURM_NTASKS:-}" && "$SLURM_NTASKS" -ne "$mesh_cells" ]]; then
  glam_job_fail "mesh $GLAM_MESH has $mesh_cells cells but the job has $SLURM_NTASKS tasks" \
                "(#SBATCH --nodes x --ntasks-per-node must equal D x M)"
fi

# One OpenMP/OpenBLAS thread per CPU of the task. srun of Slurm 22.05 and later does
# not inherit --cpus-per-task from the job: SRUN_CPUS_PER_TASK passes it on.
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
  export OMP_NUM_THREADS="$SLURM_CPUS_PER_TASK"
  export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export OPENBLAS_NUM_THREADS="$OMP_NUM_THREADS"

# Periodic checkpoints, unless the command line already chooses.
ckpt_args=()
if [[ "$GLAM_CKPT_MINUTES" != 0 ]]; then
  ckpt_args=(--checkpoint.every_minutes "$GLAM_CKPT_MINUTES")
fi
for arg in "$@"; do
  case "$arg" in --checkpoint.every_minutes | --checkpoint.every_minutes=*) ckpt_args=() ;; esac
done
# The plan's settings, less those the command line gives (glam refuses an option twice).
settings_args=()
read -r -a settings <<< "${GLAM_SETTINGS:-}"
for ((i = 0; i < ${#settings[@]}; i += 2)); do
  given=0
  for arg in "$@"; do
    [[ "$arg" == "${settings[i]}" || "$arg" == "${settings[i]}="* ]] && given=1
  done
  [[ $given -eq 1 ]] || settings_args+=("${settings[i]}" "${settings[i + 1]:-}")
done
srun_flags=()
if [[ -n "${GLAM_SRUN_FLAGS:-}" ]]; then
  read -r -a srun_flags <<< "$GLAM_SRUN_FLAGS"
fi

mkdir -p "$(dirname "$RUN_DIR")"
if [[ -f "$RUN_DIR/checkpoints/latest" ]]; then
  start="resuming from $RUN_DIR/checkpoints/$(cat "$RUN_DIR/checkpoints/latest")"
else
  start="starting in $RUN_DIR"
fi
echo "glam job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $GLAM_MODEL on ${SLURM_NNODES:-?} nodes," \
     "${SLURM_NTASKS:-?} tasks, mesh $GLAM_MESH, settings '${settings_args[*]+"${settings_args[*]}"}'," \
     "$OMP_NUM_THREADS threads per task; $start; $(date)"

# Signals: SIGTERM reaches this shell and the step on scancel and on preemption; the
# time-limit notice reaches the step (--signal=USR1@N) or only this shell (B:USR1@N,
# scancel --signal=USR1 --batch). glam checkpoints on either. srun runs in the
# background so that the traps run at once: they forward the signal to srun (which
# passes it to every task), and the loop below waits until srun has really exited.
# A job that got SIGTERM is not requeued here: it was cancelled, or SLURM requeues
# a preempted job itself.
got_term=0
# shellcheck disable=SC2317  # called from the traps
glam_forward() {  # glam_forward SIGNAL
  [[ $1 == TERM ]] && got_term=1
  echo "glam job: SIG$1; passing it to glam (srun $srun_pid) and waiting for its checkpoint"
  kill -"$1" "$srun_pid" 2> /dev/null || true
}
trap 'glam_forward TERM' TERM
trap 'glam_forward USR1' USR1

# "${a[@]+"${a[@]}"}": empty arrays under set -u on bash < 4.4 too.
set +e
srun --kill-on-bad-exit=1 ${srun_flags[@]+"${srun_flags[@]}"} \
  "$GLAM_BIN" train --config "$GLAM_CONFIG" --run-dir "$RUN_DIR" --mesh "$GLAM_MESH" --device "$GLAM_DEVICE" \
  ${settings_args[@]+"${settings_args[@]}"} ${ckpt_args[@]+"${ckpt_args[@]}"} "$@" &
srun_pid=$!
# Polled, not `wait`ed: a trap interrupts `wait`, and bash 5.2 then sometimes records
# the status of a child reaped meanwhile as -1 (255). The traps run between sleeps.
while kill -0 "$srun_pid" 2> /dev/null; do sleep 0.2; done
wait "$srun_pid"
status=$?
set -e

if [[ $status -eq 0 ]]; then
  echo "glam job: training finished; weights in $RUN_DIR/weights.h5; $(date)"
  exit 0
fi
if [[ $status -eq 75 ]]; then  # glam::kExitPreempted: stopped on a signal, checkpoint written
  if [[ $got_term -eq 1 ]]; then
    echo "glam job: stopped by SIGTERM (scancel or preemption), checkpoint written; not requeueing." \
         "A preempted job is requeued by SLURM; otherwise resubmit with the same RUN_DIR to resume" >&2
    exit 75
  fi
  if [[ "${SLURM_RESTART_COUNT:-0}" -ge "$GLAM_MAX_REQUEUES" ]]; then
    echo "glam job: preempted after ${SLURM_RESTART_COUNT:-0} restarts (GLAM_MAX_REQUEUES=$GLAM_MAX_REQUEUES);" \
         "not requeueing; resubmit jobs/$GLAM_MODEL.sbatch with the same RUN_DIR to resume" >&2
    exit 75
  fi
  echo "glam job: checkpoint written; requeueing job ${SLURM_JOB_ID:?}; the next run resumes from it"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "glam job: error: scontrol requeue $SLURM_JOB_ID failed; resubmit to resume from $RUN_DIR" >&2
    exit 75
  fi
  exit 0
fi
echo "glam job: error: glam train exited with status $status" >&2
exit "$status"
