#!/usr/bin/env python3
"""Runs `glam-ckpt export` and checks the result against the checkpoint read with h5py.

usage: check_export.py GLAM_CKPT CKPT OUT --format hdf5|safetensors --dtype f32|bf16
  hdf5 f32:  /params/... equal the checkpoint's exactly; root attributes format
             glam-weights, version 1, config as stored
  hdf5 bf16: uint16 datasets with attribute dtype=bfloat16, the round-to-nearest-even
             upper halves, within a relative 2^-8 of the float32 values
  safetensors: the documented layout (u64 LE header size, JSON header padded with
             spaces to a multiple of 8, tensors in sorted-name order, contiguous
             offsets), parsed with numpy only (no torch), plus OUT.json"""
import argparse
import json
import os
import struct
import subprocess
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_doc  # noqa: E402

problems = []


def check(cond, what):
    if not cond:
        problems.append(what)
    return cond


def check_values(name, f32, got, bf16):
    """got: float32 array (f32) or uint16 bit patterns (bf16) for the float32 f32."""
    if not bf16:
        check(got.dtype == np.dtype("<f4"), f"{name}: dtype {got.dtype}")
        check(np.array_equal(got.view("<u4"), f32.view("<u4")), f"{name}: values differ from the checkpoint")
        return
    check(got.dtype == np.dtype("<u2"), f"{name}: dtype {got.dtype}, expected uint16 bit patterns")
    check(np.array_equal(got, ckpt_doc.bf16_bits(f32)), f"{name}: not the round-to-nearest-even bf16 bits")
    back = ckpt_doc.bf16_to_f32(got).astype(np.float64)
    ref = f32.astype(np.float64)
    finite = np.isfinite(ref) & (np.abs(ref) >= np.finfo(np.float32).tiny)  # normal numbers: relative bound
    err = np.abs(back[finite] - ref[finite]) / np.abs(ref[finite])
    check(err.size == 0 or err.max() <= 2.0 ** -8, f"{name}: bf16 relative error {err.max() if err.size else 0}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glam_ckpt")
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--format", required=True)
    ap.add_argument("--dtype", required=True)
    a = ap.parse_args()
    bf16 = a.dtype == "bf16"
    cmd = [a.glam_ckpt, "export", a.checkpoint, "--output", a.out, "--format", a.format, "--dtype", a.dtype,
           "--overwrite", "--chunk-bytes", "1000"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)

    with h5py.File(a.checkpoint, "r") as ck:
        ini = ckpt_doc.attr_str(ck.attrs["config"])
        cfg = ckpt_doc.parse_config(ini)
        params = {name: ck["/params/" + name][...] for name, _ in ckpt_doc.param_shapes(cfg)}

    if a.format == "hdf5":
        with h5py.File(a.out, "r") as w:
            check(ckpt_doc.attr_str(w.attrs["format"]) == "glam-weights", "format attribute")
            check(int(w.attrs["version"]) == 2, "version attribute (2: checksummed)")
            check(ckpt_doc.attr_str(w.attrs["config"]) == ini, "config attribute differs from the checkpoint's")
            present = set()
            w.visititems(lambda n, o: present.add(n) if isinstance(o, h5py.Dataset) else None)
            check(present == {"params/" + n for n in params}, f"datasets {sorted(present)}")
            for name, f32 in params.items():
                ds = w["/params/" + name]
                check(ds.shape == f32.shape, f"{name}: shape {ds.shape}")
                if bf16:
                    check(ckpt_doc.attr_str(ds.attrs.get("dtype", "")) == "bfloat16", f"{name}: dtype attribute")
                else:
                    with h5py.File(a.checkpoint, "r") as ck:
                        want = int(ck["/params/" + name].attrs["checksum"])
                    check(int(ds.attrs.get("checksum", -1)) == want, f"{name}: checksum attribute (the checkpoint's)")
                check_values(name, f32, ds[...], bf16)
    else:
        with open(a.out, "rb") as fh:
            blob = fh.read()
        (n,) = struct.unpack("<Q", blob[:8])
        check(n % 8 == 0, f"header length {n} is not a multiple of 8")
        raw = blob[8 : 8 + n]
        check(raw.rstrip(b" ") == raw.rstrip(), "header padded with something other than spaces")
        header = json.loads(raw.decode("utf-8"))
        buf = blob[8 + n :]
        meta = header.pop("__metadata__")
        check(meta == {"format": "pt", "glam_config": ini}, f"__metadata__ {meta}")
        want = {name.replace("/", "."): f32 for name, f32 in params.items()}
        check(set(header) == set(want), f"tensor names {sorted(header)}")
        at = 0
        for name in sorted(header):
            e = header[name]
            check(e["dtype"] == ("BF16" if bf16 else "F32"), f"{name}: dtype {e['dtype']}")
            begin, end = e["data_offsets"]
            check(begin == at, f"{name}: begins at {begin}, previous tensor ended at {at} (sorted order)")
            at = end
            f32 = want.get(name)
            if f32 is None:
                continue
            check(list(e["shape"]) == list(f32.shape), f"{name}: shape {e['shape']}")
            got = np.frombuffer(buf[begin:end], dtype="<u2" if bf16 else "<f4").reshape(e["shape"])
            check_values(name, f32, got, bf16)
        check(at == len(buf), f"byte buffer holds {len(buf)} bytes, tensors end at {at}")
        with open(a.out + ".json") as fh:
            cj = json.load(fh)
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_head", "d_ff", "n_experts", "group_size",
                    "seq_len"):
            check(cj.get(key) == int(cfg["model." + key]), f"{a.out}.json: {key} = {cj.get(key)}")
        check(cj.get("expert_act") == cfg["model.expert_act"], "config json: expert_act")
        check(cj.get("capacity_factor") == float(cfg["model.capacity_factor"]), "config json: capacity_factor")
        check("[in, out]" in cj.get("tensor_layout", ""), "config json: tensor_layout note")

    for p in problems:
        print("PROBLEM:", p)
    if problems:
        sys.exit(1)
    print(f"export {a.format} {a.dtype}: {len(params)} tensors match the checkpoint")


if __name__ == "__main__":
    main()
