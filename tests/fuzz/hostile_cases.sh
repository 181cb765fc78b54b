#!/usr/bin/env bash
# The hostile files of issue 15, one command each (fuzz_hostile_<case>):
#   hostile_cases.sh CASE GLAM TOKENIZE CKPT FUZZ WORK
# WORK/seeds is the fuzz_seeds fixture. Each case copies what it damages into
# WORK/hostile/CASE and expects exit 2 with a message naming the file (and the
# field), within a time limit, and no HDF5 error stack.
set -euo pipefail
case=$1 glam=$2 tokenize=$3 ckpt=$4 fuzz=$5 work=$6
s=$work/seeds d=$work/hostile/$case
rm -rf "$d" && mkdir -p "$d"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMPI_MCA_ess_singleton_isolated=1
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect2 PATTERN LIMIT_S CMD...: exit 2 within LIMIT_S seconds, stderr matching PATTERN.
expect2() {
  local pattern=$1 limit=$2; shift 2
  local rc=0 start=$SECONDS
  timeout -s KILL "$limit" "$@" > "$d/out.txt" 2> "$d/err.txt" || rc=$?
  echo "+ $* -> exit $rc in $((SECONDS - start)) s: $(head -c 300 "$d/err.txt")"
  [ "$rc" = 2 ] || fail "expected exit 2, got $rc: $(tail -3 "$d/err.txt")"
  grep -qE -- "$pattern" "$d/err.txt" || fail "stderr does not match '$pattern'"
  if grep -q "HDF5-DIAG" "$d/err.txt"; then fail "HDF5 printed its error stack"; fi
}

train=("$glam" train --config "$s/fuzz.cfg" --data.tokenizer "$s/spm.model")

case $case in
shard_2p40_ids)  # a small shard whose /tokens claims 2^40 ids
  cp "$s/corpus/corpus.h5" "$d/big.h5"
  "$fuzz" edit "$d/big.h5" declare tokens 1099511627776
  [ "$(stat -c %s "$d/big.h5")" -lt 65536 ] || fail "the hostile shard is not small"
  expect2 "big\.h5.*/tokens declares 1099511627776 elements" 20 "$tokenize" info "$d/big.h5"
  expect2 "big\.h5.*/tokens declares 1099511627776 elements" 20 "$tokenize" mixture "$d/big.h5"
  expect2 "big\.h5.*/tokens declares" 30 "${train[@]}" --data.corpus "$d/big.h5" --run-dir "$d/run"
  ;;
ckpt_vocab_2p40)  # a checkpoint whose stored config says vocab_size 2^40 (or the largest valid one)
  for vocab in 1099511627776 4194304; do
    cp "$s/run/checkpoints/step_00000004.h5" "$d/c.h5"
    "$fuzz" edit "$d/c.h5" config vocab_size $vocab
    for cmd in "verify $d/c.h5" "export $d/c.h5 --output $d/w.h5" "reshard $d/c.h5 --mesh 2x1 --output-dir $d/r"; do
      # shellcheck disable=SC2086
      expect2 "c\.h5.*(config attribute implies .*)?vocab_size.*$vocab" 20 "$ckpt" $cmd
    done
  done
  ;;
ckpt_step)  # step 2^62 and -1: verify fails them, resume refuses them at once
  for step in 4611686018427387904 -1; do
    rm -rf "$d/run" && cp -r "$s/run" "$d/run"
    "$fuzz" edit "$d/run/checkpoints/step_00000004.h5" int step "$step"
    expect2 "step_00000004\.h5' failed verification" 20 "$ckpt" verify "$d/run/checkpoints/step_00000004.h5"
    grep -q "STATE: step $step is outside \[0, train.steps = 4\]" "$d/out.txt" || fail "verify does not name the step"
    expect2 "step_00000004\.h5': step $step is outside" 30 \
      "${train[@]}" --data.corpus "$s/corpus/corpus.h5" --run-dir "$d/run" --train.steps 8
  done
  ;;
ckpt_data_next_row)  # a data_next_row that does not follow from step and batch_rows
  cp "$s/run/checkpoints/step_00000004.h5" "$d/c.h5"
  "$fuzz" edit "$d/c.h5" int data_next_row 1099511627776
  expect2 "c\.h5' failed verification" 20 "$ckpt" verify "$d/c.h5"
  grep -q "STATE: data_next_row 1099511627776 is not step 4" "$d/out.txt" || fail "verify does not name data_next_row"
  ;;
