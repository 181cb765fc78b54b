#!/usr/bin/env bash
# Builds glam's English demo corpus, a mixture of four sources made of text that
# Debian packages install (scripts/deps.sh installs them):
#   fortunes      /usr/share/games/fortunes/*      one document per fortune
#   wordnet-base  /usr/share/wordnet/data.*        20 dictionary glosses per document
#   jargon-text   /usr/share/doc/jargon-text/      one document per Jargon File entry
#   bible-kjv     /usr/lib/bible.data (`bible`)    one document per chapter of the KJV
#
# usage: scripts/make-corpus.sh OUT_DIR BUILD_DIR
# writes OUT_DIR/text/NAME.txt  each source: UTF-8, documents separated by blank
#                            lines, shuffled with a fixed seed (a source is read in order)
#        OUT_DIR/demo.txt    all four mixed, shuffled (the tokenizer's training text)
#        OUT_DIR/spm.model   SentencePiece unigram, 8000 pieces, byte fallback (fixed
#                            seed and thread count: the same model on any machine),
#                            trained on a sample of 1M sentences of demo.txt
#        OUT_DIR/spm.vocab
#        OUT_DIR/NAME/       each source's shards and manifest.json (glam-tokenize
#                            encode --output-dir on $NP MPI ranks; 2% of documents held out)
#        OUT_DIR/mixture.ini the sources and their weights (what input/glam-tiny.cfg reads)
#        OUT_DIR/corpus.h5   demo.txt as one corpus file (the single-file form)
# Each step is skipped when its outputs exist and are newer than its inputs.
# Environment: NP (ranks for encoding, default 2), MPIRUN (default
# "mpirun --allow-run-as-root --oversubscribe").
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 OUT_DIR BUILD_DIR" >&2
  exit 2
fi
out=$1
tokenize=$2/glam-tokenize
script=${BASH_SOURCE[0]}

fortune_dir=/usr/share/games/fortunes
wordnet_dir=/usr/share/wordnet
jargon_gz=/usr/share/doc/jargon-text/jargon.txt.gz
bible_data=/usr/lib/bible.data
np=${NP:-2}
mpirun=${MPIRUN:-mpirun --allow-run-as-root --oversubscribe}
# name weight: GLaM's mixture has books, conversations, encyclopedic and forum text;
# here the Bible stands for books, fortunes for conversation, WordNet for the
# encyclopedia and the Jargon File for forums.
weights="fortunes 0.30
bible 0.30
jargon 0.25
wordnet 0.15"

die() {
  echo "make-corpus: error: $*" >&2
  exit 2
}

say() {
  echo "make-corpus: $*"
}

# require_source PATH PACKAGE: the text PACKAGE installs must be present.
require_source() {
  [[ -e $1 ]] || die "$1 is missing: install the Debian package '$2' (scripts/deps.sh does)"
}

# up_to_date OUTPUT INPUT...: OUTPUT exists and is newer than every INPUT.
up_to_date() {
  local target=$1 input
  shift
  [[ -e $target ]] || return 1
  for input in "$@"; do
    [[ $target -nt $input ]] || return 1
  done
}

megabytes() {
  python3 -c 'import os, sys; print(f"{os.path.getsize(sys.argv[1]) / 1e6:.1f} MB")' "$1"
}

now() {
  date +%s.%N
}

elapsed_since() {
  python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f} s")' "$1"
}

require_source "$fortune_dir" fortunes
for part in noun verb adj adv; do
  require_source "$wordnet_dir/data.$part" wordnet-base
done
require_source "$jargon_gz" jargon-text
require_source "$bible_data" bible-kjv-text
command -v bible > /dev/null || die "the command 'bible' is missing: install the Debian package 'bible-kjv'"
[[ -x $tokenize ]] || die "$tokenize not found: build it first (cmake --build $2 --target glam-tokenize)"

