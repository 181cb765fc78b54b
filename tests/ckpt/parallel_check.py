#!/usr/bin/env python3
"""glam-ckpt verify / export / reshard under mpirun with a memory limit: the same
output as one rank without a limit, and the memory bound holds.

usage: parallel_check.py GLAM_CKPT MPIEXEC CKPT TINY_CKPT WORK --command CMD
                         [--ranks 1 2 3] [--memory-limit 4MiB ...]
  CMD: verify | export-hdf5 | export-hdf5-bf16 | export-safetensors | reshard-2x2

The reference is CMD on CKPT with one rank and the default limit (1 GiB). Then for
every limit L and rank count N, `MPIEXEC -np N glam-ckpt CMD CKPT --memory-limit L`
must exit 0 on every rank and
  - write the same bytes as the reference (every output file; verify: the same
    lines), leaving no temporary file;
  - report a peak tensor buffer per rank of at most L (and more than 0);
  - peak at a VmHWM of at most the baseline + L + 4 MiB, where the baseline is the
    VmHWM of the same command with N ranks and limit L on TINY_CKPT (a checkpoint of
    a few hundred KB): the process and its libraries, no tensor worth counting.
    CKPT's tensor data (tens of MB) must be more than 4 times that allowance, so
    the check means something.
Prints each run's wall time, peak buffer and VmHWM."""
import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import time

import h5py

BUFFER_RE = re.compile(r"^# peak tensor buffer per rank: .*\(limit .*; (\d+) of (\d+) bytes\)$", re.M)
SANITIZED = "ASAN_OPTIONS" in os.environ
RESIDENT_RE = re.compile(r"^# peak resident memory per rank \(VmHWM\): .*\((\d+) bytes\)$", re.M)
MIB = 1 << 20


def parse_size(text):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit, scale in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def command_args(command, ckpt, out):
    """The glam-ckpt arguments of `command` on ckpt writing to out, and its output files (relative to out)."""
    if command == "verify":
        return ["verify", ckpt], []
    if command.startswith("export-"):
        fmt = command.split("-")[1]
        dtype = "bf16" if command.endswith("-bf16") else "f32"
        files = ["w." + fmt] + (["w.safetensors.json"] if fmt == "safetensors" else [])
        return ["export", ckpt, "--output", os.path.join(out, files[0]), "--format", fmt, "--dtype", dtype], files
    if command.startswith("reshard-"):
        mesh = command.split("-")[1]
        d, m = (int(x) for x in mesh.split("x"))
        return ["reshard", ckpt, "--mesh", mesh, "--output-dir", out], [f"rank_{r}.h5" for r in range(d * m)]
    sys.exit(f"parallel_check.py: unknown command {command}")


def run(a, ranks, ckpt, out, limit):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    args, files = command_args(a.command, ckpt, out)
    if limit:
        args += ["--memory-limit", limit]
    cmd = [a.glam_ckpt] + args
    if ranks:
        cmd = [a.mpiexec, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    start = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    buf, res = BUFFER_RE.search(p.stdout), RESIDENT_RE.search(p.stdout)
    if not buf or not res:
        sys.exit(f"no memory report in the output of {' '.join(cmd)}:\n{p.stdout}")
    lines = [line for line in p.stdout.splitlines() if not line.startswith("#")]
    return {"cmd": cmd, "files": files, "lines": lines, "seconds": seconds, "peak": int(buf.group(1)),
            "limit": int(buf.group(2)), "hwm": int(res.group(1)), "out": out}


def tensor_bytes(path):
    total = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: total.append(o.size * o.dtype.itemsize) if isinstance(o, h5py.Dataset) else None)
    return sum(total)


def compare(ref, got, problems):
    what = " ".join(got["cmd"])
    if not ref["files"] and got["lines"] != ref["lines"]:  # verify: what it says is its output
        problems.append(f"{what}: prints {got['lines']}, one rank printed {ref['lines']}")
    for name in ref["files"]:
        if not filecmp.cmp(os.path.join(ref["out"], name), os.path.join(got["out"], name), shallow=False):
            problems.append(f"{what}: {name} differs from the one-rank output")
    left = sorted(n for n in os.listdir(got["out"]) if n not in ref["files"])
    if left:
        problems.append(f"{what}: left {left} beside its outputs")


def main():
    global_args = argparse.ArgumentParser()
    for name in ("glam_ckpt", "mpiexec", "ckpt", "tiny_ckpt", "work"):
        global_args.add_argument(name)
    global_args.add_argument("--command", required=True)
    global_args.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    global_args.add_argument("--memory-limit", nargs="+", default=["4MiB"])
    a = global_args.parse_args()
    work = os.path.join(a.work, a.command)
    problems = []
    ref = run(a, 0, a.ckpt, os.path.join(work, "ref"), None)
    data = tensor_bytes(a.ckpt)
    print(f"reference (1 rank, default limit): {ref['seconds']:.2f} s, peak buffer {ref['peak'] / MIB:.2f} MiB, "
          f"VmHWM {ref['hwm'] / MIB:.2f} MiB; {data / MIB:.1f} MiB of tensor data")
    for limit in a.memory_limit:
        allowance = parse_size(limit) + 4 * MIB
        if data < 4 * allowance:
            problems.append(f"{a.ckpt}: {data} bytes of tensors are too few to test a limit of {limit}")
        for n in a.ranks:
            base = run(a, n, a.tiny_ckpt, os.path.join(work, f"base_{n}"), limit)
            got = run(a, n, a.ckpt, os.path.join(work, f"np{n}_{limit}"), limit)
            growth = got["hwm"] - base["hwm"]
            print(f"-np {n} --memory-limit {limit}: {got['seconds']:.2f} s, peak buffer {got['peak']} bytes "
                  f"(limit {got['limit']}), VmHWM {got['hwm'] / MIB:.2f} MiB, {growth / MIB:+.2f} MiB over "
                  f"{base['hwm'] / MIB:.2f} MiB on the tiny checkpoint (allowed {allowance / MIB:.2f})")
            compare(ref, got, problems)
            if got["limit"] != parse_size(limit):
                problems.append(f"-np {n}: reports a limit of {got['limit']} bytes for {limit}")
            if not 0 < got["peak"] <= got["limit"]:
                problems.append(f"-np {n} --memory-limit {limit}: peak tensor buffer {got['peak']} bytes")
            # Under AddressSanitizer (make test-asan sets ASAN_OPTIONS) freed memory waits in
            # its quarantine and every allocation carries shadow and redzones, so the
            # resident size does not measure the tool; the reported peak buffer still does.
            if growth > allowance and not SANITIZED:
                problems.append(f"-np {n} --memory-limit {limit}: VmHWM {growth} bytes over the baseline")
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        sys.exit(1)
    print(f"{a.command}: every rank count and limit gives the one-rank output within the memory bound")


if __name__ == "__main__":
    main()
