#!/usr/bin/env bash
# `glam generate` on several meshes prints what it prints on one rank: greedy,
# sampled and beam search, with a stop string, from a run trained on the tiny corpus.
# usage: generate_test.sh GLAM_BINARY WORK_DIR CORPUS TOKENIZER CONFIG
set -euo pipefail
glam=$1 work=$2 corpus=$3 tokenizer=$4 config=$5
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
dir=$work/generate
rm -rf "$dir" && mkdir -p "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }

mpirun --allow-run-as-root --oversubscribe -np 1 "$glam" train --config "$config" --run-dir "$dir/run" \
  --data.corpus "$corpus" --data.tokenizer "$tokenizer" --model.vocab_size 200 --model.d_model 32 \
  --model.n_layers 2 --model.n_heads 4 --model.d_head 8 --model.d_ff 64 --model.n_experts 4 \
  --model.seq_len 32 --model.group_size 32 --train.batch_rows 4 --train.steps 30 --train.warmup_steps 10 \
  > "$dir/train.log"
printf 'The quick\nA dog\n' > "$dir/prompts.txt"
run() {  # run MESH NAME [generate options]
  local mesh=$1 name=$2; shift 2
  local np=$(( ${mesh%x*} * ${mesh#*x} ))
  mpirun --allow-run-as-root --oversubscribe -np "$np" -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS \
    "$glam" generate --run-dir "$dir/run" --prompts "$dir/prompts.txt" --max-tokens 40 --mesh "$mesh" "$@" \
    > "$dir/$name.$mesh.txt" 2> "$dir/$name.$mesh.err" || fail "$name on $mesh: $(cat "$dir/$name.$mesh.err")"
}
for mesh in 1x1 1x2 2x1 2x2; do
  run "$mesh" greedy
  run "$mesh" sampled --temperature 0.9 --top-k 20 --top-p 0.95 --seed 5
  run "$mesh" beam --beam 3 --stop "."
done
for name in greedy sampled beam; do
  [ "$(wc -l < "$dir/$name.1x1.txt")" = 2 ] || fail "$name: expected 2 lines: $(cat "$dir/$name.1x1.txt")"
  for mesh in 1x2 2x1 2x2; do
    diff "$dir/$name.1x1.txt" "$dir/$name.$mesh.txt" || fail "$name differs on mesh $mesh"
  done
  echo "$name: $(head -1 "$dir/$name.1x1.txt")"
done
grep -q "tokens/s" "$dir/greedy.1x1.err" || fail "no tokens/s report"
echo "PASS: generation is the same on 1x1, 1x2, 2x1, 2x2"
