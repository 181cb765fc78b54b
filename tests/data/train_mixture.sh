#!/usr/bin/env bash
# `glam train` on a mixture of two sharded sources with held-out splits:
#  - metrics.jsonl holds val_loss (and per source) every train.val_every steps
#    (at fixed steps, so a resumed run writes the same), and the epochs of each source at every step;
#  - a run stopped at step 6 and resumed to 12 writes the metrics of an
#    uninterrupted 12-step run (same rows, same losses, same validation);
#  - bad data stops with status 2 and names the file: shards of another
#    tokenizer, resuming a run with another tokenizer, a truncated shard, ids outside the model's vocabulary;
#  - a source without a held-out split is left out of validation, with a note.
# usage: train_mixture.sh GLAM GLAM_TOKENIZE TINY_MODEL OTHER_MODEL TEXT CONFIG WORK_DIR
# (a third model, jsonl_spm.model, is expected beside TINY_MODEL)
set -euo pipefail
glam=$1 tokenize=$2 model=$3 other_model=$4 text=$5 config=$6 work=$7/train_mixture
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
mpi() { mpirun --allow-run-as-root --oversubscribe -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS "$@"; }

"$tokenize" encode --tokenizer "$model" --input "$text" --output-dir "$work/lines" --source lines \
  --doc-split line --val-fraction 0.2 --shard-mb 0.0005 > /dev/null
"$tokenize" encode --tokenizer "$model" --input "$text" --output-dir "$work/blocks" --source blocks \
  --val-fraction 0.2 > /dev/null
printf '# test mixture\nlines 3 lines/manifest.json\nblocks 1 blocks/manifest.json\n' > "$work/mix.ini"

SHAPE=(--config "$config" --model.d_model 32 --model.n_layers 2 --model.n_heads 4 --model.d_head 8 --model.d_ff 64
       --model.n_experts 4 --model.seq_len 32 --model.group_size 32 --train.batch_rows 4
       --train.warmup_steps 10 --train.log_every 1 --train.val_every 4 --train.val_rows 8)
MODEL=("${SHAPE[@]}" --data.corpus "$work/mix.ini" --data.tokenizer "$model" --model.vocab_size 200)
metrics() { sed -E 's/"tokens_per_s": [^,]*, //; s/, "resumed_from": [0-9]+//' "$1/metrics.jsonl"; }

mpi -np 2 "$glam" train "${MODEL[@]}" --mesh 2x1 --run-dir "$work/full" --train.steps 12 > "$work/full.log" \
  || fail "training on the mixture: $(tail -5 "$work/full.log")"
[[ $(grep -c '"val_loss"' "$work/full/metrics.jsonl") -eq 3 ]] || fail "expected val_loss at steps 4, 8, 12"
python3 - "$work/full/metrics.jsonl" <<'PY' || fail "bad metrics"
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
val = [r for r in recs if "val_loss" in r]
steps = [r for r in recs if "loss" in r]
assert [r["step"] for r in val] == [4, 8, 12], val
for r in val:
    assert math.isfinite(r["val_loss"]) and r["val_loss"] > 0, r
    assert set(r["val_loss_by_source"]) == {"lines", "blocks"}, r
    w = 0.75 * r["val_loss_by_source"]["lines"] + 0.25 * r["val_loss_by_source"]["blocks"]
    assert abs(w - r["val_loss"]) < 1e-5 * r["val_loss"], r
assert len(steps) == 12
ep = [s["epochs"] for s in steps]
assert all(ep[i]["lines"] <= ep[i + 1]["lines"] and ep[i]["blocks"] <= ep[i + 1]["blocks"] for i in range(11))
assert ep[-1]["lines"] > 0 and ep[-1]["blocks"] > 0, ep[-1]
print("validation", [round(r["val_loss"], 4) for r in val], "epochs at step 12", ep[-1])
PY
grep -q "^val      4 | val_loss" "$work/full.log" || fail "the log has no validation line"

