#!/usr/bin/env python3
"""A synthetic world for the eval tests: made-up countries, each with one made-up
capital (a fixed random mapping), written as a training text ("the capital of X is
Y ." sentences, a few per document) and as tasks in glam's layout:

  capitals_mc.jsonl        multiple choice: the right capital among 4 (each country twice)
  capitals_mc.train.jsonl  demonstrations for few-shot runs
  capitals_gen.jsonl       generative: the capital, decoded (template file beside it)
  capitals_gen.train.jsonl
  heldout.txt              held-out text of the same kind, for perplexity

usage: make_capitals.py OUT_DIR [--pairs N] [--docs N] [--seed S]
"""
import argparse
import json
import os
import random

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


def made_up_word(rng, syllables):
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables))


def distinct_words(rng, n, syllables, taken):
    words = []
    while len(words) < n:
        w = made_up_word(rng, syllables)
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def sentence(country, capital):
    return f"the capital of {country} is {capital} ."


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    taken = set()
    countries = distinct_words(rng, a.pairs, 3, taken)
    capitals = distinct_words(rng, a.pairs, 2, taken)
    os.makedirs(a.out, exist_ok=True)

    def documents(n):
        docs = []
        for _ in range(n):
            k = rng.randint(1, 4)
            docs.append("\n".join(sentence(countries[i], capitals[i]) for i in rng.sample(range(a.pairs), k)))
        return docs

    with open(os.path.join(a.out, "train.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(documents(a.docs)) + "\n")
    with open(os.path.join(a.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(documents(20)) + "\n")

    def mc(i):
        wrong = rng.sample([c for j, c in enumerate(capitals) if j != i], 3)
        gold = rng.randrange(4)
        choices = wrong[:gold] + [capitals[i]] + wrong[gold:]
        return {"context": f"the capital of {countries[i]} is", "choices": choices, "gold": gold}

    def gen(i):
        return {"prompt": f"the capital of {countries[i]} is", "answers": [capitals[i]]}

    order = list(range(a.pairs))
    # each country twice, with other distractors and the right one at another place
    write_jsonl(os.path.join(a.out, "capitals_mc.jsonl"), [mc(i) for i in order] + [mc(i) for i in order])
    write_jsonl(os.path.join(a.out, "capitals_mc.train.jsonl"), [mc(i) for i in rng.sample(order, 8)])
    write_jsonl(os.path.join(a.out, "capitals_gen.jsonl"), [gen(i) for i in order])
    write_jsonl(os.path.join(a.out, "capitals_gen.train.jsonl"), [gen(i) for i in rng.sample(order, 8)])
    with open(os.path.join(a.out, "capitals_gen.template.json"), "w", encoding="utf-8") as f:
        json.dump({"template": "{prompt} {answer} .", "separator": "\n", "stop": [".", "\n"]}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
