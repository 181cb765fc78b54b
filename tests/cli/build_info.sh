#!/usr/bin/env bash
# A run dir names the glam that trained in it: build.json holds the version and
# commit that `glam --version` prints, and metrics.jsonl keeps its one-line layout
# ({"step": 1, "loss": ...}, the layout resuming and the job scripts read).
# usage: build_info.sh GLAM PYTHON TINY_DATA_DIR RUN_DIR
set -euo pipefail
glam=$1 python=$2 data=$3 run=$4
here=$(cd "$(dirname "$0")" && pwd)
"$glam" train --config "$here/../../input/glam-tiny.cfg" --run-dir "$run" --overwrite --train.steps 2 \
  --data.corpus "$data/tiny.h5" --data.tokenizer "$data/tiny.model" \
  --model.vocab_size 200 --model.d_model 32 --model.n_layers 2 --model.n_heads 2 --model.d_head 16 \
  --model.d_ff 64 --model.n_experts 4 --model.seq_len 16 --model.group_size 32 --train.batch_rows 4 \
  --train.val_every 0 > "$run.log"
"$python" - "$run" "$("$glam" --version)" <<'PY'
import json, os, sys
run, version = sys.argv[1], sys.argv[2]
build = json.load(open(os.path.join(run, "build.json")))
assert version == f"glam {build['glam_version']} (git {build['git_commit']})", (version, build)
lines = open(os.path.join(run, "metrics.jsonl")).read().splitlines()
assert [json.loads(l)["step"] for l in lines] == [1, 2], lines
assert all(l.startswith(f'{{"step": {i + 1}, "loss": ') for i, l in enumerate(lines)), lines
print(f"build.json: {build}; metrics.jsonl: {len(lines)} records in the one-line layout")
PY
