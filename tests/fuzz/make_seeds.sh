#!/usr/bin/env bash
# The valid files the fuzz tests mutate, one of each kind a glam reader takes:
#   make_seeds.sh GLAM TOKENIZE WORK
# WORK/seeds/ gets
#   text.txt, docs.jsonl, docs.jsonl.gz     text inputs of glam-tokenize encode
#   spm.model                              a 100-piece tokenizer trained on them
#   corpus/corpus.h5                        one corpus file
#   src/manifest.json + src/train-*.h5 ... one sharded source (10% held out)
#   mix/mixture.ini (+ mix/a, mix/b)       a two-source mixture file
#   fuzz.cfg                               a config file (its corpus names no file)
#   run/  config.cfg, tokenizer.model, weights.h5, checkpoints/step_00000004.h5
#         (4 steps of a tiny MoE model, 1 rank)
#   tasks/t.jsonl                          an eval task file (multiple choice)
set -euo pipefail
glam=$1 tokenize=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMPI_MCA_ess_singleton_isolated=1
s=$work/seeds
rm -rf "$s" && mkdir -p "$s"/corpus "$s"/mix "$s"/tasks
cp "$here/../data/tiny_english.txt" "$s/text.txt"
# One JSON object per paragraph of the text.
awk 'BEGIN { RS = ""; } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\n/, "\\n"); printf "{\"text\": \"%s\", \"id\": %d}\n", $0, NR }' \
  "$s/text.txt" > "$s/docs.jsonl"
gzip -9 -n -c "$s/docs.jsonl" > "$s/docs.jsonl.gz"

"$tokenize" train-spm --input "$s/text.txt" --model-prefix "$s/spm" --vocab-size 100 --threads 2 > /dev/null
"$tokenize" encode --tokenizer "$s/spm.model" --input "$s/text.txt" --output "$s/corpus/corpus.h5" --source tiny > /dev/null
"$tokenize" encode --tokenizer "$s/spm.model" --input "$s/text.txt" --input "$s/docs.jsonl" --output-dir "$s/src" \
  --source tiny --val-fraction 0.1 --shard-mb 0.002 > /dev/null
for name in a b; do
  "$tokenize" encode --tokenizer "$s/spm.model" --input "$s/text.txt" --output-dir "$s/mix/$name" --source "$name" \
    --shard-mb 0.003 > /dev/null
done
printf '# two sources\na 0.7 a/manifest.json\nb 0.3 b/manifest.json\n' > "$s/mix/mixture.ini"

cat > "$s/fuzz.cfg" <<EOF
[model]
vocab_size = 100
d_model = 32
n_layers = 2
n_heads = 2
d_head = 16
d_ff = 64
n_experts = 4
group_size = 32
seq_len = 16

[train]
steps = 4
batch_rows = 4
warmup_steps = 10
seed = 3
log_every = 1

[checkpoint]
every_steps = 2

[data]
corpus = no-such-corpus.h5
tokenizer = no-such-tokenizer.model
EOF
"$glam" train --config "$s/fuzz.cfg" --run-dir "$s/run" --data.corpus "$s/corpus/corpus.h5" \
  --data.tokenizer "$s/spm.model" > "$work/train.log" 2>&1 || { tail -5 "$work/train.log"; exit 1; }
rm -f "$s/run/checkpoints/step_00000002.h5" "$s/run/metrics.jsonl"
test -f "$s/run/weights.h5" && test -f "$s/run/checkpoints/step_00000004.h5"

cat > "$s/tasks/t.jsonl" <<'EOF'
{"context": "The cat sat on the", "choices": ["mat", "moon"], "gold": 0}
{"context": "One, two,", "choices": ["three", "blue", "seven"], "gold": 0}
{"prompt": "ignored in a multiple choice file?", "context": "A", "choices": ["b"], "gold": 0}
EOF
echo "fuzz seeds in $s"