mpi -np 2 "$glam" train "${MODEL[@]}" --mesh 2x1 --run-dir "$work/resumed" --train.steps 6 > "$work/part1.log"
mpi -np 2 "$glam" train "${MODEL[@]}" --mesh 2x1 --run-dir "$work/resumed" --train.steps 12 > "$work/part2.log"
grep -q "resumed from" "$work/part2.log" || fail "the second run did not resume"
diff <(metrics "$work/full") <(metrics "$work/resumed") || fail "the resumed run differs from the uninterrupted one"
echo "resume at step 6: metrics identical"
# Resuming with another tokenizer (and a corpus made with it) is refused.
other_spm=$(dirname "$model")/jsonl_spm.model
"$tokenize" encode --tokenizer "$other_spm" --input "$text" --output-dir "$work/other" --source other \
  --val-fraction 0.2 > /dev/null 2>&1
rc=0
mpi -np 2 "$glam" train "${SHAPE[@]}" --data.corpus "$work/other/manifest.json" --data.tokenizer "$other_spm" \
  --model.vocab_size 200 --mesh 2x1 --run-dir "$work/resumed" --train.steps 14 > "$work/other.log" 2> "$work/other.err" || rc=$?
[[ $rc -eq 2 ]] || fail "resuming with another tokenizer: status $rc"
grep -q "run dir '.*resumed' was trained with the tokenizer .*tokenizer.model (hash [0-9a-f]*) but data.tokenizer '.*jsonl_spm.model'" \
  "$work/other.err" || fail "resuming with another tokenizer: $(cat "$work/other.err")"
echo "refused as expected: $(grep -m1 error "$work/other.err")"

expect_error() {  # expect_error REGEX CORPUS TOKENIZER VOCAB: glam train exits 2 with REGEX on stderr
  local regex=$1 rc=0; shift
  "$glam" train "${SHAPE[@]}" --data.corpus "$1" --data.tokenizer "$2" --model.vocab_size "$3" \
    --run-dir "$work/bad" --overwrite --train.steps 2 \
    > "$work/bad.out" 2> "$work/bad.err" || rc=$?
  [[ $rc -eq 2 ]] || fail "expected status 2, got $rc for $*: $(cat "$work/bad.err")"
  grep -Eq "$regex" "$work/bad.err" || fail "stderr '$(cat "$work/bad.err")' does not match '$regex'"
  echo "refused as expected: $(head -1 "$work/bad.err")"
}
expect_error "was tokenized with another SentencePiece model than '.*$(basename "$other_model")'" \
  "$work/mix.ini" "$other_model" 300
expect_error "corpus file '.*lines/train-00000.h5': token id [0-9]+ at position [0-9]+ is >= the expected vocabulary size 20" \
  "$work/mix.ini" "$model" 20
cp -r "$work/lines" "$work/cut" && cp -r "$work/blocks" "$work/cut_blocks"
truncate -s 2000 "$work/cut/train-00001.h5"
printf 'lines 3 cut/manifest.json\nblocks 1 cut_blocks/manifest.json\n' > "$work/cut.ini"
expect_error "cut/train-00001.h5" "$work/cut.ini" "$model" 200
# A source without a held-out split is left out of validation, with a note.
printf 'lines 3 lines/manifest.json\nplain 1 lines/train-00000.h5\n' > "$work/part_val.ini"
"$glam" train "${SHAPE[@]}" --data.corpus "$work/part_val.ini" --data.tokenizer "$model" --model.vocab_size 200 \
  --run-dir "$work/part_val" --train.steps 4 > "$work/part_val.log" || fail "training with a source without held-out split"
grep -q "# validation: source plain (.*train-00000.h5) has no held-out split" "$work/part_val.log" || fail "no note"
grep -q '"val_loss_by_source": {"lines": ' "$work/part_val/metrics.jsonl" || fail "no validation of the other source"
grep '"val_loss"' "$work/part_val/metrics.jsonl" | grep -q '"plain"' && fail "a source without held-out split was validated"
echo "left out of validation as expected: $(grep '# validation' "$work/part_val.log")"
echo "PASS"
