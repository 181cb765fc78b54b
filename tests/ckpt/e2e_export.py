#!/usr/bin/env python3
"""End to end: the newest checkpoint of a finished `glam train` run, exported as f32
HDF5, holds exactly the run's final weights (RUN_DIR/weights.h5), and `glam generate`
on a copy of the run dir whose weights.h5 is the exported file writes the same text.

usage: e2e_export.py GLAM GLAM_CKPT RUN_DIR WORK_DIR"""
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np


def generated(glam, run_dir):
    out = subprocess.run([glam, "generate", "--run-dir", run_dir, "--prompt", "The", "--max-tokens", "12"],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def main():
    glam, glam_ckpt, run_dir, work = sys.argv[1:5]
    with open(os.path.join(run_dir, "checkpoints", "latest")) as fh:
        ckpt = os.path.join(run_dir, "checkpoints", fh.read().strip())
    copy = os.path.join(work, "run")
    shutil.rmtree(copy, ignore_errors=True)
    os.makedirs(copy)
    for name in ("config.cfg", "tokenizer.model"):
        shutil.copy(os.path.join(run_dir, name), copy)
    exported = os.path.join(copy, "weights.h5")
    subprocess.run([glam_ckpt, "export", ckpt, "--output", exported], check=True)

    problems = []
    with h5py.File(os.path.join(run_dir, "weights.h5"), "r") as a, h5py.File(exported, "r") as b:
        for key in ("format", "version"):
            if a.attrs[key] != b.attrs[key]:
                problems.append(f"root attribute {key}: {a.attrs[key]!r} vs {b.attrs[key]!r}")
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        for n in names:
            if n not in b or not np.array_equal(a[n][...].view("<u4"), b[n][...].view("<u4")):
                problems.append(f"{n}: differs from the run's weights.h5")
    text_run, text_export = generated(glam, run_dir), generated(glam, copy)
    if text_run != text_export:
        problems.append(f"glam generate differs: {text_run!r} vs {text_export!r}")
    for p in problems:
        print("PROBLEM:", p)
    if problems:
        sys.exit(1)
    print(f"{ckpt}: exported weights equal weights.h5 ({len(names)} tensors); glam generate agrees: {text_run}")


if __name__ == "__main__":
    main()