mapfile -t fortune_files < <(find "$fortune_dir" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
[[ ${#fortune_files[@]} -gt 0 ]] || die "no fortune files in $fortune_dir: reinstall the package 'fortunes'"
wordnet_files=("$wordnet_dir"/data.noun "$wordnet_dir"/data.verb "$wordnet_dir"/data.adj "$wordnet_dir"/data.adv)
mkdir -p "$out/text"
names=(fortunes wordnet jargon bible)

# ---- 1. text ----------------------------------------------------------------
text=$out/demo.txt
if up_to_date "$text" "$script" "$jargon_gz" "$bible_data" "${fortune_files[@]}" "${wordnet_files[@]}"; then
  say "$text is up to date ($(megabytes "$text")), skipping"
else
  start=$(now)
  bible -l0 "Ge1:1-Re22:21" > "$out/text/kjv.raw"
  python3 - "$text.tmp" "$out/text" "$jargon_gz" "$out/text/kjv.raw" "${#fortune_files[@]}" "${fortune_files[@]}" "${wordnet_files[@]}" <<'PY'
"""Extracts documents from the four sources and writes each source shuffled to
TEXT_DIR/NAME.txt, and all of them shuffled together to OUT, as blank-line
separated blocks of valid UTF-8 with no control characters."""
import gzip
import random
import re
import sys

GLOSSES_PER_DOC = 20
MAX_JARGON_DOC = 3000  # characters; long appendix sections are cut at paragraphs


def clean(text, name):
    """Decoded, overstrike sequences applied, control characters removed."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        print(f"make-corpus: warning: {name} is not valid UTF-8; bad bytes replaced", file=sys.stderr)
        s = text.decode("utf-8", errors="replace")
    while True:  # "x<BS>y" prints y over x: keep y
        struck = re.sub(r"[^\x08\n]\x08", "", s)
        if struck == s:
            break
        s = struck
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", s)


def fortunes(path):
    with open(path, "rb") as f:
        text = clean(f.read(), path)
    for block in re.split(r"^%[ \t]*$", text, flags=re.M):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if lines:
            yield "\n".join(lines)


def wordnet_glosses(path):
    with open(path, "rb") as f:
        text = clean(f.read(), path)
    glosses = []
    for line in text.split("\n"):
        if line.startswith("  ") or "|" not in line:
            continue  # licence header or no gloss
        gloss = line.split("|", 1)[1].strip()
        if gloss:
            glosses.append(gloss)
    for i in range(0, len(glosses), GLOSSES_PER_DOC):
        yield "\n".join(glosses[i:i + GLOSSES_PER_DOC])


def jargon(path):
    """One document per entry (':name: ...'); outside the lexicon, one per
    section. Paragraphs become single lines; short unpunctuated one-line
    paragraphs are headings (or table-of-contents lines) and start a section."""
    with gzip.open(path, "rb") as f:
        text = clean(f.read(), path)
    doc, heading = [], None
    for block in re.split(r"\n[ \t]*\n", text):
        para = " ".join(line.strip() for line in block.split("\n") if line.strip())
        if not para:
            continue
        is_entry = re.match(r":[^:]+:", para) is not None
        is_heading = not is_entry and "\n" not in block.strip() and len(para) < 60 \
            and not para.endswith((".", "!", "?", "\u201d", '"', ")", ":"))
        if is_entry or is_heading or sum(map(len, doc)) > MAX_JARGON_DOC:
            if doc:
                yield "\n".join(doc)
            doc = []
        if is_heading:
            heading = para
            continue
        if not doc and heading and not is_entry:
            doc.append(heading)
        heading = None
        doc.append(para)
    if doc:
        yield "\n".join(doc)


def bible(path):
    """One document per chapter: its heading ("Genesis 1") then one verse per
    line, without the verse numbers."""
    with open(path, "rb") as f:
        text = clean(f.read(), path)
    doc = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        if not line.startswith(" "):
            if len(doc) > 1:
                yield "\n".join(doc)
            doc = [line.strip()]
        else:
            doc.append(re.sub(r"^\s*\d+\s+", "", line).strip())
    if len(doc) > 1:
        yield "\n".join(doc)


def write_docs(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")


def main():
    out, text_dir, jargon_gz, kjv, n_fortune = sys.argv[1:5] + [int(sys.argv[5])]
    fortune_files = sys.argv[6:6 + n_fortune]
    wordnet_files = sys.argv[6 + n_fortune:]
    sources = {"fortunes": [d for p in fortune_files for d in fortunes(p)],
               "wordnet": [d for p in wordnet_files for d in wordnet_glosses(p)],
               "jargon": list(jargon(jargon_gz)),
               "bible": list(bible(kjv))}
    for name, ds in sources.items():
        random.Random(name).shuffle(ds)
        write_docs(f"{text_dir}/{name}.txt", ds)
    docs = [d for ds in sources.values() for d in ds]
    random.Random(1234).shuffle(docs)
    write_docs(out, docs)
    counts = ", ".join(f"{name} {len(ds)}" for name, ds in sources.items())
    print(f"make-corpus: {len(docs)} documents ({counts})")


main()
PY
  rm "$out/text/kjv.raw"
  mv "$text.tmp" "$text"
  say "wrote $text ($(megabytes "$text")) and $out/text/{$(IFS=,; echo "${names[*]}")}.txt in $(elapsed_since "$start")"
fi

# ---- 2. tokenizer -----------------------------------------------------------
model=$out/spm.model
if up_to_date "$model" "$text" "$script"; then
  say "$model is up to date, skipping"
else
  start=$(now)
  "$tokenize" train-spm --input "$text" --model-prefix "$out/spm.tmp" --vocab-size 8000 \
    --model-type unigram --byte-fallback --input-sentence-size 1000000 --seed 1 --threads 2
  mv "$out/spm.tmp.vocab" "$out/spm.vocab"
  mv "$out/spm.tmp.model" "$model"
  say "trained $model in $(elapsed_since "$start")"
fi

# ---- 3. corpus --------------------------------------------------------------
corpus=$out/corpus.h5
if up_to_date "$corpus" "$text" "$model" "$script"; then
  say "$corpus is up to date ($(megabytes "$corpus")), skipping"
else
  start=$(now)
  "$tokenize" encode --tokenizer "$model" --input "$text" --output "$corpus" \
    --source debian-demo --doc-split blank --overwrite
  say "wrote $corpus ($(megabytes "$corpus")) in $(elapsed_since "$start")"
fi

"$tokenize" info "$corpus"

# ---- 4. the mixture: each source in shards, with a held-out split --------------
for name in "${names[@]}"; do
  manifest=$out/$name/manifest.json
  if up_to_date "$manifest" "$text" "$model" "$script"; then
    say "$manifest is up to date, skipping"
    continue
  fi
  # shellcheck disable=SC2086  # MPIRUN is a command with its options
  $mpirun -np "$np" "$tokenize" encode --tokenizer "$model" --input "$out/text/$name.txt" \
    --output-dir "$out/$name" --source "$name" --doc-split blank --val-fraction 0.02 --shard-mb 1 \
    --overwrite
done
{
  echo "# The demo mixture (scripts/make-corpus.sh): name, weight, shards relative to this file."
  while read -r name weight; do
    printf '%-9s %s  %s/manifest.json\n' "$name" "$weight" "$name"
  done <<< "$weights"
} > "$out/mixture.ini.tmp"
mv "$out/mixture.ini.tmp" "$out/mixture.ini"
say "wrote $out/mixture.ini:"
cat "$out/mixture.ini"
