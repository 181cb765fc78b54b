#!/usr/bin/env bash
# `glam-tokenize encode --output-dir` under mpirun, where each rank reads only its
# byte range of each uncompressed input (docs/DATA.md): on 1, 2, 3 and 4 ranks the
# shards and manifest are the same bytes. Inputs: documents that straddle the
# range boundaries, a file smaller than the rank count, a last line without
# newline, CRLF, gzip files (read whole by one rank each), with --doc-split blank
# and line. Bad input: an empty file, and invalid UTF-8 in the last rank's range
# (the message names the same line as on one rank). --verbose: each of 4 ranks
# reads about a quarter of a larger file.
# usage: encode_ranges.sh GLAM_TOKENIZE MODEL TEXT WORK_DIR
set -euo pipefail
tokenize=$1 model=$2 text=$3 work=$4/encode_ranges
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
run() {  # run NP ARGS...: mpirun glam-tokenize on NP ranks
  local np=$1; shift
  mpirun --allow-run-as-root --oversubscribe -np "$np" -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS "$tokenize" "$@"
}

# Long blocks and long lines, so that range boundaries fall inside documents.
python3 - "$text" "$work" <<'PY'
import gzip, json, sys
lines = [l.strip() for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
work = sys.argv[2]
with open(f"{work}/blocks.txt", "w", encoding="utf-8", newline="") as f:
    for i in range(12):
        f.write("\n".join(lines[j % len(lines)] for j in range(i, i + 1 + i % 4)))
        f.write("\r\n\r\n" if i % 3 == 0 else "\n\n\n" if i % 3 == 1 else "\n \n")
    f.write(lines[0])  # the last line has no newline
with open(f"{work}/docs.jsonl", "w", encoding="utf-8") as f:
    for i, l in enumerate(lines * 2):
        f.write(json.dumps({"id": i, "text": l * (1 + i % 3)}) + ("\n\n" if i % 5 == 0 else "\n"))
with gzip.open(f"{work}/a.txt.gz", "wt", encoding="utf-8") as f:
    f.write("\n\n".join(lines[:5]))
with gzip.open(f"{work}/b.txt.gz", "wt", encoding="utf-8") as f:
    f.write("\n\n".join(lines[5:]))
open(f"{work}/tiny.txt", "w").write("Hi")  # 2 bytes: fewer than the ranks
PY
inputs=(--input "$work/blocks.txt" --input "$work/a.txt.gz" --input "$work/tiny.txt" --input "$work/docs.jsonl"
        --input "$work/b.txt.gz" --input "$text")
for split in blank line; do
  for np in 1 2 3 4; do
    run "$np" encode --tokenizer "$model" "${inputs[@]}" --doc-split "$split" --output-dir "$work/$split-np$np" \
      --source ranges --val-fraction 0.15 --shard-mb 0.0007 > "$work/$split-np$np.log" 2>&1 ||
      fail "encode --doc-split $split on $np ranks: $(cat "$work/$split-np$np.log")"
  done
  cat "$work/$split-np1.log"
  for np in 2 3 4; do
    diff -r "$work/$split-np1" "$work/$split-np$np" || fail "--doc-split $split: $np ranks differ from 1 rank"
  done
  echo "--doc-split $split: 2, 3 and 4 ranks write the same shards and manifest as 1 rank"
done

: > "$work/empty.txt"
for np in 1 3; do
  if run "$np" encode --tokenizer "$model" --input "$text" --input "$work/empty.txt" --output-dir "$work/never" \
      --source e > "$work/empty.log" 2>&1; then fail "an empty input was accepted on $np ranks"; fi
  grep -q "error: input file '$work/empty.txt' is empty" "$work/empty.log" || fail "empty input: $(cat "$work/empty.log")"
  [[ $(grep -c "error" "$work/empty.log") == 1 ]] || fail "empty input: not one message: $(cat "$work/empty.log")"
done

python3 - "$work/bad.txt" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    for i in range(1, 40):
        f.write(f"line {i} holds a document of its own\n".encode())
    f.write(b"line 40 is \xff broken\n")
PY
for np in 1 3; do
  if run "$np" encode --tokenizer "$model" --input "$work/bad.txt" --doc-split line --output-dir "$work/never" \
      --source e > "$work/bad-np$np.log" 2>&1; then fail "bad UTF-8 accepted on $np ranks"; fi
  grep -q "error: input file '$work/bad.txt' line 40: invalid UTF-8 at byte 12" "$work/bad-np$np.log" ||
    fail "bad UTF-8 on $np ranks: $(cat "$work/bad-np$np.log")"
done

for i in $(seq 200); do cat "$text"; echo; done > "$work/big.txt"
size=$(stat -c %s "$work/big.txt")
run 4 encode --tokenizer "$model" --input "$work/big.txt" --output-dir "$work/big" --source big --verbose \
  > "$work/big.log" 2>&1 || fail "encode on 4 ranks: $(cat "$work/big.log")"
cat "$work/big.log"
for r in 0 1 2 3; do
  read_bytes=$(sed -n "s/^glam-tokenize: rank $r read \([0-9]*\) bytes.*/\1/p" "$work/big.log")
  [[ -n $read_bytes ]] || fail "no bytes-read line for rank $r"
  (( read_bytes < size / 4 + 16384 )) || fail "rank $r read $read_bytes of $size bytes, more than its quarter"
done
echo "PASS"
