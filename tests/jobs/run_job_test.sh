#!/usr/bin/env bash
# Runs jobs/glam-tiny.sbatch on this machine as SLURM would run it, without SLURM:
# the SLURM_* variables of its allocation (read from its #SBATCH lines) are set,
# and `srun` and `scontrol` are stub scripts put first on PATH in WORK_DIR/bin:
#   srun      records its arguments and environment in WORK_DIR/log/srun.*, drops its
#             own options (--kill-on-bad-exit=1, ...) and then, by STUB_SRUN_MODE:
#               run      mpirun --allow-run-as-root --oversubscribe -np $SLURM_NTASKS "$@"
#               usr1     the same, and sends SIGUSR1 to mpirun (which passes it to the
#                        ranks) once glam has logged its first step (every rank has its
#                        signal handlers by then), as --signal=USR1@300 does
#               usr1_batch  the same, but sends SIGUSR1 to the job script (as
#                        --signal=B:USR1@300 and scancel --signal=USR1 --batch do); like
#                        srun, the stub passes a SIGUSR1 or SIGTERM it gets on to the ranks
#               exit75   exits 75 at once (glam stopped on a signal, checkpoint written)
#               term75   sends SIGTERM to the job script (as scancel does), then exits 75
#               exit3    exits 3 at once (glam failed)
#   scontrol  records its arguments in WORK_DIR/log/scontrol.args; exits STUB_SCONTROL_RC.
#
# usage: run_job_test.sh MODE SOURCE_DIR GLAM_BIN DATA_DIR WORK_DIR MPIEXEC
#   MODE      train | requeue | failure | preempt | preempt_batch | env_mesh (see the cases below)
#   DATA_DIR  holds tiny.h5 and tiny.model (the tiny_corpus fixture of tests/data)
set -euo pipefail

mode=$1 src=$2 glam=$3 data=$4 work=$5 mpiexec=$6
job=$src/jobs/glam-tiny.sbatch

fail() { echo "FAIL ($mode): $*" >&2; exit 1; }
note() { echo "--- $*"; }

rm -rf "$work"
mkdir -p "$work/bin" "$work/log"

cat > "$work/bin/srun" <<'EOF'
#!/usr/bin/env bash
# stub srun (tests/jobs/run_job_test.sh)
set -u
log=$STUB_LOG
printf '%s\n' "$*" >> "$log/srun.args"
{ echo "OMP_NUM_THREADS=${OMP_NUM_THREADS:-}"; echo "OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-}";
  echo "SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-}"; echo "PWD=$PWD";
  echo "GLAM_TEST_SITE=${GLAM_TEST_SITE:-}"; } > "$log/srun.env"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done   # srun's own options
mpirun=("$STUB_MPIEXEC" --allow-run-as-root --oversubscribe -np "$SLURM_NTASKS"
        -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)
# mpirun would take the SLURM_* variables for a real allocation and ask SLURM for it
while read -r var; do unset "$var"; done < <(compgen -e | grep '^SLURM_')
case "${STUB_SRUN_MODE:-run}" in
  run) exec "${mpirun[@]}" "$@" ;;
  exit75) exit 75 ;;
  term75) kill -TERM "$PPID"; exit 75 ;;
  exit3) exit 3 ;;
  usr1 | usr1_batch)
    "${mpirun[@]}" "$@" &
    pid=$!
    trap 'kill -USR1 "$pid" 2> /dev/null' USR1 TERM   # Open MPI's mpirun aborts on SIGTERM
    metrics=$STUB_METRICS
    for _ in $(seq 1500); do   # up to 30 s for the first logged step
      [[ -f $metrics && $(wc -l < "$metrics") -ge 1 ]] && break
      kill -0 "$pid" 2> /dev/null || break
      sleep 0.02
    done
    if [[ $STUB_SRUN_MODE == usr1 ]]; then
      echo "stub srun: sending SIGUSR1 to the job step" >&2
      kill -USR1 "$pid" 2> /dev/null
    else
      echo "stub srun: sending SIGUSR1 to the batch shell" >&2
      kill -USR1 "$PPID"
    fi
    while kill -0 "$pid" 2> /dev/null; do sleep 0.05; done   # polled, as jobs/common.sh does
    wait "$pid"
    exit $? ;;
  *) echo "stub srun: bad STUB_SRUN_MODE" >&2; exit 99 ;;
