#!/usr/bin/env python3
"""The performance model of `glam plan` against what this machine measures.

For each mesh, runs `glam train` on glam-tiny (one thread per rank) for a few steps,
then `glam plan --json` on the same config and mesh with this machine's measured
description (no --cluster) and the run's kept-choice fraction, and prints
predicted beside measured:
  step s      mean over steps 2..N of tokens_per_step / tokens_per_s (metrics.jsonl)
  alone s     the step on this machine without other jobs, from CPU time: the CPU
              seconds of a run of 2+N steps minus those of a run of 2 steps, per step
              and rank, times the ranks per core when there are more ranks than
              cores. On a machine shared with other jobs the wall clock measures the
              other jobs too; this does not (Open MPI yields a waiting rank's core
              when oversubscribed)
  mpi s       time inside MPI per step on rank 0 (phase report) vs the predicted
              communication (all-to-all + all-reduces + latency)
  bytes       all-to-all, data and model all-reduce per step, all ranks together
usage: bench/plan_check.py [--build build] [--steps 8] [--meshes 1x1,2x1,1x2,2x2,4x1]
                           [--config input/glam-tiny.cfg] [extra glam train args...]
(make plan-check). Results are recorded in docs/PLAN.md.
"""
import argparse, json, os, re, resource, subprocess, sys


def run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train(a, mesh, steps, run_dir, env, extra):
    d, m = (int(x) for x in mesh.split("x"))
    before = cpu_seconds()
    out = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(d * m), "-x", "OMP_NUM_THREADS",
               "-x", "OPENBLAS_NUM_THREADS", f"{a.build}/glam", "train", "--config", a.config, "--run-dir", run_dir,
               "--mesh", mesh, "--train.steps", str(steps), "--train.log_every", str(steps), "--overwrite"]
              + extra, env)
    return out, cpu_seconds() - before


def measure(a, mesh, env, extra):
    d, m = (int(x) for x in mesh.split("x"))
    run_dir = f"runs/plan-check-{mesh}"
    _, cpu_short = train(a, mesh, 2, run_dir, env, extra)
    out, cpu_long = train(a, mesh, 2 + a.steps, run_dir, env, extra)
    comm = re.search(r"alltoallv ([\d.]+) MB; allreduce over data ([\d.]+) MB, over model ([\d.]+) MB", out)
    mpi = re.search(r"^\s*mpi\s+([\d.]+) s", out, re.M)
    done = re.search(r"# done: step (\d+)", out)
    records = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    steps = [r for r in records if "tokens_per_s" in r]
    steady = steps[1:] or steps
    kept = 1.0 - sum(r["dropped_frac"] for r in steps) / len(steps)
    return {"tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
            "mb": [float(x) for x in comm.groups()], "mpi_s": float(mpi.group(1)) / int(done.group(1)),
            "kept": kept,
            "alone_s": (cpu_long - cpu_short) / (a.steps * d * m) * max(1.0, d * m / os.cpu_count())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", default="input/glam-tiny.cfg")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--meshes", default="1x1,2x1,1x2,2x2,4x1")
    a, extra = ap.parse_known_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    print(f"# {a.config}, {a.steps} steps per mesh, 1 thread per rank, {os.cpu_count()} cores; "
          "predicted by glam plan with this machine measured")
    print(f"# load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'mesh':>5} {'ranks':>5} | {'step s':>7} {'alone s':>7} {'pred':>7} {'ratio':>5} | {'mpi s':>6} {'pred':>6} | "
          f"{'a2a MB':>7} {'pred':>7} | {'data MB':>7} {'pred':>7} | {'model MB':>8} {'pred':>8} | "
          f"{'MFU':>5} {'pred':>5}")
    for mesh in a.meshes.split(","):
        got = measure(a, mesh, env, extra)
        plan = json.loads(run([f"{a.build}/glam", "plan", "--config", a.config, "--mesh", mesh, "--json",
                               "--kept-fraction", f"{got['kept']:.6f}"] + extra, env))
        p, ranks = plan["predicted"], plan["ranks"]
        step = plan["tokens_per_step"] / got["tokens_per_s"]
        pred_comm = p["alltoall_s"] + p["allreduce_data_s"] + p["allreduce_model_s"] + p["latency_s"]
        pmb = [plan["comm"][k] * ranks / 1e6 for k in ("alltoall_bytes", "allreduce_data_bytes", "allreduce_model_bytes")]
        # MFU of the run against the same peak the plan used: the measured rate over the predicted one
        mfu = p["mfu"] * p["step_s"] / step
        print(f"{mesh:>5} {ranks:>5} | {step:7.3f} {got['alone_s']:7.3f} {p['step_s']:7.3f} {got['alone_s'] / p['step_s']:5.2f} | "
              f"{got['mpi_s']:6.3f} {pred_comm:6.3f} | {got['mb'][0]:7.2f} {pmb[0]:7.2f} | "
              f"{got['mb'][1]:7.2f} {pmb[1]:7.2f} | {got['mb'][2]:8.2f} {pmb[2]:8.2f} | "
              f"{100 * mfu:4.1f}% {100 * p['mfu']:4.1f}%")
    print(f"# load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          "ratio = alone s / predicted; MFU of the run from its wall-clock step")


if __name__ == "__main__":
    main()
