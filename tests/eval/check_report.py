#!/usr/bin/env python3
"""Checks on the JSON reports of `glam eval` for the eval tests.

  check_report.py score REPORT TASK METRIC (min|max) BOUND   a task's metric against a bound
  check_report.py text REPORT TEXT_FILE                      perplexity and bits per byte agree with nll, tokens, bytes
  check_report.py same REPORT_A REPORT_B [TOL]               the same report: equal strings and counts, scores within TOL (1e-6, relative)
  check_report.py less REPORT_A REPORT_B                     A's text perplexity is below B's
  check_report.py predictions REPORT PREDICTIONS [TASK_DIR]  the per-example lines add up to the report's scores
                                                            (and their prompts end with the task's examples)
"""
import json
import math
import os
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    sys.exit(1)


def task(report, name):
    for t in report["tasks"]:
        if t["task"] == name:
            return t
    fail(f"no task {name} in the report")


def score(path, name, metric, kind, bound):
    value, bound = task(load(path), name)[metric], float(bound)
    ok = value >= bound if kind == "min" else value <= bound
    print(f"{path}: {name} {metric} = {value:.4f} ({'>=' if kind == 'min' else '<='} {bound}) {'ok' if ok else 'FAILED'}")
    if not ok:
        fail(f"{name} {metric} {value} is not {'>=' if kind == 'min' else '<='} {bound}")


def text(path, text_file):
    t = load(path)["text"]
    size = os.path.getsize(text_file)
    if t["bytes"] != size:
        fail(f"bytes {t['bytes']} != file size {size}")
    bpb = t["nll"] / math.log(2) / size
    ppl = math.exp(t["nll"] / t["tokens"])
    print(f"{path}: nll {t['nll']:.4f} nats over {t['tokens']} tokens, {size} bytes: "
          f"perplexity {t['perplexity']:.4f} (recomputed {ppl:.4f}), bits per byte {t['bits_per_byte']:.4f} (recomputed {bpb:.4f})")
    if abs(bpb - t["bits_per_byte"]) > 1e-9 * bpb or abs(ppl - t["perplexity"]) > 1e-9 * ppl:
        fail("perplexity or bits per byte do not follow from nll, tokens and bytes")


def same(a, b, tol):
    worst = [0.0]

    def walk(x, y, where):
        if isinstance(x, dict):
            if set(x) != set(y):
                fail(f"{where}: keys differ: {sorted(x)} vs {sorted(y)}")
            for k in x:
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, list):
            if len(x) != len(y):
                fail(f"{where}: lengths differ")
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) or isinstance(y, float):
            d = abs(x - y) / max(1.0, abs(x))
            worst[0] = max(worst[0], d)
            if d > tol:
                fail(f"{where}: {x} vs {y} (relative difference {d:.2e} > {tol})")
        elif x != y:
            fail(f"{where}: {x!r} vs {y!r}")

    walk(load(a), load(b), "report")
    print(f"{b} equals {a}: largest relative difference {worst[0]:.2e} (tolerance {tol})")


def less(a, b):
    pa, pb = load(a)["text"]["perplexity"], load(b)["text"]["perplexity"]
    print(f"perplexity {pa:.4f} ({a}) < {pb:.4f} ({b})")
    if not pa < pb:
        fail("perplexity did not drop")


def check_prompts(task, mine, tasks_dir, shots):
    """Each line's prompt is the text scored: the demonstrations, then the example's
    own context (or prompt) last."""
    with open(os.path.join(tasks_dir, task + ".jsonl"), encoding="utf-8") as f:
        examples = [json.loads(line) for line in f if line.strip()]
    for p in mine:
        question = examples[p["index"]].get("context", examples[p["index"]].get("prompt"))
        if not isinstance(p.get("prompt"), str) or not p["prompt"].endswith(question):
            fail(f"{task} example {p['index']}: prompt {p.get('prompt')!r} does not end with {question!r}")
        if shots > 0 and len(p["prompt"]) <= len(question):
            fail(f"{task} example {p['index']}: prompt {p['prompt']!r} holds no demonstrations ({shots} shots)")


def predictions(path, pred_path, tasks_dir=None):
    report = load(path)
    with open(pred_path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    for t in report["tasks"]:
        mine = [p for p in lines if p["task"] == t["task"]]
        if [p["index"] for p in mine] != list(range(t["n"])):
            fail(f"{t['task']}: expected lines for examples 0..{t['n'] - 1}")
        if tasks_dir:
            check_prompts(t["task"], mine, tasks_dir, report["shots"])
        if t["kind"] == "multiple_choice":
            for p in mine:
                best = max(range(len(p["scores"])), key=lambda c: (p["scores"][c], -c))
                if p["predicted"] != best or p["correct"] != (best == p["gold"]):
                    fail(f"{t['task']} example {p['index']}: predicted {p['predicted']} is not the best score")
            pairs = [("accuracy", sum(p["correct"] for p in mine) / len(mine))]
        else:
            pairs = [("em", sum(p["em"] for p in mine) / len(mine)), ("f1", sum(p["f1"] for p in mine) / len(mine))]
        for metric, value in pairs:
            if abs(value - t[metric]) > 1e-12:
                fail(f"{t['task']}: {metric} {t[metric]} but the examples give {value}")
        print(f"{pred_path}: {len(mine)} lines of {t['task']} agree with the report")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "score":
        score(*args)
    elif cmd == "text":
        text(*args)
    elif cmd == "same":
        same(args[0], args[1], float(args[2]) if len(args) > 2 else 1e-6)
    elif cmd == "less":
        less(*args)
    elif cmd == "predictions":
        predictions(*args)
    else:
        fail(f"unknown check {cmd}")


if __name__ == "__main__":
    main()