esac
EOF
cat > "$work/bin/scontrol" <<'EOF'
#!/usr/bin/env bash
# stub scontrol (tests/jobs/run_job_test.sh)
printf '%s\n' "$*" >> "$STUB_LOG/scontrol.args"
exit "${STUB_SCONTROL_RC:-0}"
EOF
chmod +x "$work/bin/srun" "$work/bin/scontrol"

# The allocation SLURM would give this job script.
sbatch_opt() { sed -n "s/^#SBATCH --$1=\(.*\)$/\1/p" "$job"; }
nodes=$(sbatch_opt nodes)
per_node=$(sbatch_opt ntasks-per-node)
cpus=$(sbatch_opt cpus-per-task)
name=$(sbatch_opt job-name)
[[ -n $nodes && -n $per_node && -n $cpus && -n $name ]] || fail "cannot read the #SBATCH lines of $job"
unset GLAM_ROOT GLAM_MESH GLAM_DEVICE GLAM_SRUN_FLAGS GLAM_CKPT_MINUTES GLAM_MAX_REQUEUES SLURM_RESTART_COUNT \
      OMP_NUM_THREADS OPENBLAS_NUM_THREADS SRUN_CPUS_PER_TASK GLAM_TEST_SITE
export SLURM_JOB_ID=4242 SLURM_JOBID=4242 SLURM_JOB_NAME=$name SLURM_SUBMIT_DIR=$src \
       SLURM_SUBMIT_HOST=localhost SLURM_CLUSTER_NAME=test SLURM_JOB_PARTITION=test \
       SLURM_NNODES=$nodes SLURM_JOB_NUM_NODES=$nodes SLURM_JOB_NODELIST=localhost \
       SLURM_NTASKS=$((nodes * per_node)) SLURM_NPROCS=$((nodes * per_node)) \
       SLURM_NTASKS_PER_NODE=$per_node SLURM_TASKS_PER_NODE="$per_node(x$nodes)" \
       SLURM_CPUS_PER_TASK=$cpus SLURM_GPUS_PER_TASK=1
export PATH="$work/bin:$PATH" STUB_LOG=$work/log STUB_MPIEXEC=$mpiexec
export GLAM_BIN=$glam RUN_DIR=$work/run STUB_METRICS=$work/run/metrics.jsonl
export GLAM_SITE=$work/site.sh   # not there unless a case writes it

# A small model on the tiny corpus: the overrides reach `glam train` through "$@".
tiny=(--data.corpus "$data/tiny.h5" --data.tokenizer "$data/tiny.model"
      --model.vocab_size 200 --model.d_model 32 --model.n_layers 2 --model.n_heads 2
      --model.d_head 16 --model.d_ff 64 --model.n_experts 4 --model.seq_len 16
      --model.group_size 32 --train.batch_rows 4 --train.log_every 1)

# run_job OUTFILE ARGS...: runs the job script the way slurmd does (bash, in the
# submit dir); sets $rc.
run_job() {
  local out=$1
  shift
  set +e
  (cd "$src" && bash "$job" "$@") > "$out" 2>&1
  rc=$?
  set -e
  sed 's/^/    | /' "$out"
}
expect_rc() { [[ $rc -eq $1 ]] || fail "the job script exited with $rc, expected $1"; }
expect_in() { grep -qE -- "$2" "$1" || fail "$1 does not match '$2'"; }
scontrol_calls() { if [[ -f $work/log/scontrol.args ]]; then wc -l < "$work/log/scontrol.args"; else echo 0; fi; }

