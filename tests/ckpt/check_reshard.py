#!/usr/bin/env python3
"""Runs `glam-ckpt reshard` to a DxM mesh and reassembles the rank files: every
dataset, put together from the shards at their `offset` attributes, must equal the
checkpoint's exactly, every element must be covered, replicated shards must agree,
each shard's `shard_checksum` must be its part of the documented checksum, and the
root attributes must be the checkpoint's with mesh = DxM and rank = R.

usage: check_reshard.py GLAM_CKPT CKPT DIR DxM"""
import os
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_doc  # noqa: E402


def main():
    glam_ckpt, ckpt, out_dir, mesh = sys.argv[1:5]
    d, m = (int(x) for x in mesh.split("x"))
    cmd = [glam_ckpt, "reshard", ckpt, "--mesh", mesh, "--output-dir", out_dir, "--overwrite", "--chunk-bytes", "200"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    problems = []
    with h5py.File(ckpt, "r") as ck:
        root = {k: ck.attrs[k] for k in ck.attrs}
        shapes = ckpt_doc.dataset_shapes(ckpt_doc.parse_config(ckpt_doc.attr_str(root["config"])))
        originals = {p: ck[p][...] for p in shapes}
    rebuilt = {p: np.full(s, np.nan, dtype="<f4") for p, s in shapes.items()}
    covered = {p: np.zeros(s, dtype=np.int32) for p, s in shapes.items()}
    for r in range(d * m):
        path = os.path.join(out_dir, f"rank_{r}.h5")
        with h5py.File(path, "r") as f:
            for k, v in root.items():
                if k == "mesh":
                    continue
                if k not in f.attrs or not np.array_equal(np.asarray(f.attrs[k]), np.asarray(v)):
                    problems.append(f"rank {r}: root attribute {k} not copied")
            if ckpt_doc.attr_str(f.attrs["mesh"]) != mesh or int(f.attrs["rank"]) != r:
                problems.append(f"rank {r}: mesh/rank attributes {f.attrs['mesh']}/{f.attrs['rank']}")
            present = set()
            f.visititems(lambda n, o: present.add("/" + n) if isinstance(o, h5py.Dataset) else None)
            if present != set(shapes):
                problems.append(f"rank {r}: datasets differ: {sorted(present ^ set(shapes))}")
                continue
            for p, shape in shapes.items():
                ds = f[p]
                g = tuple(int(x) for x in ds.attrs["global_shape"])
                off = tuple(int(x) for x in ds.attrs["offset"])
                if g != tuple(shape):
                    problems.append(f"rank {r}: {p} global_shape {g}")
                    continue
                local = ds[...]
                sl = tuple(slice(o, o + n) for o, n in zip(off, local.shape))
                region = rebuilt[p][sl]
                seen = covered[p][sl] > 0
                if np.any(seen & (region.view("<u4") != local.view("<u4"))):
                    problems.append(f"rank {r}: {p} replica differs from another rank's copy")
                rebuilt[p][sl] = local
                covered[p][sl] += 1
                coords = np.indices(local.shape).reshape(len(shape), -1) + np.array(off).reshape(-1, 1)
                idx = np.ravel_multi_index(coords, shape)
                if int(ds.attrs["shard_checksum"]) != ckpt_doc.checksum_indexed(local, idx):
                    problems.append(f"rank {r}: {p} shard_checksum")
    for p, orig in originals.items():
        if np.any(covered[p] == 0):
            problems.append(f"{p}: {int(np.sum(covered[p] == 0))} elements on no rank")
        elif not np.array_equal(rebuilt[p].view("<u4"), orig.view("<u4")):
            problems.append(f"{p}: reassembled tensor differs from the checkpoint")
    for p in problems[:40]:
        print("PROBLEM:", p)
    if len(problems) > 40:
        print(f"... and {len(problems) - 40} more")
    if problems:
        sys.exit(1)
    print(f"reshard {mesh}: {d * m} rank files reassemble to the {len(shapes)} datasets exactly")


if __name__ == "__main__":
    main()
