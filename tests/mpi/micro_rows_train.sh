#!/usr/bin/env bash
# `glam train` on a 2x1 mesh with and without train.micro_rows: the same losses
# and gradient norms at every step (relative 1e-6), a bad micro_rows refused with
# exit 2 naming the key; the peak memory of both is printed. Usage: micro_rows_train.sh MPIRUN GLAM TINY_H5 TINY_MODEL TMP
set -euo pipefail
mpirun="$1 --allow-run-as-root --oversubscribe" glam=$2 corpus=$3 tok=$4 tmp=$5
rm -rf "$tmp" && mkdir -p "$tmp"
common=(--config input/glam-tiny.cfg --model.d_model 64 --model.d_ff 128 --model.seq_len 64 --model.n_layers 2
        --train.batch_rows 8 --model.group_size 64 --train.val_every 0 --train.steps 4 --mesh 2x1
        --data.corpus "$corpus" --data.tokenizer "$tok")
for m in 0 1; do
  $mpirun -np 2 -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS /usr/bin/time -f "rss %M" -o "$tmp/rss$m.%q{OMPI_COMM_WORLD_RANK}" \
    "$glam" train "${common[@]}" --run-dir "$tmp/run$m" --train.micro_rows $m > "$tmp/out$m" 2>&1 ||
    { cat "$tmp/out$m"; exit 1; }
done
python3 - "$tmp" <<'PY'
import json, sys, glob
tmp = sys.argv[1]
def rows(m):
    return [r for r in map(json.loads, open(f"{tmp}/run{m}/metrics.jsonl")) if "loss" in r and "step" in r]
a, b = rows(0), rows(1)
assert len(a) == len(b) == 4, (len(a), len(b))
for x, y in zip(a, b):
    for k in ("loss", "ce", "aux", "grad_norm"):
        assert abs(x[k] - y[k]) <= 1e-6 * abs(x[k]) + 1e-9, (x["step"], k, x[k], y[k])
rss = {m: max(int(open(f).read().split()[-1]) for f in glob.glob(f"{tmp}/rss{m}.*")) for m in (0, 1)}
print("losses equal over 4 steps; peak RSS per rank: one-shot %d KB, micro_rows 1: %d KB" % (rss[0], rss[1]))
# printed only: the saving is plan_memory_vs_run_micro's to check; this model is so
# small that the peak is often the libraries' at start (a CUDA build loads cuBLAS)
PY
set +e
$mpirun -np 2 "$glam" train "${common[@]}" --run-dir "$tmp/bad" --train.micro_rows 3 > "$tmp/bad.out" 2>&1
rc=$?
set -e
[ $rc -eq 2 ] || { cat "$tmp/bad.out"; echo "exit $rc, expected 2"; exit 1; }
grep -q "train.micro_rows 3 must divide the rows each data rank has" "$tmp/bad.out" || { cat "$tmp/bad.out"; exit 1; }
echo "micro_rows 3 of 4 rows per rank: exit 2, the key named"