case "$mode" in
  train)  # (c) the job's command line trains glam-tiny's mesh for 3 steps
    echo "export GLAM_TEST_SITE=loaded" > "$GLAM_SITE"
    run_job "$work/out1" "${tiny[@]}" --train.steps 3
    expect_rc 0
    [[ -f $RUN_DIR/weights.h5 ]] || fail "no $RUN_DIR/weights.h5"
    [[ -f $RUN_DIR/checkpoints/latest ]] || fail "no final checkpoint"
    [[ $(wc -l < "$RUN_DIR/metrics.jsonl") -eq 3 ]] || fail "metrics.jsonl does not hold 3 steps"
    expect_in "$work/out1" "glam job 4242 \(restart 0\): glam-tiny on $nodes nodes, $((nodes * per_node)) tasks, mesh 2x2"
    expect_in "$work/out1" "training finished"
    args=$(cat "$work/log/srun.args")
    [[ $args == "--kill-on-bad-exit=1 $glam train --config $src/input/glam-tiny.cfg --run-dir $RUN_DIR --mesh 2x2 --device auto --checkpoint.every_minutes 30 "* ]] \
      || fail "unexpected srun command line: $args"
    expect_in "$work/log/srun.env" "^OMP_NUM_THREADS=$cpus\$"
    expect_in "$work/log/srun.env" "^OPENBLAS_NUM_THREADS=$cpus\$"
    expect_in "$work/log/srun.env" "^SRUN_CPUS_PER_TASK=$cpus\$"
    expect_in "$work/log/srun.env" "^PWD=$src\$"
    expect_in "$work/log/srun.env" "^GLAM_TEST_SITE=loaded\$"
    [[ $(scontrol_calls) -eq 0 ]] || fail "scontrol was called after a finished run"
    note "a checkpoint cadence given on the command line replaces GLAM_CKPT_MINUTES"
    STUB_SRUN_MODE=exit3 run_job "$work/out2" --checkpoint.every_minutes=5
    [[ $(tail -n 1 "$work/log/srun.args") != *"--checkpoint.every_minutes 30"* ]] \
      || fail "--checkpoint.every_minutes given twice"
    ;;

  requeue)  # (d) exit 75 -> scontrol requeue <jobid>, exit 0
    STUB_SRUN_MODE=exit75 run_job "$work/out1" "${tiny[@]}"
    expect_rc 0
    [[ $(cat "$work/log/scontrol.args") == "requeue 4242" ]] \
      || fail "scontrol was called as '$(cat "$work/log/scontrol.args")', expected 'requeue 4242'"
    expect_in "$work/out1" "requeueing job 4242"
    note "after GLAM_MAX_REQUEUES restarts: no requeue, exit 75"
    STUB_SRUN_MODE=exit75 SLURM_RESTART_COUNT=3 GLAM_MAX_REQUEUES=3 run_job "$work/out2" "${tiny[@]}"
    expect_rc 75
    [[ $(scontrol_calls) -eq 1 ]] || fail "scontrol was called beyond GLAM_MAX_REQUEUES"
    note "scontrol requeue fails: exit 75, never 0"
    STUB_SRUN_MODE=exit75 STUB_SCONTROL_RC=1 run_job "$work/out3" "${tiny[@]}"
    expect_rc 75
    expect_in "$work/out3" "scontrol requeue 4242 failed"
    note "SIGTERM to the job script (scancel, preemption), then exit 75: no requeue, exit 75"
    STUB_SRUN_MODE=term75 run_job "$work/out4" "${tiny[@]}"
    expect_rc 75
    expect_in "$work/out4" "stopped by SIGTERM"
    [[ $(scontrol_calls) -eq 2 ]] || fail "scontrol requeue after SIGTERM"
    ;;

  failure)  # any other status is the job's status; bad set-ups stop before srun
    STUB_SRUN_MODE=exit3 run_job "$work/out1" "${tiny[@]}"
    expect_rc 3
    [[ $(scontrol_calls) -eq 0 ]] || fail "scontrol was called after a failure"
    expect_in "$work/out1" "glam train exited with status 3"
    note "tasks != mesh cells"
    rm -f "$work/log/srun.args"
    SLURM_NTASKS=3 run_job "$work/out2" "${tiny[@]}"
    expect_rc 2
    expect_in "$work/out2" "mesh 2x2 has 4 cells but the job has 3 tasks"
    note "no glam executable"
    GLAM_BIN=$work/no-such-glam run_job "$work/out3" "${tiny[@]}"
    expect_rc 2
    expect_in "$work/out3" "no glam executable at '$work/no-such-glam'"
    [[ ! -f $work/log/srun.args ]] || fail "srun ran despite a bad set-up"
    ;;

  preempt | preempt_batch)  # SIGUSR1 (to the step, or to the batch shell) -> checkpoint, exit 75, requeue; resume
    # One thread per rank (as sbatch -c 1 would give): this machine may have fewer cores
    # than ranks, and spinning OpenMP threads of oversubscribed ranks make a step 100x
    # slower. A step takes milliseconds then; the signal comes after step 1.
    export SLURM_CPUS_PER_TASK=1
    steps=300
    signal_mode=usr1
    [[ $mode == preempt_batch ]] && signal_mode=usr1_batch
    STUB_SRUN_MODE=$signal_mode run_job "$work/out1" "${tiny[@]}" --train.steps $steps
    expect_rc 0
    [[ $(cat "$work/log/scontrol.args") == "requeue 4242" ]] || fail "no 'scontrol requeue 4242'"
    [[ -f $RUN_DIR/checkpoints/latest ]] || fail "no checkpoint after the signal"
    [[ ! -f $RUN_DIR/weights.h5 ]] || fail "the run finished before the signal reached it"
    stopped=$(wc -l < "$RUN_DIR/metrics.jsonl")
    note "stopped after step $stopped of $steps; the requeued job (restart 1) resumes"
    SLURM_RESTART_COUNT=1 STUB_SRUN_MODE=run run_job "$work/out2" "${tiny[@]}" --train.steps $steps
    expect_rc 0
    expect_in "$work/out2" "\(restart 1\).*resuming from $RUN_DIR/checkpoints/step_"
    [[ -f $RUN_DIR/weights.h5 ]] || fail "no weights.h5 after the resumed run"
    [[ $(scontrol_calls) -eq 1 ]] || fail "the resumed run requeued again"
    seq_steps=$(sed -n 's/^{"step": \([0-9]*\),.*/\1/p' "$RUN_DIR/metrics.jsonl" | tr '\n' ' ')
    [[ $seq_steps == "$(seq -s ' ' 1 $steps) " ]] || fail "metrics.jsonl steps are '$seq_steps', expected 1..$steps once each"
    ;;

  env_mesh)  # GLAM_MESH, GLAM_SETTINGS and GLAM_DEVICE from the environment replace the script's defaults
    SLURM_NTASKS=2 GLAM_MESH=2x1 GLAM_DEVICE=cpu run_job "$work/out1" "${tiny[@]}" --train.steps 2
    expect_rc 0
    expect_in "$work/out1" "mesh 2x1"
    [[ $(cat "$work/log/srun.args") == *" --mesh 2x1 --device cpu "* ]] || fail "srun args: $(cat "$work/log/srun.args")"
    note "a bad GLAM_DEVICE stops before srun"
    GLAM_DEVICE=gpu run_job "$work/out2" "${tiny[@]}"
    expect_rc 2
    expect_in "$work/out2" "GLAM_DEVICE 'gpu' is not auto, cpu or cuda"
    note "GLAM_SETTINGS reaches glam train, less the option the command line gives too (glam refuses it twice)"
    rm -f "$work/log/srun.args"
    RUN_DIR=$work/run_settings SLURM_NTASKS=2 GLAM_MESH=2x1 GLAM_SETTINGS="--train.remat true --train.micro_rows 1" \
      run_job "$work/out3" "${tiny[@]}" --train.steps 2 --train.micro_rows 2
    expect_rc 0
    args=$(cat "$work/log/srun.args")
    [[ $args == *" --train.remat true "* && $args != *"--train.micro_rows 1"* && $args == *" --train.micro_rows 2"* ]] ||
      fail "srun args: $args"
    expect_in "$work/out3" "settings '--train.remat true'"
    ;;

  *) fail "unknown mode" ;;
esac
echo "PASS ($mode)"
