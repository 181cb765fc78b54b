#!/usr/bin/env python3
"""glam plan against a real run: trains a small config for a few steps on a D x M
mesh under mpirun, then asks `glam plan --json` about the same config and mesh and
compares, for all ranks together per step:
  n_params, n_act_params   the "# model:" line of glam train       exactly
  all-reduce over data     the "# communication" line             to its print precision
  all-reduce over model    (given the run's kept-choice fraction)  within 1%
  all-to-all               (routing imbalance moves a few rows)    within 5%
The run's kept fraction (1 - mean dropped_frac of metrics.jsonl) is passed to the
plan with --kept-fraction, since the plan cannot know how the router will drop.
usage: plan_vs_run.py --glam GLAM --mesh DxM --run-dir DIR [--mpirun ...] -- <config args>
"""
import argparse, json, os, re, shlex, subprocess, sys


def run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAILED ({out.returncode}): {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--glam", required=True)
    ap.add_argument("--mpirun", default="mpirun --allow-run-as-root --oversubscribe")
    ap.add_argument("--mesh", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("config_args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cfg = [x for x in a.config_args if x != "--"]
    d, m = (int(x) for x in a.mesh.split("x"))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    train = shlex.split(a.mpirun) + ["-np", str(d * m), "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS",
                                     a.glam, "train", "--run-dir", a.run_dir, "--mesh", a.mesh, "--overwrite"] + cfg
    out = run(train, env)
    model = re.search(r"# model: (\d+) parameters, (\d+) activated", out)
    comm = re.search(r"alltoallv ([\d.]+) MB; allreduce over data ([\d.]+) MB, over model ([\d.]+) MB.*"
                     r"reduce-scatter over data ([\d.]+) MB, all-gather over data ([\d.]+) MB", out)
    if not model or not comm:
        sys.exit(f"FAILED: glam train printed no model or communication line:\n{out}")
    records = [json.loads(l) for l in open(os.path.join(a.run_dir, "metrics.jsonl"))]
    steps = [r for r in records if "dropped_frac" in r]  # validation records have no routing
    kept = 1.0 - sum(r["dropped_frac"] for r in steps) / len(steps)

    plan = json.loads(run([a.glam, "plan", "--mesh", a.mesh, "--json", "--kept-fraction", f"{kept:.12f}"] + cfg, env))
    ranks = plan["ranks"]
    measured = {"n_params": int(model.group(1)), "n_act_params": int(model.group(2)),
                "alltoall": float(comm.group(1)), "allreduce_data": float(comm.group(2)),
                "allreduce_model": float(comm.group(3)), "reduce_scatter": float(comm.group(4)),
                "allgather": float(comm.group(5))}
    predicted = {"n_params": plan["n_params"], "n_act_params": plan["n_act_params"]}
    for k in ("alltoall", "allreduce_data", "allreduce_model", "reduce_scatter"):
        predicted[k] = plan["comm"][k + "_bytes"] * ranks / 1e6  # MB per step, all ranks
    # the plan counts data rank 0's rows (the most); ranks with fewer rows send less
    predicted["allgather"] = plan["comm"]["allgather_bytes"] * ranks / 1e6
    # (relative tolerance, absolute in MB: the train line prints 3 decimals)
    tolerance = {"n_params": (0, 0), "n_act_params": (0, 0), "allreduce_data": (0, 0.0006),
                 "allreduce_model": (0.01, 0.0006), "alltoall": (0.05, 0.0006),
                 "reduce_scatter": (0, 0.0006), "allgather": (0.01, 0.0006)}
    print(f"mesh {a.mesh}, kept fraction {kept:.4f}")
    print(f"{'quantity':>16} {'plan':>16} {'measured':>16} {'tolerance':>16}")
    failed = []
    for k, (rel, ab) in tolerance.items():
        p, got = predicted[k], measured[k]
        ok = abs(p - got) <= rel * abs(p) + ab
        print(f"{k:>16} {p:16.6f} {got:16.6f} {f'{rel:.0%} + {ab}':>16} {'ok' if ok else 'MISMATCH'}")
        if not ok:
            failed.append(k)
    for k in ("alltoall", "allreduce_data", "allreduce_model"):  # both zero or both not
        if (predicted[k] > 0) != (measured[k] > 0):
            failed.append(f"{k} zero on one side only")
    if failed:
        sys.exit(f"FAILED: {', '.join(failed)}")
    print("plan matches the run")


if __name__ == "__main__":
    main()
