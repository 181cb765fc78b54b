#!/usr/bin/env bash
# Run-dir tests of `glam train` (issue 15): the lock, refused reruns, checked and
# atomic writes, preemption that always ends with a complete checkpoint.
# usage: rundir_test.sh CASE GLAM_BINARY SOURCE_DIR WORK_DIR DATA_DIR
#   CASE      concurrent | stale_lock | finished | not_writable | disk_full |
#             sigterm_wrapper | sigterm_mpirun | sigterm_ranks
#   DATA_DIR  holds tiny.h5 and tiny.model (fixture tiny_corpus of tests/data)
# Exit 77 (CTest SKIP) with a reason when the case cannot run here (no tmpfs mount).
set -euo pipefail
case_name=$1 glam=$2 src=$3 work=$4 data=$5
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
dir=$work/$case_name
umount "$dir/mnt" 2> /dev/null || true
rm -rf "$dir" && mkdir -p "$dir"
cd "$dir"

BASE=(--config "$src/input/glam-tiny.cfg" --data.corpus "$data/tiny.h5" --data.tokenizer "$data/tiny.model"
      --model.vocab_size 200 --model.n_heads 2 --model.n_experts 4 --model.seq_len 16 --model.group_size 32
      --train.batch_rows 4 --train.log_every 1 --train.val_every 0)
TINY=("${BASE[@]}" --model.d_model 32 --model.n_layers 2 --model.d_head 16 --model.d_ff 64)
MPIRUN=(mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)

fail() { echo "FAIL ($case_name): $*" >&2; exit 1; }
skip() { echo "SKIP ($case_name): $*"; exit 77; }
note() { echo "--- $*"; }
train() { "$glam" train "${TINY[@]}" "$@"; }
expect_rc() { [[ $1 -eq $2 ]] || fail "$3: exit status $1, expected $2"; }
expect_in() { grep -qE -- "$2" "$1" || fail "$1 does not match '$2': $(tail -n 5 "$1")"; }
no_abort() { ! grep -qE "MPI_ABORT|HDF5-DIAG" "$1" || fail "$1 shows an MPI_ABORT banner or an HDF5 stack"; }
lines() { if [[ -f $1 ]]; then wc -l < "$1"; else echo 0; fi; }
wait_lines() {  # wait_lines FILE N PID: until FILE has N lines (or PID ended)
  for _ in $(seq 600); do
    [[ $(lines "$1") -ge $2 ]] && return 0
    kill -0 "$3" 2> /dev/null || return 0
    sleep 0.05
  done
}
# Every line of metrics.jsonl is a JSON object; prints the steps in order.
metric_steps() {
  python3 -c '
import json, sys
steps = []
for n, line in enumerate(open(sys.argv[1]), 1):
    try:
        steps.append(json.loads(line)["step"])
    except Exception as e:
        sys.exit(f"{sys.argv[1]}:{n}: not a JSON object with a step: {e}: {line[:80]!r}")
print(" ".join(map(str, steps)))' "$1"
}
losses() { sed -E 's/"tokens_per_s": [^,]*, //; s/, "resumed_from": [0-9]+//' "$1/metrics.jsonl"; }
checkpoint_complete() {  # RUN_DIR [killed]: latest names an existing checkpoint; no .tmp left (unless killed)
  [[ -f $1/checkpoints/latest ]] || fail "no $1/checkpoints/latest"
  local name
  name=$(cat "$1/checkpoints/latest")
  [[ -f $1/checkpoints/$name ]] || fail "latest names $name, which does not exist"
  if [[ -z ${2:-} ]] && ls "$1/checkpoints" | grep -q '\.tmp$'; then fail "a .tmp file was left in $1/checkpoints"; fi
  h5ls "$1/checkpoints/$name" > /dev/null || fail "$name is not a readable HDF5 file"
  echo "$name" | sed -E 's/step_0*([0-9]+)\.h5/\1/'
}
mount_tmpfs() {  # mount_tmpfs DIR SIZE, or skip
  mkdir -p "$1"
  mount -t tmpfs -o "size=$2" tmpfs "$1" 2> "$dir/mount.err" ||
    skip "cannot mount a tmpfs ($(cat "$dir/mount.err")): needs root and CAP_SYS_ADMIN"
  trap 'umount "$dir/mnt" 2> /dev/null || true' EXIT
}

