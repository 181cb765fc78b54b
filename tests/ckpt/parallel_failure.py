#!/usr/bin/env python3
"""glam-ckpt verify / export / reshard on 2 ranks of mpirun when something fails:
every rank exits with status 2 (none hangs: 120 s at most), the error is printed
once and names the dataset or file, and no output is left that could pass for a
good one (neither the output nor its temporary name).

usage: parallel_failure.py GLAM_CKPT MPIEXEC CKPT WORK --case CASE
  flipped      4 bytes of /params/embedding flipped (damage.py): its checksum fails
               on the sum of blocks read by both ranks
  unreadable   /params/embedding stored in gzip chunks, one of them damaged: only
               the rank reading that block sees the failure
  obstacle     reshard --mesh 2x1 where rank_1.h5.tmp is a directory: only rank 1,
               which creates rank file 1, fails"""
import argparse
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = "/params/embedding"
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


def make_unreadable(src, out):
    """A copy of src with DATASET in gzip chunks of 500 rows and the last chunk damaged."""
    shutil.copyfile(src, out)
    with h5py.File(out, "r+") as f:
        data, attrs = f[DATASET][...], dict(f[DATASET].attrs)
        del f[DATASET]
        ds = f.create_dataset(DATASET, data=data, chunks=(500,) + data.shape[1:], compression="gzip")
        for k, v in attrs.items():
            ds.attrs[k] = v
        info = ds.id.get_chunk_info(ds.id.get_num_chunks() - 1)
    with open(out, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes(64))


def run_on_two_ranks(a, args):
    """Runs glam-ckpt on 2 ranks, each rank reporting its own exit status."""
    report = '"$0" "$@"; echo "glam-ckpt exit status $?"'
    cmd = [a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", "2", "/bin/sh", "-c", report, a.glam_ckpt]
    cmd += args + ["--memory-limit", "4MiB"]
    print("+", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    statuses = [line.split()[-1] for line in p.stdout.splitlines() if line.startswith("glam-ckpt exit status")]
    what = " ".join(args)
    check(statuses == ["2", "2"], f"{what}: exit statuses {statuses}, expected 2 on both ranks\n{p.stderr}")
    errors = [line for line in p.stderr.splitlines() if line.startswith("glam-ckpt: error")]
    check(len(errors) == 1, f"{what}: {len(errors)} error lines, expected one:\n{p.stderr}")
    print(p.stdout + "".join(e + "\n" for e in errors), end="")
    return p.stdout, "\n".join(errors)


def check_nothing_in(directory, allowed=()):
    left = sorted(n for n in os.listdir(directory) if n not in allowed)
    check(not left, f"{directory}: left {left} behind")


def failing_commands(a, ckpt, work, expect_verify, expect_error):
    out, err = run_on_two_ranks(a, ["verify", ckpt])
    check(expect_verify in out, f"verify: no '{expect_verify}' in its output")
    for fmt in ("hdf5", "safetensors"):
        d = os.path.join(work, "export_" + fmt)
        os.makedirs(d)
        out, err = run_on_two_ranks(a, ["export", ckpt, "--output", os.path.join(d, "w." + fmt), "--format", fmt])
        check(expect_error in err, f"export {fmt}: the error does not say '{expect_error}'")
        check_nothing_in(d)
    d = os.path.join(work, "reshard")
    out, err = run_on_two_ranks(a, ["reshard", ckpt, "--mesh", "2x2", "--output-dir", d])
    check(expect_error in err, f"reshard: the error does not say '{expect_error}'")
    check_nothing_in(d)


def main():
    ap = argparse.ArgumentParser()
    for name in ("glam_ckpt", "mpiexec", "ckpt", "work"):
        ap.add_argument(name)
    ap.add_argument("--case", required=True, choices=["flipped", "unreadable", "obstacle"])
    a = ap.parse_args()
    work = os.path.join(a.work, a.case)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    damaged = os.path.join(work, "damaged.h5")
    if a.case == "flipped":
        subprocess.run([sys.executable, os.path.join(HERE, "damage.py"), a.ckpt, damaged, "flip", DATASET], check=True)
        failing_commands(a, damaged, work, f"CORRUPT: {DATASET} (checksum mismatch)",
                         f"dataset {DATASET} fails its checksum")
    elif a.case == "unreadable":
        make_unreadable(a.ckpt, damaged)
        failing_commands(a, damaged, work, f"CORRUPT: {DATASET} (unreadable)", f"cannot read dataset {DATASET}")
    else:
        d = os.path.join(work, "reshard")
        os.makedirs(os.path.join(d, "rank_1.h5.tmp"))
        out, err = run_on_two_ranks(a, ["reshard", a.ckpt, "--mesh", "2x1", "--output-dir", d])
        check(f"cannot create '{d}/rank_1.h5.tmp' (on rank 1 of 2)" in err, "reshard: the error is not rank 1's")
        check_nothing_in(d, allowed=("rank_1.h5.tmp",))
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        sys.exit(1)
    print(f"{a.case}: every rank exits 2, one message names the cause, no output is left")


if __name__ == "__main__":
    main()
