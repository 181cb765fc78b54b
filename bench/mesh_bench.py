#!/usr/bin/env python3
"""Step time and communication volume of glam training on several meshes.

Runs `glam train` on glam-tiny (or --config) for a few steps at each mesh, one
thread per rank, and prints per mesh: tokens/s, step time, and the bytes every
rank together sent through MPI per step, each beside the minimum the algorithm
needs (the ratio shows the overhead):
  alltoallv  each kept routing choice whose expert lives on another data rank,
             moved 4 times (dispatch and combine, forward and backward), once per
             model rank (every model rank exchanges its copy of the tokens):
             4 * kept * (D-1)/D * M * 4 bytes * Mm   (balanced placement)
  data ar    one copy of the gradient of every parameter replicated over the
             data axis (everything but the experts) per rank: D * P_repl * 4 bytes
  model ar   tensor-parallel activations: per rank 4 bytes * M * (T*(2 + 4L) +
             2*rows_moe) minus the MoE layers' T*2 each, plus 3T floats of
             softmax statistics; only when Mm > 1
usage: bench/mesh_bench.py [--build build] [--steps 6] [--meshes 1x1,2x1,1x2,2x2,4x1]
"""
import argparse, json, os, re, subprocess, sys, time

def config_values(path):
    vals, section = {}, ""
    for line in open(path):
        line = line.split("#")[0].strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            vals[f"{section}.{k}"] = v
    return vals

def run(build, cfg, mesh, steps, run_dir):
    d, m = (int(x) for x in mesh.split("x"))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(d * m),
           "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS",
           f"{build}/glam", "train", "--config", cfg, "--run-dir", run_dir, "--mesh", mesh,
           "--train.steps", str(steps), "--train.log_every", str(steps), "--overwrite"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"mesh {mesh} failed:\n{out.stdout}\n{out.stderr}")
    comm = re.search(r"alltoallv ([\d.]+) MB; allreduce over data ([\d.]+) MB, over model ([\d.]+) MB", out.stdout)
    metrics = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return d, m, [float(x) * 1e6 for x in comm.groups()], metrics

def minimums(v, d, m, metrics):
    M, L, E = int(v["model.d_model"]), int(v["model.n_layers"]), int(v["model.n_experts"])
    H, A, V = int(v["model.d_ff"]), int(v["model.n_heads"]) * int(v["model.d_head"]), int(v["model.vocab_size"])
    T_global = int(v["train.batch_rows"]) * int(v["model.seq_len"])
    n_moe = (L + 1) // 2 if E > 0 else 0
    kept = sum(sum(sum(l) for l in r["load_after"]) for r in metrics) / len(metrics)
    a2a = 4 * kept * (d - 1) / d * M * 4 * m
    p_repl = V * M + L * (4 * M * A + A // int(v["model.d_head"]) * 32 + 2 * M) + (L - n_moe) * 3 * M * H \
        + n_moe * M * E + M
    data_ar = d * p_repl * 4 if d > 1 else 0
    T = T_global / d
    model_ar = 0
    if m > 1:
        per_rank = 4 * M * (T * (2 + 4 * L) - 2 * T * n_moe + 2 * kept / d) + 4 * 3 * T
        model_ar = per_rank * d * m
    return a2a, data_ar, model_ar

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", default="input/glam-tiny.cfg")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--meshes", default="1x1,2x1,1x2,2x2,4x1")
    a = ap.parse_args()
    v = config_values(a.config)
    print(f"# {a.config}, {a.steps} steps per mesh, 1 thread per rank, {os.cpu_count()} cores")
    print(f"{'mesh':>5} {'ranks':>5} {'tok/s':>8} {'step s':>7} | {'a2a MB':>8} {'min':>8} {'ratio':>5} | "
          f"{'data ar MB':>10} {'min':>8} {'ratio':>5} | {'model ar MB':>11} {'min':>8} {'ratio':>5}")
    for mesh in a.meshes.split(","):
        d, m, (a2a, dar, mar), metrics = run(a.build, a.config, mesh, a.steps, f"runs/bench-mesh-{mesh}")
        steady = metrics[1:] or metrics
        tps = sum(r["tokens_per_s"] for r in steady) / len(steady)
        step_s = int(v["train.batch_rows"]) * int(v["model.seq_len"]) / tps
        mins = minimums(v, d, m, metrics)
        ratio = lambda x, y: f"{x / y:5.2f}" if y else "    -"
        print(f"{mesh:>5} {d * m:>5} {tps:8.0f} {step_s:7.3f} | {a2a / 1e6:8.2f} {mins[0] / 1e6:8.2f} {ratio(a2a, mins[0])} | "
              f"{dar / 1e6:10.2f} {mins[1] / 1e6:8.2f} {ratio(dar, mins[1])} | {mar / 1e6:11.2f} {mins[2] / 1e6:8.2f} "
              f"{ratio(mar, mins[2])}")

if __name__ == "__main__":
    main()