case $case_name in
concurrent)
  # a second run on the same run dir is refused (exit 2, the lock and its holder
  # named) and the first finishes untouched
  (exec "${MPIRUN[@]}" -np 2 "$glam" train "${TINY[@]}" --run-dir run --train.steps 100000 --train.seed 1 \
     > first.log 2>&1) &
  first=$!
  wait_lines run/metrics.jsonl 2 "$first"
  rc=0; "${MPIRUN[@]}" -np 1 "$glam" train "${TINY[@]}" --run-dir run --train.steps 7 --train.seed 2 \
          > second.log 2>&1 || rc=$?
  expect_rc $rc 2 "the second run"
  expect_in second.log "glam: error: run dir 'run' is in use: its lock file run/glam.lock is held by pid [0-9]+ on host $(hostname) \(still running\)"
  no_abort second.log
  note "the same command twice is refused too"
  rc=0; train --run-dir run --train.steps 100000 --train.seed 1 > third.log 2>&1 || rc=$?
  expect_rc $rc 2 "the same command again"
  kill -0 "$first" 2> /dev/null || fail "the first run ended early: $(tail -n 3 first.log)"
  kill -USR1 "$first"   # mpirun passes it on: the first run checkpoints and exits 75
  rc=0; wait "$first" || rc=$?
  expect_rc $rc 75 "the first run, stopped by SIGUSR1"
  step=$(checkpoint_complete run)
  [[ $(metric_steps run/metrics.jsonl) == "$(seq -s ' ' 1 "$step")" ]] || fail "metrics.jsonl is not steps 1..$step once each"
  grep -qx "steps = 100000" run/config.cfg || fail "config.cfg is not the first run's: $(grep steps run/config.cfg)"
  grep -qx "seed = 1" run/config.cfg || fail "config.cfg has the second run's seed"
  [[ ! -e run/glam.lock ]] || fail "the lock was not released at the end"
  ;;
stale_lock)
  note "a lock whose process is gone (this host) is taken over"
  mkdir run
  sh -c 'exit 0' & dead=$!
  wait "$dead"
  echo "pid $dead host $(hostname) start 1" > run/glam.lock
  train --run-dir run --train.steps 2 > taken.log 2>&1 || fail "a stale lock was not taken over: $(tail -n 3 taken.log)"
  expect_in taken.log "taking over the stale lock run/glam.lock of pid $dead on host $(hostname)"
  note "a lock under a live pid with another start time (a reused pid) is stale too"
  echo "pid $$ host $(hostname) start 1" > run/glam.lock
  train --run-dir run --train.steps 3 > reused.log 2>&1 || fail "a reused pid's lock was not taken over"
  note "a live holder on this host is refused"
  sleep 60 & live=$!
  echo "pid $live host $(hostname) start $(awk '{print $22}' "/proc/$live/stat")" > run/glam.lock
  rc=0; train --run-dir run --train.steps 4 > live.log 2>&1 || rc=$?
  kill "$live"
  expect_rc $rc 2 "a live holder's lock"
  expect_in live.log "run/glam.lock is held by pid $live on host $(hostname) \(still running\)"
  note "a lock from another host is refused: its process cannot be checked"
  echo "pid 12345 host other-node-17 start 99" > run/glam.lock
  rc=0; train --run-dir run --train.steps 4 > other.log 2>&1 || rc=$?
  expect_rc $rc 2 "another host's lock"
  expect_in other.log "held by pid 12345 on host other-node-17 \(another host: glam cannot tell whether it still runs\).*delete the lock file"
  rm run/glam.lock
  note "kill -9 in mid-run leaves a stale lock; the next run takes it over and resumes"
  (exec "$glam" train "${TINY[@]}" --run-dir killed --train.steps 100000 --checkpoint.every_steps 5 > killed.log 2>&1) &
  pid=$!
  wait_lines killed/metrics.jsonl 12 "$pid"
  kill -KILL "$pid"; wait "$pid" || true
  [[ -f killed/glam.lock ]] || fail "no lock left by the killed run"
  step=$(checkpoint_complete killed killed)   # a kill while writing leaves a .tmp, pruned later
  train --run-dir killed --train.steps $((step + 2)) > resumed.log 2>&1 || fail "no resume after kill -9"
  expect_in resumed.log "taking over the stale lock"
  expect_in resumed.log "resumed from .* at step $step"
  ;;
