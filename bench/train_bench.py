#!/usr/bin/env python3
"""Training speed of glam against its PyTorch peer (bench/torch_glam.py), timed in
the same run on the same cores, with model-FLOPs utilisation against the
machine's measured GEMM rate in the same precision (build/gemm_rate).

For every config (glam-tiny and the larger glam-small-cpu by default) and every
GEMM precision (--precisions fp32,bf16) it trains a few steps with
  glam  1 rank x N threads         (mesh 1x1, OMP/OpenBLAS threads = N)
  glam  N ranks x 1 thread         (mesh Nx1: data and experts over N ranks)
  torch 1 process x N threads      (torch.set_num_threads(N)), same batches
every one with OMP_WAIT_POLICY=passive (--omp-wait-policy),
where N = --cores, drops the first --warmup steps and reports tokens/s, the best
glam setting over torch of the same precision, and MFU:
  model FLOPs per token = 6 * activated parameters (matmul weights: the tied
  output layer, attention, GEGLU, two experts, router) + 12 * L * heads * d_head * S
  (attention scores and values over the full S x S square, as both codes compute it)
  MFU = tokens/s * FLOPs per token / GEMM rate (the best square GEMM of that
  precision on the N cores: 1 process x N threads or N processes x 1 thread at once).
fp32 is glam's reference precision and torch as written; bf16 is glam with
`[train] cpu_precision = bf16` (oneDNN) and torch under torch.autocast(bfloat16).
It also checks that the peer is the same model: equal parameter counts and the
same loss at step 1 (both start from glam's initialiser on the same batch).

usage: bench/train_bench.py [--build build] [--configs input/glam-tiny.cfg,bench/glam-small-cpu.cfg]
       [--precisions fp32,bf16] [--steps 12] [--warmup 4] [--cores 2] [--rounds 1]
       [--corpus data/demo/corpus.h5 --tokenizer data/demo/spm.model] [--json OUT]
"""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from glam_config import count_params, read_config  # noqa: E402


def fail(msg):
    sys.exit(f"train_bench: error: {msg}")


def gemm_rate(build, cores, precision="fp32"):
    """The machine's GEMM rate in `precision` on `cores` cores: the better of one
    process with `cores` threads and `cores` single-threaded processes run at once
    (their rates summed), each the best over square sizes 256..2048."""
    cmd = [f"{build}/gemm_rate", "--sizes", "256,512,1024,2048", "--reps", "5", "--precision", precision]

    def launch(threads):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def rates(proc):
        out, err = proc.communicate()
        if proc.returncode != 0:
            fail(f"{build}/gemm_rate failed (build it: cmake --build {build} --target gemm_rate):\n{err}")
        return {json.loads(l)["n"]: json.loads(l)["gflops"] * 1e9 for l in out.splitlines()}

    threaded = max(rates(launch(cores)).values())
    procs = [launch(1) for _ in range(cores)]
    per_proc = [rates(p) for p in procs]
    together = max(sum(r[n] for r in per_proc) for n in per_proc[0])
    return max(threaded, together), threaded, together


def flops_per_token(c):
    attn = 12 * c["model.n_layers"] * c["model.n_heads"] * c["model.d_head"] * c["model.seq_len"]
    return 6 * count_params(c, activated=True) + attn


def steady_rate(per_step, warmup):
    """tokens/s over the steps after the warm-up: total tokens / total time."""
    timed = per_step[warmup:]
    return len(timed) / sum(1.0 / r for r in timed)


def run_glam(a, cfg, ranks, threads, extra, precision):
    run_dir = f"runs/bench-train-{os.path.basename(cfg)}-{ranks}x{threads}-{precision}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY=a.omp_wait_policy)
    # mpirun binds each rank to one core unless told otherwise: threads need the room
    bind = ["--bind-to", "none"] if threads > 1 else []
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + bind + [
           "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS", "-x", "OMP_WAIT_POLICY",
           f"{a.build}/glam", "train", "--config", cfg, "--run-dir", run_dir, "--mesh", f"{ranks}x1",
           "--train.steps", str(a.steps), "--train.log_every", str(a.steps), "--checkpoint.keep", "1",
           "--train.cpu_precision", precision, "--overwrite"] + extra
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"glam on {ranks} rank(s) x {threads} thread(s) failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    n_params = int(re.search(r"# model: (\d+) parameters", out.stdout).group(1))
    metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {"tokens_per_s": steady_rate([m["tokens_per_s"] for m in metrics], a.warmup),
            "params": n_params, "loss1": metrics[0]["loss"]}


