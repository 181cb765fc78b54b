#!/usr/bin/env bash
# End-to-end checkpoint tests of `glam train` under mpirun, on the tiny corpus.
# usage: checkpoint_test.sh CASE GLAM_BINARY WORK_DIR CORPUS TOKENIZER CONFIG
# CASE: resume_exact | signal | mesh_restore | kill_while_writing | bad_files
set -euo pipefail
case_name=$1 glam=$2 work=$3 corpus=$4 tokenizer=$5 config=$6
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
dir=$work/$case_name
rm -rf "$dir" && mkdir -p "$dir"

# A model every mesh here fits: 6 heads (model 1, 2, 3), 4 experts (data 1, 2, 4),
# vocabulary 210 and d_ff 24 divisible by 2 and 3; one 16-token group per row.
D_MODEL=24 D_HEAD=4
model_args() {
  MODEL=(--config "$config" --data.corpus "$corpus" --data.tokenizer "$tokenizer"
       --model.vocab_size 210 --model.d_model "$D_MODEL" --model.n_layers 3 --model.n_heads 6 --model.d_head "$D_HEAD"
       --model.d_ff 24 --model.n_experts 4 --model.seq_len 16 --model.group_size 16
       --model.capacity_factor 1.0 --train.batch_rows 4 --train.warmup_steps 2 --train.log_every 1
       --train.factored_min_dim 8)
}

fail() { echo "FAIL: $*" >&2; exit 1; }

train() {  # train MESH RUN_DIR [args...]: mpirun replaces the calling (sub)shell
  local mesh=$1 run=$2; shift 2
  local np=$(( ${mesh%x*} * ${mesh#*x} ))
  model_args
  exec_mpirun --allow-run-as-root --oversubscribe -np "$np" -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$glam" train "${MODEL[@]}" --mesh "$mesh" --run-dir "$run" "$@"
}
exec_mpirun() { mpirun "$@"; }
# After an aborted job mpirun may return before every rank has died; the run dir's
# lock stays held until then (src/io/run_dir.cpp). Wait (at most 30 s) for it.
wait_unlocked() {  # wait_unlocked RUN_DIR
  local lock=$1/glam.lock i
  for i in $(seq 300); do
    [ -e "$lock" ] || return 0
    flock -n "$lock" true 2>/dev/null && return 0
    sleep 0.1
  done
  fail "the lock $lock is still held 30 s after the job ended"
}

# The loss terms of each step in metrics.jsonl, without timings or resume marks.
losses() { sed -E 's/"tokens_per_s": [^,]*, //; s/, "resumed_from": [0-9]+//' "$1/metrics.jsonl"; }
loss_at() { grep "\"step\": $2," "$1/metrics.jsonl" | sed -E 's/.*"loss": ([^,]*),.*/\1/'; }

same_params() {  # exact equality of every /params dataset of two checkpoints
  h5diff "$1" "$2" /params /params > "$dir/h5diff.txt" || fail "parameters differ: $(head -5 "$dir/h5diff.txt")"
}

close_enough() {  # |a - b| <= 1e-5 * |b|
  python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-5 * abs(b))" "$1" "$2"
}

case $case_name in
resume_exact)
  # interrupted at step 3 and resumed equals uninterrupted, bit for bit (mesh 2x2)
  train 2x2 "$dir/full" --train.steps 6 --checkpoint.every_steps 2 > "$dir/full.log"
  train 2x2 "$dir/part" --train.steps 3 > "$dir/part.log"
  train 2x2 "$dir/part" --train.steps 6 > "$dir/resume.log"
  grep -q "resumed from .*step_00000003.h5 at step 3" "$dir/resume.log" || fail "did not resume at step 3"
  # the first record after the resume says so (tools/plot marks it), and only that one
  [[ $(grep -c '"resumed_from": 3}' "$dir/part/metrics.jsonl") == 1 && $(grep -c resumed_from "$dir/part/metrics.jsonl") == 1 ]] \
    || fail "the step-4 record does not carry resumed_from 3"
  diff <(losses "$dir/full") <(losses "$dir/part") || fail "losses differ after resuming"
  same_params "$dir/full/checkpoints/step_00000006.h5" "$dir/part/checkpoints/step_00000006.h5"
  h5diff "$dir/full/checkpoints/step_00000006.h5" "$dir/part/checkpoints/step_00000006.h5" /optimizer /optimizer \
    || fail "optimizer state differs after resuming"
  [ "$(ls "$dir/full/checkpoints" | grep -c '^step_')" = 3 ] || fail "expected 3 checkpoints (every 2 steps, keep 3)"
  ;;
signal)
  # SIGUSR1 to mpirun: the step finishes, a checkpoint is written, exit 75; resuming
  # continues exactly as a run that was never stopped
  # exec: $! is mpirun itself, which forwards SIGUSR1 to the ranks
  (exec_mpirun() { exec mpirun "$@"; }; train 2x1 "$dir/stopped" --train.steps 100000) > "$dir/stopped.log" 2>&1 &
  pid=$!
  for _ in $(seq 200); do
    [ -f "$dir/stopped/metrics.jsonl" ] && [ "$(wc -l < "$dir/stopped/metrics.jsonl")" -ge 3 ] && break
    sleep 0.1
  done
  kill -USR1 "$pid"
  rc=0; wait "$pid" || rc=$?
  [ "$rc" = 75 ] || fail "exit status $rc after SIGUSR1, expected 75: $(tail -5 "$dir/stopped.log")"
  step=$(sed -E 's/step_0*([0-9]+)\.h5/\1/' "$dir/stopped/checkpoints/latest")
  [ "$step" -ge 3 ] || fail "checkpoint at step $step"
  train 2x1 "$dir/stopped" --train.steps $((step + 2)) > "$dir/resume.log"
  train 2x1 "$dir/straight" --train.steps $((step + 2)) > "$dir/straight.log"
  diff <(losses "$dir/straight") <(losses "$dir/stopped") || fail "losses differ after the signal"
  ;;