finished)
  train --run-dir run --train.steps 3 > first.log
  cfg_before=$(md5sum < run/config.cfg)
  note "a finished run dir is refused without --overwrite; config.cfg is left as it was"
  rc=0; train --run-dir run --train.steps 3 --train.lr 0.5 > again.log 2>&1 || rc=$?
  expect_rc $rc 2 "rerun of a finished run"
  expect_in again.log "run dir 'run' holds a finished run: its last checkpoint run/checkpoints/step_00000003.h5 is at step 3 and train.steps is 3; pass --overwrite to start afresh, or raise --train.steps above 3"
  [[ $(md5sum < run/config.cfg) == "$cfg_before" ]] || fail "a refused run rewrote config.cfg"
  rc=0; train --run-dir run --train.steps 2 > lower.log 2>&1 || rc=$?
  expect_rc $rc 2 "train.steps below the checkpoint"
  note "tokenizer.model is not rewritten when it is the same (its inode stays)"
  inode=$(stat -c %i run/tokenizer.model)
  note "raising train.steps resumes"
  train --run-dir run --train.steps 5 > more.log || fail "raising train.steps did not resume"
  expect_in more.log "resumed from run/checkpoints/step_00000003.h5 at step 3"
  [[ $(stat -c %i run/tokenizer.model) == "$inode" ]] || fail "tokenizer.model was copied again"
  grep -qx "steps = 5" run/config.cfg || fail "config.cfg does not describe the resumed run"
  [[ $(metric_steps run/metrics.jsonl) == "1 2 3 4 5" ]] || fail "metrics.jsonl after resuming"
  note "--overwrite starts afresh"
  train --run-dir run --train.steps 2 --overwrite > over.log || fail "--overwrite failed"
  [[ $(metric_steps run/metrics.jsonl) == "1 2" ]] || fail "metrics.jsonl after --overwrite"
  [[ $(ls run/checkpoints | grep -c '^step_') == 1 ]] || fail "old checkpoints survived --overwrite"
  ls run/*.tmp 2> /dev/null && fail "temporary files left in the run dir"
  ;;
not_writable)
  note "a run dir that is a file"
  echo text > afile
  rc=0; "${MPIRUN[@]}" -np 2 "$glam" train "${TINY[@]}" --run-dir afile --train.steps 2 > file.log 2>&1 || rc=$?
  expect_rc $rc 2 "a run dir that is a file"
  expect_in file.log "glam: error: run dir 'afile' exists and is not a directory"
  no_abort file.log
  note "a run dir below a file"
  rc=0; train --run-dir afile/run --train.steps 2 > below.log 2>&1 || rc=$?
  expect_rc $rc 2 "a run dir below a file"
  expect_in below.log "cannot create run dir 'afile/run': Not a directory"
  note "a run dir on a read-only file system"
  mount_tmpfs mnt 4m
  train --run-dir mnt/run --train.steps 2 > ok.log || fail "training on the tmpfs failed"
  mount -o remount,ro mnt
  rc=0; "${MPIRUN[@]}" -np 2 "$glam" train "${TINY[@]}" --run-dir mnt/run --train.steps 4 > ro.log 2>&1 || rc=$?
  expect_rc $rc 2 "a read-only run dir"
  expect_in ro.log "glam: error: run dir 'mnt/run' is not writable: Read-only file system"
  no_abort ro.log
  ;;
disk_full)
  mount_tmpfs mnt 8m   # room for checkpoints: glam checks the free space before writing one
  train --run-dir mnt/run --train.steps 2 > first.log || fail "training on the tmpfs failed"
  note "the disk fills up while metrics.jsonl grows: exit 3 naming the file and ENOSPC"
  avail=$(df --output=avail -B1 mnt | tail -n 1)
  fallocate -l $((avail - 24576)) mnt/filler || dd if=/dev/zero of=mnt/filler bs=4096 count=$(((avail - 24576) / 4096)) status=none
  rc=0; train --run-dir mnt/run --train.steps 2000 > full.log 2>&1 || rc=$?
  expect_rc $rc 3 "a full disk"
  expect_in full.log "glam: error: cannot write 'mnt/run/metrics.jsonl': No space left on device; stopping after step"
  no_abort full.log
  metric_steps mnt/run/metrics.jsonl > /dev/null || fail "metrics.jsonl holds a partial line"
  [[ ! -e mnt/run/glam.lock ]] || fail "the lock was not released after the error"
  [[ $(cat mnt/run/checkpoints/latest) == step_00000002.h5 ]] || fail "latest changed"
  note "no space for config.cfg at start: exit 2 naming it"
  fallocate -l $(($(df --output=avail -B1 mnt | tail -n 1))) mnt/filler2 2> /dev/null ||
    dd if=/dev/zero of=mnt/filler2 bs=4096 status=none 2> /dev/null || true
  rc=0; train --run-dir mnt/run --train.steps 2000 --train.lr 0.02 > start.log 2>&1 || rc=$?
  expect_rc $rc 2 "no space at start"
  expect_in start.log "glam: error: cannot (write|create) (the lock file )?'mnt/run/(glam.lock|config.cfg.tmp|metrics.jsonl.tmp)': No space left on device"
  grep -q "steps = 2000" mnt/run/config.cfg || true
  [[ -s mnt/run/config.cfg ]] || fail "config.cfg was damaged"
  note "space again: the run resumes from its checkpoint"
  rm mnt/filler mnt/filler2
  train --run-dir mnt/run --train.steps 4 > again.log || fail "no resume after freeing space"
  expect_in again.log "resumed from mnt/run/checkpoints/step_00000002.h5 at step 2"
  [[ $(metric_steps mnt/run/metrics.jsonl) == "1 2 3 4" ]] || fail "metrics.jsonl after resuming"
  ;;
sigterm_wrapper | sigterm_mpirun | sigterm_ranks)
  # A loaded 2x2: 4 ranks oversubscribed on this machine's cores, and 2 busy loops.
  for _ in 1 2; do (while :; do :; done) & hogs+=($!); done
  trap 'kill "${hogs[@]}" 2> /dev/null || true' EXIT
  TINY=("${BASE[@]}" --model.d_model 64 --model.d_head 32 --model.d_ff 256 --model.n_layers 4)
  case $case_name in
    sigterm_wrapper) launch=("$src/jobs/mpirun.sh" "${MPIRUN[@]:1}") ;;
    sigterm_mpirun) launch=("${MPIRUN[@]}" --mca odls_base_sigkill_timeout 10) ;;
    sigterm_ranks) launch=("${MPIRUN[@]}") ;;
  esac
  env MPIRUN="${MPIRUN[0]}" "${launch[@]}" -np 4 "$glam" train "${TINY[@]}" --mesh 2x2 --run-dir stopped \
    --train.steps 100000 > stopped.log 2>&1 &
  pid=$!
  wait_lines stopped/metrics.jsonl 3 "$pid"
  t0=$(date +%s.%N)
  if [[ $case_name == sigterm_ranks ]]; then
    ranks=$(pgrep -P "$pid" -d ' ' glam || true)   # mpirun's children: the ranks
    [[ -n $ranks ]] || fail "no rank processes under mpirun $pid"
    # shellcheck disable=SC2086
    kill -TERM $ranks
  else
    kill -TERM "$pid"
  fi
  rc=0; wait "$pid" || rc=$?
  took=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$(date +%s.%N)" "$t0")
  echo "SIGTERM ($case_name): exit status $rc after $took s"
  grep -E "stopped by a signal|checkpoint " stopped.log | tail -n 2 || true
  step=$(checkpoint_complete stopped)
  [[ $case_name == sigterm_mpirun ]] || expect_rc $rc 75 "after SIGTERM"
  expect_in stopped.log "# stopped by a signal after step $step; checkpoint written"
  [[ $(metric_steps stopped/metrics.jsonl) == "$(seq -s ' ' 1 "$step")" ]] || fail "metrics.jsonl is not steps 1..$step"
  [[ ! -e stopped/glam.lock ]] || fail "the lock was not released"
  kill "${hogs[@]}" 2> /dev/null || true
  note "resuming continues exactly as a run that was never stopped (step $step + 2)"
  "${MPIRUN[@]}" -np 4 "$glam" train "${TINY[@]}" --mesh 2x2 --run-dir stopped \
    --train.steps $((step + 2)) > resume.log
  expect_in resume.log "resumed from .* at step $step"
  if [[ $step -le 40 ]]; then
    "${MPIRUN[@]}" -np 4 "$glam" train "${TINY[@]}" --mesh 2x2 --run-dir straight \
      --train.steps $((step + 2)) > straight.log
    diff <(losses straight) <(losses stopped) > /dev/null || fail "losses differ after the signal"
  fi
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
