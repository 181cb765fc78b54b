#!/usr/bin/env python3
"""glam plan's memory per rank against a real run: trains glam-tiny (the demo's
shape, 8 rows of 256 tokens) for 2 steps on one rank, takes the process' peak
resident set size, and checks that it lies between the plan's total and 1.3 times
it: the plan must not count buffers the run never holds, nor miss a large one
(what it leaves out: libraries, MPI, routing tables, small temporaries).
usage: memory_vs_run.py GLAM RUN_DIR <glam train config args...>
"""
import json, os, resource, subprocess, sys


def main():
    glam, run_dir, cfg = sys.argv[1], sys.argv[2], sys.argv[3:]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([glam, "train", "--run-dir", run_dir, "--overwrite", "--train.steps", "2"] + cfg,
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"FAILED: glam train exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    p = subprocess.run([glam, "plan", "--json", "--device-memory", "1GiB"] + cfg, capture_output=True, text=True,
                       env=env)
    if p.returncode != 0:
        sys.exit(f"FAILED: glam plan exited {p.returncode}\n{p.stderr}")
    mem = json.loads(p.stdout)["memory"]
    ratio = rss / mem["total"]
    mib = 1 << 20
    print("planned: " + ", ".join(f"{k} {v / mib:.1f} MiB" for k, v in mem.items() if k not in ("device", "fits")))
    print(f"peak resident {rss / mib:.1f} MiB = {ratio:.3f} x planned total (allowed 1.0 to 1.3)")
    if not 1.0 <= ratio <= 1.3:
        sys.exit("FAILED: the plan's memory does not describe the run")


if __name__ == "__main__":
    main()
