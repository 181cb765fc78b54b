#!/usr/bin/env bash
# `glam-tokenize encode --output-dir` under mpirun on 2, 3 and 4 ranks writes the
# same bytes as on 1 rank: every shard and the manifest. Inputs: plain text,
# JSON Lines and gzip-compressed text, with a held-out split and small shards so
# that every rank writes several.
# usage: encode_parallel.sh GLAM_TOKENIZE MODEL TEXT WORK_DIR
set -euo pipefail
tokenize=$1 model=$2 text=$3 work=$4/encode_parallel
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

gzip -c "$text" > "$work/text.txt.gz"
python3 - "$text" "$work/docs.jsonl" <<'PY'
import json, sys
lines = [l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for i, l in enumerate(lines):
        f.write(json.dumps({"id": i, "text": l + " \u00e9\u2603"}) + "\n")
PY
for np in 1 2 3 4; do
  mpirun --allow-run-as-root --oversubscribe -np "$np" -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$tokenize" encode --tokenizer "$model" --input "$text" --input "$work/docs.jsonl" \
    --input "$work/text.txt.gz" --output-dir "$work/np$np" --source mixed --val-fraction 0.1 \
    --shard-mb 0.0005 > "$work/np$np.log" 2>&1 || fail "encode on $np ranks: $(cat "$work/np$np.log")"
done
cat "$work/np1.log"
n_shards=$(ls "$work/np1" | grep -c '\.h5$')
[[ $n_shards -ge 8 ]] || fail "expected at least 8 shards, got $n_shards"
grep -q '"split": "val"' "$work/np1/manifest.json" || fail "no held-out shard in the manifest"
for np in 2 3 4; do
  diff -r "$work/np1" "$work/np$np" || fail "encoding on $np ranks differs from 1 rank"
  echo "np$np: $n_shards shards and manifest.json identical to np1"
done
"$tokenize" info "$work/np4/manifest.json" | grep -q "checksums verified" || fail "info does not verify the shards"
echo "PASS"
