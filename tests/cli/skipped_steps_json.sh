#!/usr/bin/env bash
# A run whose steps are skipped still writes metrics.jsonl as strict JSON: every
# line parses with NaN and Infinity refused, and the skipped steps carry null for
# what was not finite. train.lr is bounded (a huge one is refused), so the
# non-finite gradient comes from the weights instead: 2 steps, one weight of the
# checkpoint set to Inf (its checksum recomputed, tests/ckpt/ckpt_doc.py), then
# the run resumed to 4 steps.
# usage: skipped_steps_json.sh GLAM PYTHON TINY_DATA_DIR RUN_DIR
set -euo pipefail
glam=$1 python=$2 data=$3 run=$4
here=$(cd "$(dirname "$0")" && pwd)
train() {
  "$glam" train --config "$here/../../input/glam-tiny.cfg" --run-dir "$run" "$@" \
    --data.corpus "$data/tiny.h5" --data.tokenizer "$data/tiny.model" \
    --model.vocab_size 200 --model.d_model 32 --model.n_layers 2 --model.n_heads 2 --model.d_head 16 \
    --model.d_ff 64 --model.n_experts 4 --model.seq_len 16 --model.group_size 32 --train.batch_rows 4 \
    --train.val_every 0 >> "$run.log"
}
: > "$run.log"
train --overwrite --train.steps 2
"$python" - "$run" "$here/../ckpt" <<'PY'
import os, sys
import h5py, numpy as np
sys.path.insert(0, sys.argv[2])
import ckpt_doc
ckpt = os.path.join(sys.argv[1], "checkpoints", open(os.path.join(sys.argv[1], "checkpoints", "latest")).read().strip())
with h5py.File(ckpt, "r+") as f:
    ds = f["/params/final_norm_scale"]
    data = ds[...]
    data.reshape(-1)[0] = np.inf
    ds[...] = data
    ds.attrs["checksum"] = np.uint64(ckpt_doc.checksum(data))
print(f"poisoned {ckpt}")
PY
train --train.steps 4
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