mesh_restore)
  # written on 2x2 at step 3, restored on other meshes: the loss at step 4 is the
  # original run's (up to fp32 reduction order)
  train 2x2 "$dir/orig" --train.steps 3 > "$dir/orig.log"
  cp -r "$dir/orig" "$dir/orig4"
  train 2x2 "$dir/orig4" --train.steps 4 > "$dir/orig4.log"
  want=$(loss_at "$dir/orig4" 4)
  for mesh in 1x1 4x1 1x2 2x3; do
    mkdir -p "$dir/$mesh"
    cp -r "$dir/orig/checkpoints" "$dir/$mesh/"
    train "$mesh" "$dir/$mesh" --train.steps 4 > "$dir/$mesh.log"
    grep -q "resumed from .* at step 3" "$dir/$mesh.log" || fail "$mesh did not resume"
    got=$(loss_at "$dir/$mesh" 4)
    close_enough "$got" "$want" || fail "mesh $mesh: loss at step 4 is $got, the 2x2 run had $want"
    echo "mesh $mesh: loss at step 4 $got (2x2: $want)"
  done
  ;;
kill_while_writing)
  # a rank killed at several points while writing the step-4 checkpoint: the next
  # start loads step 2 and ends exactly where an uninterrupted run ends
  train 2x1 "$dir/straight" --train.steps 6 --checkpoint.every_steps 2 > "$dir/straight.log"
  n=$(h5ls -r "$dir/straight/checkpoints/step_00000002.h5" | grep -c Dataset)
  for point in "0:0" "1:$((n / 2))" "0:$((n - 1))" "1:$n" "0:$((n + 1))"; do
    run=$dir/killed_${point/:/_}
    rank=${point%%:*} index=${point#*:}
    rc=0
    GLAM_DEBUG_KILL_AT="$rank:4:checkpoint:$index" train 2x1 "$run" --train.steps 6 --checkpoint.every_steps 2 \
      > "$run.log" 2>&1 || rc=$?
    [ "$rc" != 0 ] || fail "kill point $point: the job did not fail"
    # before the collective close the step-4 file is incomplete and latest must stay at
    # step 2; after it the file is complete and latest may already name it
    latest=$(cat "$run/checkpoints/latest")
    if [ "$index" -lt "$n" ]; then want=step_00000002.h5; else want=$latest; fi
    [ "$latest" = "$want" ] || fail "kill point $point: latest is $latest"
    wait_unlocked "$run"
    train 2x1 "$run" --train.steps 6 --checkpoint.every_steps 2 > "$run.resume.log"
    grep -q "resumed from .*$want at step" "$run.resume.log" || fail "kill point $point: did not resume from $want"
    same_params "$dir/straight/checkpoints/step_00000006.h5" "$run/checkpoints/step_00000006.h5"
    if ls "$run/checkpoints" | grep -q '\.tmp$'; then fail "kill point $point: a .tmp file was left behind"; fi
    echo "kill at rank $rank before dataset $index of $n: resumed from $want, final parameters equal"
  done
  ;;
bad_files)
  train 1x1 "$dir/good" --train.steps 2 > "$dir/good.log"
  ckpt=$dir/good/checkpoints/step_00000002.h5
  expect_error() {  # expect_error NAME REGEX: resuming a copy of the run with the damaged checkpoint
    local name=$1 regex=$2; shift 2
    rc=0
    train 1x1 "$dir/$name" --train.steps 3 "$@" > "$dir/$name.log" 2> "$dir/$name.err" || rc=$?
    [ "$rc" = 2 ] || fail "$name: exit status $rc, expected 2"
    grep -Eq "$regex" "$dir/$name.err" || fail "$name: message does not match '$regex': $(cat "$dir/$name.err")"
    echo "$name: $(grep 'glam: error' "$dir/$name.err")"
  }
  copy_run() { mkdir -p "$dir/$1/checkpoints"; cp "$ckpt" "$dir/$1/checkpoints/"; echo step_00000002.h5 > "$dir/$1/checkpoints/latest"; }
  # bytes flipped inside the raw data of one dataset
  copy_run corrupt
  offset=$(h5dump -p -H -d /params/embedding "$ckpt" | sed -nE 's/.*OFFSET ([0-9]+).*/\1/p' | head -1)
  [ -n "$offset" ] || fail "no offset for /params/embedding"
  printf '\x7f\x7f\x7f\x7f' | dd of="$dir/corrupt/checkpoints/step_00000002.h5" bs=1 seek=$((offset + 64)) conv=notrunc status=none
  expect_error corrupt "checkpoint '.*step_00000002.h5': dataset /params/embedding is corrupt \(checksum mismatch\)"
  # a truncated file
  copy_run truncated
  truncate -s $(( $(stat -c %s "$ckpt") / 2 )) "$dir/truncated/checkpoints/step_00000002.h5"
  expect_error truncated "checkpoint '.*step_00000002.h5' (is not a readable HDF5 file|: dataset .* cannot be read)"
  # a config with other shapes than the checkpoint
  copy_run other_shape
  D_MODEL=48 D_HEAD=8
  expect_error other_shape "dataset /params/embedding has shape \[210x24\] but the config implies \[210x48\]"
  D_MODEL=24 D_HEAD=4
  # a latest marker naming a missing file
  mkdir -p "$dir/dangling/checkpoints"; echo step_00000009.h5 > "$dir/dangling/checkpoints/latest"
  expect_error dangling "latest' names 'step_00000009.h5', which is not a checkpoint file"
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
echo "PASS: $case_name"
