#!/usr/bin/env bash
# End-to-end tests of `glam eval` on a synthetic task (make_capitals.py).
#   eval_test.sh setup  GLAM TOKENIZE WORK   data, a 128-piece BPE tokenizer, a model trained
#                                            300 steps and an untrained one (0 steps)
#   eval_test.sh scores GLAM WORK            trained: near 100% (zero- and two-shot); untrained: near chance
#   eval_test.sh meshes GLAM WORK            mpirun on 2x1, 1x2, 2x2, 4x1: the report of one rank
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=$1 glam=$2
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
fail() { echo "FAIL: $*" >&2; exit 1; }
check() { python3 "$here/check_report.py" "$@"; }
mpi() {  # mpi NP ARGS...
  local np=$1; shift
  mpirun --allow-run-as-root --oversubscribe -np "$np" -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS "$@"
}

case $mode in
setup)
  tokenize=$3 work=$4
  rm -rf "$work" && mkdir -p "$work"
  python3 "$here/make_capitals.py" "$work/data"
  "$tokenize" train-spm --input "$work/data/train.txt" --model-prefix "$work/spm" --vocab-size 128 --model-type bpe --threads 2
  "$tokenize" encode --tokenizer "$work/spm.model" --input "$work/data/train.txt" --output "$work/corpus.h5" --source capitals
  for steps in 300 0; do
    mpi 1 "$glam" train --config "$here/capitals.cfg" --run-dir "$work/run$steps" --data.corpus "$work/corpus.h5" \
      --data.tokenizer "$work/spm.model" --train.steps "$steps" > "$work/train$steps.log" 2>&1 \
      || fail "training $steps steps: $(tail -5 "$work/train$steps.log")"
  done
  tail -1 "$work/run300/metrics.jsonl" | cut -c1-80
  ;;
scores)
  work=$3 data=$3/data r=$3/reports
  rm -rf "$r" && mkdir -p "$r"
  ev() { mpi 1 "$glam" eval --tasks "$data" "$@"; }
  ev --run-dir "$work/run300" --text "$data/heldout.txt" --json "$r/trained.json" | tee "$r/trained.txt"
  check score "$r/trained.json" capitals_mc accuracy min 0.9
  check score "$r/trained.json" capitals_gen em min 0.8
  check score "$r/trained.json" capitals_gen f1 min 0.8
  check text "$r/trained.json" "$data/heldout.txt"
  ev --run-dir "$work/run300" --shots 2 --json "$r/two_shot.json" --predictions "$r/two_shot.jsonl" > /dev/null
  check predictions "$r/two_shot.json" "$r/two_shot.jsonl" "$data"
  check score "$r/two_shot.json" capitals_mc accuracy min 0.75
  check score "$r/two_shot.json" capitals_gen em min 0.5
  ev --run-dir "$work/run300" --unnormalized --json "$r/sum.json" > /dev/null
  check score "$r/sum.json" capitals_mc accuracy min 0.9
  grep -q '"unnormalized": true' "$r/sum.json" || fail "--unnormalized is not in the report"
  ev --run-dir "$work/run0" --text "$data/heldout.txt" --max-tokens 8 --json "$r/untrained.json" | tee "$r/untrained.txt"
  check score "$r/untrained.json" capitals_mc accuracy max 0.5   # chance 0.25, 64 examples
  check score "$r/untrained.json" capitals_gen em max 0.1
  check less "$r/trained.json" "$r/untrained.json"
  ev --run-dir "$work/run300" --limit 5 --json "$r/limit.json" > /dev/null
  [ "$(grep -c '"n": 5' "$r/limit.json")" = 2 ] || fail "--limit 5 did not evaluate 5 examples per task"
  # an existing report is not replaced without --overwrite, and stays as it was
  cp "$r/limit.json" "$r/limit.copy"
  if ev --run-dir "$work/run300" --json "$r/limit.json" > /dev/null 2> "$r/refuse.err"; then fail "an existing --json was replaced"; fi
  grep -q "already exists (give --overwrite" "$r/refuse.err" || fail "no message for an existing --json"
  cmp "$r/limit.json" "$r/limit.copy" || fail "the refused report file changed"
  ev --run-dir "$work/run300" --limit 3 --json "$r/limit.json" --overwrite > /dev/null
  grep -q '"n": 3' "$r/limit.json" || fail "--overwrite did not replace the report"
  echo "PASS: trained near 100%, untrained near chance, perplexity drops"
  ;;
meshes)
  work=$3 data=$3/data r=$3/meshes
  rm -rf "$r" && mkdir -p "$r"
  for mesh in 1x1 2x1 1x2 2x2 4x1; do
    np=$(( ${mesh%x*} * ${mesh#*x} ))
    mpi "$np" "$glam" eval --run-dir "$work/run300" --tasks "$data" --shots 2 --text "$data/heldout.txt" \
      --mesh "$mesh" --json "$r/$mesh.json" > "$r/$mesh.txt" 2> "$r/$mesh.err" || fail "eval on $mesh: $(cat "$r/$mesh.err")"
    [ "$(grep -c '^task ' "$r/$mesh.txt")" = 1 ] || fail "$mesh: the table is not printed once"
    [ "$mesh" = 1x1 ] || check same "$r/1x1.json" "$r/$mesh.json" 1e-6
    # 3 examples: a last forward where some data ranks have nothing to score
    mpi "$np" "$glam" eval --run-dir "$work/run300" --tasks "$data" --limit 3 --mesh "$mesh" --json "$r/$mesh.few.json" \
      > /dev/null 2> "$r/$mesh.few.err" || fail "eval --limit 3 on $mesh: $(cat "$r/$mesh.few.err")"
    [ "$mesh" = 1x1 ] || check same "$r/1x1.few.json" "$r/$mesh.few.json" 1e-6
  done
  echo "PASS: 2x1, 1x2, 2x2 and 4x1 report what one rank reports"
  ;;
*) fail "unknown mode $mode" ;;
esac
