#!/usr/bin/env bash
# A run whose steps are skipped (lr 1e30 makes the second step's gradient
# non-finite) still writes metrics.jsonl as strict JSON: every line parses with
# NaN and Infinity refused, and the skipped steps carry null for what was not finite.
# usage: skipped_steps_json.sh GLAM PYTHON TINY_DATA_DIR RUN_DIR
set -euo pipefail
glam=$1 python=$2 data=$3 run=$4
"$glam" train --config "$(dirname "$0")/../../input/glam-tiny.cfg" --run-dir "$run" --overwrite \
  --data.corpus "$data/tiny.h5" --data.tokenizer "$data/tiny.model" \
  --model.vocab_size 200 --model.d_model 32 --model.n_layers 2 --model.n_heads 2 --model.d_head 16 \
  --model.d_ff 64 --model.n_experts 4 --model.seq_len 16 --model.group_size 32 --train.batch_rows 4 \
  --train.steps 4 --train.lr 1e30 --train.val_every 0 > "$run.log"
"$python" - "$run/metrics.jsonl" <<'PY'
import json, sys
def refuse(name):
    raise ValueError(f"non-standard JSON constant {name}")
records = [json.loads(l, parse_constant=refuse) for l in open(sys.argv[1]) if l.strip()]
skipped = [r for r in records if r["skipped"]]
assert len(records) == 4, records
assert skipped and all(r["grad_norm"] is None for r in skipped), skipped
print(f"{len(records)} records, strict JSON; {len(skipped)} skipped with grad_norm null")
PY
