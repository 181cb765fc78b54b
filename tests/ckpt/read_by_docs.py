#!/usr/bin/env python3
"""Reads a glam checkpoint with h5py and numpy alone, following docs/CHECKPOINT.md:
the root attributes, the config, every dataset in the shape the config implies and
its checksum recomputed in numpy (uint64 wraparound). Exits 1 naming what differs.
This is the "someone with h5py can read it without glam" test.

usage: read_by_docs.py CKPT [--expect-step N] [--expect-problem TEXT]
  --expect-problem: the file is known to be damaged; pass only when a problem
  mentioning TEXT is found (the reader must notice what glam-ckpt verify notices)."""
import argparse
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_doc  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--expect-step", type=int)
    ap.add_argument("--expect-problem")
    a = ap.parse_args()
    problems = []
    with h5py.File(a.checkpoint, "r") as f:
        attrs = f.attrs
        fmt = ckpt_doc.attr_str(attrs["format"])
        if fmt != ckpt_doc.FORMAT:
            problems.append(f"format is {fmt!r}")
        if int(attrs["version"]) != ckpt_doc.VERSION:
            problems.append(f"version is {attrs['version']}")
        for name in ckpt_doc.INT_ATTRS:
            if name not in attrs or not np.issubdtype(np.asarray(attrs[name]).dtype, np.integer):
                problems.append(f"root attribute {name} missing or not an integer")
        if np.asarray(attrs["seed"]).dtype != np.uint64:
            problems.append(f"seed is {np.asarray(attrs['seed']).dtype}, documented uint64")
        if np.asarray(attrs["version"]).dtype != np.int64:
            problems.append(f"version is {np.asarray(attrs['version']).dtype}, documented int64")
        mesh = ckpt_doc.attr_str(attrs["mesh"])
        d, _, m = mesh.partition("x")
        if not (d.isdigit() and m.isdigit()):
            problems.append(f"mesh {mesh!r} is not DxM")
        step = int(attrs["step"])
        if a.expect_step is not None and step != a.expect_step:
            problems.append(f"step {step}, expected {a.expect_step}")
        cfg = ckpt_doc.parse_config(ckpt_doc.attr_str(attrs["config"]))
        batch_rows = int(cfg.get("train.batch_rows", 8))
        if int(attrs["data_next_row"]) != step * batch_rows:
            problems.append(f"data_next_row {int(attrs['data_next_row'])} != step * train.batch_rows")
        if int(attrs["updates"]) + int(attrs["skipped_total"]) != step:
            problems.append("updates + skipped_total != step")

        shapes = ckpt_doc.dataset_shapes(cfg)
        present = set()
        f.visititems(lambda name, obj: present.add("/" + name) if isinstance(obj, h5py.Dataset) else None)
        for path in sorted(present - set(shapes)):
            problems.append(f"{path}: not implied by the config")
        n_params = n_opt = 0
        for path, shape in shapes.items():
            if path not in present:
                problems.append(f"{path}: missing")
                continue
            ds = f[path]
            if ds.shape != tuple(shape):
                problems.append(f"{path}: shape {ds.shape}, config implies {tuple(shape)}")
                continue
            if ds.dtype != np.dtype("<f4"):
                problems.append(f"{path}: dtype {ds.dtype}, documented float32 little endian")
                continue
            data = ds[...]
            stored = ds.attrs.get("checksum")
            if stored is None or np.asarray(stored).dtype != np.uint64:
                problems.append(f"{path}: checksum attribute missing or not uint64")
            elif int(stored) != ckpt_doc.checksum(data):
                problems.append(f"{path}: checksum mismatch")
            if path.startswith("/params/"):
                n_params += data.size
            else:
                n_opt += data.size
                if not np.all(np.isfinite(data)) or np.any(data < 0):
                    problems.append(f"{path}: second-moment statistics must be finite and >= 0")
    for p in problems:
        print("PROBLEM:", p)
    if a.expect_problem is not None:
        found = any(a.expect_problem in p for p in problems)
        print("the expected problem was", "found" if found else "NOT found:", a.expect_problem)
        sys.exit(0 if found else 1)
    if problems:
        sys.exit(1)
    print(f"read by the document: step {step}, mesh {mesh}, {len(shapes)} datasets, "
          f"{n_params} parameters, {n_opt} optimizer values, all checksums match")


if __name__ == "__main__":
    main()
