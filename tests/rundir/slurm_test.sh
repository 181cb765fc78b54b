#!/usr/bin/env bash
# jobs/glam-tiny.sbatch under a real SLURM (Debian's slurm-wlm, scripts/deps.sh): a
# one-node slurmctld + slurmd on localhost from a temporary config (auth/none, own
# ports, state and logs under WORK_DIR), a 2-rank CPU job (GLAM_MESH=2x1, no GPUs),
# `scancel --signal=USR1 --batch` (what --signal=B:USR1@N sends) once it has trained a
# few steps: jobs/common.sh forwards it to the step, glam checkpoints and exits 75, the
# job requeues itself, the requeued run resumes and ends with every step once and the
# losses of a run that was never stopped.
# usage: slurm_test.sh GLAM_BINARY SOURCE_DIR WORK_DIR DATA_DIR
# Exit 77 (CTest SKIP) with the reason when SLURM is missing or its daemons do not start.
set -euo pipefail
glam=$1 src=$2 work=$3 data=$4
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

fail() { echo "FAIL (slurm): $*" >&2; show_logs; exit 1; }
skip() { echo "SKIP (slurm): $*"; exit 77; }
note() { echo "--- $*"; }
show_logs() {
  for f in "$work"/log/*.log "$work"/job-*.out; do
    [[ -f $f ]] && { echo "=== $f"; tail -n 30 "$f"; }
  done
}

for tool in slurmctld slurmd sbatch scancel scontrol sinfo; do
  command -v "$tool" > /dev/null || skip "no $tool: install slurm-wlm (scripts/deps.sh)"
done
[[ $(id -u) -eq 0 ]] || skip "slurmd must run as root (it starts jobs as their users)"

rm -rf "$work"
mkdir -p "$work/state" "$work/spool" "$work/log"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
plugins=$(dirname "$(find /usr/lib -name auth_none.so -path '*slurm*' 2> /dev/null | head -n 1)")
[[ -f $plugins/auth_none.so ]] || skip "SLURM has no auth/none plugin here"
mpi=none
[[ -f $plugins/mpi_pmix.so ]] && mpi=pmix   # Debian's Open MPI starts under srun through PMIx
node=$(hostname -s)
export SLURM_CONF=$work/slurm.conf
cat > "$SLURM_CONF" <<EOF
ClusterName=glamtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=$mpi
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
NodeName=$node NodeAddr=127.0.0.1 CPUs=4 RealMemory=2000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF

pids=()
cleanup() {
  scancel --quiet --full "${job:-0}" 2> /dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
}
trap cleanup EXIT
slurmctld -D -i -f "$SLURM_CONF" > "$work/log/slurmctld.out" 2>&1 &
pids+=($!)
slurmd -D -f "$SLURM_CONF" -N "$node" > "$work/log/slurmd.out" 2>&1 &
pids+=($!)
state=""
for _ in $(seq 100); do
  state=$(sinfo -h -n "$node" -o %T 2> /dev/null || true)
  [[ $state == idle* ]] && break
  for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null || skip "a SLURM daemon exited at start: $(tail -n 3 "$work"/log/*.out "$work"/log/*.log 2> /dev/null)"; done
  sleep 0.2
done
[[ $state == idle* ]] || skip "the node did not come up within 20 s (state '$state'): $(tail -n 3 "$work/log/slurmd.log")"
note "slurmctld and slurmd up ($(sinfo --version), MpiDefault=$mpi)"

job_state() { scontrol show job "$job" 2> /dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
restarts() { scontrol show job "$job" 2> /dev/null | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p'; }
run=$work/run
steps=600   # a few seconds unloaded; the signal comes after step 3
tiny=(--data.corpus "$data/tiny.h5" --data.tokenizer "$data/tiny.model"
      --model.vocab_size 200 --model.d_model 64 --model.n_layers 4 --model.n_heads 2 --model.d_head 32
      --model.d_ff 256 --model.n_experts 4 --model.seq_len 16 --model.group_size 32 --train.batch_rows 4
      --train.log_every 1 --train.val_every 0 --train.steps $steps)
job=$(cd "$src" && GLAM_MESH=2x1 GLAM_DEVICE=cpu GLAM_BIN=$glam RUN_DIR=$run GLAM_CKPT_MINUTES=0 \
      sbatch --parsable --ntasks-per-node=2 --cpus-per-task=1 --time=10 --output="$work/job-%j.out" \
      jobs/glam-tiny.sbatch "${tiny[@]}") || fail "sbatch failed"
note "submitted job $job"

for _ in $(seq 600); do
  [[ -f $run/metrics.jsonl && $(wc -l < "$run/metrics.jsonl") -ge 3 ]] && break
  [[ $(job_state) =~ ^(PENDING|RUNNING|CONFIGURING)$ ]] || fail "job $job is $(job_state) before its third step"
  sleep 0.1
done
[[ -f $run/metrics.jsonl ]] || fail "no metrics.jsonl after 60 s"
note "scancel --signal=USR1 --batch $job (to the batch shell only, as --signal=B:USR1@N)"
scancel --signal=USR1 --batch "$job" || fail "scancel failed"

released=0
for _ in $(seq 1500); do
  st=$(job_state)
  if [[ $st == PENDING && $(restarts) -ge 1 && $released -eq 0 &&
        $(sinfo -h -n "$node" -o %T) == idle* ]]; then
    # slurmctld holds a requeued batch job back (Reason=BeginTime, about 2 minutes) so that
    # its node can be cleaned up; once the node is idle again it may start at once (started
    # earlier, slurmd may still be ending the old batch step: "Job already killed")
    scontrol show job "$job" | grep -oE "Reason=[A-Za-z]+" || true
    sleep 2
    scontrol update JobId="$job" StartTime=now || fail "scontrol update StartTime=now failed"
    released=1
  fi
  [[ $st == COMPLETED && $(restarts) -ge 1 ]] && break
  [[ $st =~ ^(FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE)$ ]] && fail "job $job ended $st"
  [[ $st == COMPLETED ]] && fail "job $job completed without a requeue (the signal came too late?)"
  sleep 0.1
done
[[ $(job_state) == COMPLETED ]] || fail "job $job is $(job_state) after 150 s"
log=$work/job-$job.out
grep -q "SIGUSR1; passing it to glam" "$log" || fail "the batch shell did not forward SIGUSR1"
grep -q "checkpoint written; requeueing job $job" "$log" || fail "no requeue in the job log"
grep -qE "\(restart 1\).*resuming from $run/checkpoints/step_" "$log" || fail "the requeued run did not resume"
grep -q "training finished" "$log" || fail "the requeued run did not finish"
stopped=$(grep -m 1 -oE "stopped by a signal after step [0-9]+" "$log" | grep -oE "[0-9]+$")
note "stopped after step $stopped, requeued (restarts $(restarts)), resumed and finished"
[[ -f $run/weights.h5 ]] || fail "no weights.h5"
seq_steps=$(sed -n 's/^{"step": \([0-9]*\),.*/\1/p' "$run/metrics.jsonl" | tr '\n' ' ')
[[ $seq_steps == "$(seq -s ' ' 1 $steps) " ]] || fail "metrics.jsonl steps are not 1..$steps once each"

note "the same run without SLURM and without a stop: the same losses"
mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
  "$glam" train --config "$src/input/glam-tiny.cfg" "${tiny[@]}" --mesh 2x1 --run-dir "$work/straight" \
  > "$work/straight.log" 2>&1 || fail "the straight run failed"
losses() { sed -E 's/"tokens_per_s": [^,]*, //; s/, "resumed_from": [0-9]+//' "$1/metrics.jsonl"; }
diff <(losses "$work/straight") <(losses "$run") > "$work/losses.diff" || fail "losses differ: $(head -n 4 "$work/losses.diff")"
echo "PASS (slurm)"