def run_torch(a, cfg, threads, corpus, precision):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY=a.omp_wait_policy)
    cmd = [sys.executable, os.path.join(HERE, "torch_glam.py"), "--config", cfg, "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--threads", str(threads), "--precision", precision] + \
        (["--corpus", corpus] if corpus else [])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"the PyTorch peer failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.splitlines()[-1])
    return {"tokens_per_s": r["tokens_per_s"], "params": r["params"], "loss1": r["losses"][0]["loss"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--configs", default="input/glam-tiny.cfg,bench/glam-small-cpu.cfg")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--corpus", default="data/demo/corpus.h5",
                    help="one corpus .h5 both codes read the same rows from (default: the demo corpus in "
                         "one file, from `make corpus`)")
    ap.add_argument("--tokenizer", default="data/demo/spm.model")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the fastest of each counts")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="GEMM operand precisions to run, each for glam ([train] cpu_precision) and torch "
                         "(bf16: torch.autocast); MFU is against the GEMM rate of the same precision")
    ap.add_argument("--omp-wait-policy", default="passive", choices=["passive", "active"],
                    help="OMP_WAIT_POLICY of every run, glam and torch alike: idle OpenMP threads "
                         "sleep instead of spinning against OpenBLAS's threads on the same cores")
    a = ap.parse_args()
    if a.steps <= a.warmup or a.warmup < 0 or a.rounds < 1 or a.cores < 1:
        fail("need --steps > --warmup >= 0, --rounds >= 1 and --cores >= 1")
    for path in (a.corpus, a.tokenizer):
        if not os.path.isfile(path):
            fail(f"{path} not found (run `make corpus`, or pass --corpus FILE.h5 --tokenizer FILE.model)")
    extra = ["--data.corpus", a.corpus, "--data.tokenizer", a.tokenizer]
    precisions = a.precisions.split(",")
    for prec in precisions:
        if prec not in ("fp32", "bf16"):
            fail(f"--precisions takes fp32 and/or bf16, got '{prec}'")
    rates = {}
    for prec in precisions:
        rates[prec], threaded, together = gemm_rate(a.build, a.cores, prec)
        print(f"# {a.cores} cores; {prec} GEMM (cpu::gemm: {'OpenBLAS' if prec == 'fp32' else 'oneDNN'}) "
              f"{threaded / 1e9:.1f} GFLOP/s in 1 process x {a.cores} threads, "
              f"{together / 1e9:.1f} GFLOP/s in {a.cores} processes x 1 thread")
    print(f"# MFU below is against the better of the two for the run's precision, re-measured after each "
          f"config; {a.steps} steps per run, the first {a.warmup} not timed; best of {a.rounds} interleaved "
          f"round(s); OMP_WAIT_POLICY={a.omp_wait_policy}")
    results = {"cores": a.cores, "gemm_flops": rates, "configs": []}
    for cfg in a.configs.split(","):
        c = read_config(cfg)
        fpt = flops_per_token(c)
        runs = {}
        for _ in range(a.rounds):  # interleaved rounds; each setting keeps its fastest
            for prec in precisions:
                for name, r in ((f"glam 1x{a.cores} {prec}", run_glam(a, cfg, 1, a.cores, extra, prec)),
                                (f"glam {a.cores}x1 {prec}", run_glam(a, cfg, a.cores, 1, extra, prec)),
                                (f"torch 1x{a.cores} {prec}", run_torch(a, cfg, a.cores, a.corpus, prec))):
                    r["precision"] = prec
                    if name not in runs or r["tokens_per_s"] > runs[name]["tokens_per_s"]:
                        runs[name] = r
        for prec in precisions:  # the best of the measurements so far
            rates[prec] = max(rates[prec], gemm_rate(a.build, a.cores, prec)[0])
        print(f"\n## {cfg}: {runs[next(iter(runs))]['params'] / 1e6:.1f}M parameters, "
              f"{count_params(c, True) / 1e6:.2f}M activated, {fpt / 1e6:.1f} MFLOP per token (training)")
        print(f"{'run':>17} {'tok/s':>8} {'GFLOP/s':>8} {'MFU':>6} {'loss@1':>9}")
        for name, r in runs.items():
            print(f"{name:>17} {r['tokens_per_s']:8.0f} {r['tokens_per_s'] * fpt / 1e9:8.1f} "
                  f"{r['tokens_per_s'] * fpt / rates[r['precision']]:6.1%} {r['loss1']:9.4f}")
        same_params = len({r["params"] for r in runs.values()}) == 1
        entry = {"config": cfg, "flops_per_token": fpt, "runs": runs, "same_params": same_params, "ratios": {}}
        best = {}
        for prec in precisions:
            torch_run = runs[f"torch 1x{a.cores} {prec}"]
            best[prec] = max((k for k in runs if k.startswith("glam") and k.endswith(prec)),
                             key=lambda k: runs[k]["tokens_per_s"])
            ratio = runs[best[prec]]["tokens_per_s"] / torch_run["tokens_per_s"]
            gap = abs(runs[best[prec]]["loss1"] - torch_run["loss1"])
            entry["ratios"][f"{prec}/{prec}"] = ratio
            entry[f"loss1_gap_{prec}"] = gap
            print(f"{prec}: best glam ({best[prec]}) / torch {prec}: {ratio:.2f}x; "
                  f"|loss@1 glam - torch| = {gap:.2e}", flush=True)
            # fp32 must agree to rounding. Under torch.autocast a matmul's output is rounded
            # to bf16 too (the logits among them: ~0.05 on the first loss), where glam keeps
            # fp32 sums; the fp32 check above is the one that proves the peer is the same model.
            if gap > (1e-3 if prec == "fp32" else 0.1):
                fail(f"the PyTorch peer is not the same model as glam ({prec}: first loss differs by {gap:.2e})")
        if "fp32" in precisions and "bf16" in precisions:
            cross = runs[best["bf16"]]["tokens_per_s"] / runs[f"torch 1x{a.cores} fp32"]["tokens_per_s"]
            entry["ratios"]["bf16/fp32"] = cross
            print(f"best glam bf16 / torch fp32 (the peer as written, no autocast): {cross:.2f}x")
        print(f"parameters equal: {same_params}")
        results["configs"].append(entry)
        if not same_params:
            fail("the PyTorch peer is not the same model as glam (parameter counts differ)")
    results["gemm_flops"] = rates
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
