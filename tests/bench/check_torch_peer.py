#!/usr/bin/env python3
"""The PyTorch peer (bench/torch_glam.py) is the same model as glam: at a tiny
shape on the tiny test corpus, equal parameter counts and the same loss, aux and
gradient norm at each of 3 steps (glam's initialiser and batches, Adafactor with
factored and full second moments in between).
usage: check_torch_peer.py REPO_ROOT GLAM_BINARY CORPUS TOKENIZER TMP_DIR"""
import json
import os
import re
import subprocess
import sys

root, glam, corpus, tokenizer, tmp = sys.argv[1:6]
shape = {"model.vocab_size": 200, "model.d_model": 32, "model.n_layers": 3, "model.n_heads": 2,
         "model.d_head": 16, "model.d_ff": 48, "model.n_experts": 4, "model.seq_len": 24,
         "model.group_size": 48, "model.capacity_factor": 1.0, "train.batch_rows": 4,
         "train.factored_min_dim": 16, "train.steps": 3}
cfg = os.path.join(root, "input", "glam-tiny.cfg")
run_dir = os.path.join(tmp, "peer-run")
cmd = [glam, "train", "--config", cfg, "--run-dir", run_dir, "--overwrite", "--data.corpus", corpus,
       "--data.tokenizer", tokenizer, "--train.log_every", "1"]
for k, v in shape.items():
    cmd += [f"--{k}", str(v)]
out = subprocess.run(cmd, capture_output=True, text=True)
assert out.returncode == 0, out.stdout + out.stderr
glam_params = int(re.search(r"# model: (\d+) parameters", out.stdout).group(1))
glam_steps = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]

cmd = [sys.executable, os.path.join(root, "bench", "torch_glam.py"), "--config", cfg, "--steps", "3",
       "--warmup", "1", "--threads", "1", "--corpus", corpus]
for k, v in shape.items():
    cmd += ["--set", f"{k}={v}"]
out = subprocess.run(cmd, capture_output=True, text=True)
assert out.returncode == 0, out.stdout + out.stderr
peer = json.loads(out.stdout.splitlines()[-1])

print(f"parameters: glam {glam_params}, torch {peer['params']}")
assert glam_params == peer["params"] == peer["params_formula"]
worst = 0.0
for g, t in zip(glam_steps, peer["losses"]):
    print(f"step {g['step']}: loss glam {g['loss']:.7f} torch {t['loss']:.7f}; aux {g['aux']:.6f} {t['aux']:.6f}; "
          f"grad norm {g['grad_norm']:.6f} {t['grad_norm']:.6f}")
    for key in ("loss", "aux", "grad_norm"):
        worst = max(worst, abs(g[key] - t[key]) / max(abs(g[key]), 1e-6))
print(f"largest relative difference {worst:.2e} (tolerance 1e-4)")
assert len(glam_steps) == len(peer["losses"]) == 3
assert worst < 1e-4