reshard_huge_mesh)  # --mesh 100000x1 refused at once
  expect2 "--mesh 100000x1 has 100000 ranks; glam-ckpt reshard writes at most 4096" 10 \
    "$ckpt" reshard "$s/run/checkpoints/step_00000004.h5" --mesh 100000x1 --output-dir "$d/r"
  expect2 "--mesh must be DxM" 10 "$ckpt" reshard "$s/run/checkpoints/step_00000004.h5" --mesh 4294967297x1 \
    --output-dir "$d/r"
  ;;
gzip_bomb)  # 200 MiB of one line in a small gzip file
  head -c 209715200 /dev/zero | tr '\0' a | gzip -1 > "$d/bomb.txt.gz"
  [ "$(stat -c %s "$d/bomb.txt.gz")" -lt 2000000 ] || fail "the bomb is not small"
  expect2 "bomb\.txt\.gz' has a line longer than 67108864 bytes after decompression" 60 \
    "$tokenize" encode --tokenizer "$s/spm.model" --input "$d/bomb.txt.gz" --output "$d/out.h5" --source bomb
  GLAM_MAX_INPUT_BYTES=1000000 expect2 "bomb\.txt\.gz' decompresses to more than 1000000 bytes" 60 \
    "$tokenize" encode --tokenizer "$s/spm.model" --input "$d/bomb.txt.gz" --output "$d/out.h5" --source bomb
  ;;
tokenizer_dir)  # --tokenizer DIR
  expect2 "tokenizer model '$d' is not a regular file" 20 \
    "$tokenize" encode --tokenizer "$d" --input "$s/text.txt" --output "$d/out.h5" --source s
  ;;
weights_bit)  # one flipped mantissa bit in weights.h5
  cp -r "$s/run" "$d/run"
  "$ckpt" verify "$d/run/weights.h5" > "$d/ok.txt" || fail "the seed weights do not verify"
  "$fuzz" edit "$d/run/weights.h5" flip /params/embedding
  expect2 "weights file '.*run/weights\.h5' failed verification" 20 "$ckpt" verify "$d/run/weights.h5"
  grep -q "CORRUPT: /params/embedding (checksum mismatch)" "$d/out.txt" || fail "verify does not name the tensor"
  expect2 "weights file '.*run/weights\.h5': dataset /params/embedding is corrupt \(checksum mismatch" 30 \
    "$glam" generate --run-dir "$d/run" --prompt the --max-tokens 2
  expect2 "weights file '.*run/weights\.h5': dataset /params/embedding is corrupt" 30 \
    "$glam" eval --run-dir "$d/run" --tasks "$s/tasks/t.jsonl"
  ;;
ckpt_write_fails)  # the checkpoint directory cannot be made, or the disk is full (/dev/full)
  mkdir -p "$d/fresh" && echo "not a directory" > "$d/fresh/checkpoints"
  expect2 "cannot create directory '.*fresh/checkpoints'" 60 \
    "${train[@]}" --data.corpus "$s/corpus/corpus.h5" --run-dir "$d/fresh" --train.steps 2
  cp -r "$s/run" "$d/run"
  ln -s /dev/full "$d/run/checkpoints/step_00000006.h5.tmp"
  rc=0
  timeout -s KILL 60 "$glam" train --config "$s/fuzz.cfg" --data.tokenizer "$s/spm.model" \
    --data.corpus "$s/corpus/corpus.h5" --run-dir "$d/run" --train.steps 6 > "$d/out.txt" 2> "$d/err.txt" || rc=$?
  echo "+ disk full -> exit $rc: $(grep -v '^\s*$' "$d/err.txt" | head -3)"
  [ "$rc" = 2 ] || [ "$rc" = 3 ] || fail "a full disk ends with exit $rc"
  grep -qE "step_00000006\.h5\.tmp.*(No space left on device|I/O error)" "$d/err.txt" || fail "no message naming the file and ENOSPC"
  if grep -q "HDF5-DIAG" "$d/err.txt"; then fail "HDF5 printed its error stack"; fi
  ;;
*) fail "unknown case $case" ;;
esac
echo "OK: $case"
