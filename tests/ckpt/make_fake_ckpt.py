#!/usr/bin/env python3
"""Writes a glam checkpoint with h5py, exactly as docs/CHECKPOINT.md describes it,
for a tiny MoE config (3 layers: MoE on 0 and 2, GEGLU on 1; factored_min_dim 32
so that both factored and unfactored Adafactor states occur). Random tensors,
plus values that exercise bf16 rounding (ties, NaN-free extremes).

usage: make_fake_ckpt.py OUT [--vlen-strings] [--drop PATH] [--reshape PATH]
                              [--bad-checksum PATH] [--format F] [--version V] [--extra PATH]
The options damage the file in one documented way each, for verify's tests."""
import argparse
import os
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ckpt_doc  # noqa: E402

CONFIG = """[model]
vocab_size = 200
d_model = 32
n_layers = 3
n_heads = 2
d_head = 16
d_ff = 64
n_experts = 4
group_size = 32
capacity_factor = 2
expert_act = relu
second_policy = all
seq_len = 16
aux_loss_weight = 0.01
z_loss_weight = 0.0001

[train]
steps = 7
batch_rows = 4
lr = 0.01
warmup_steps = 10000
decay_pow = 0.8
clip_threshold = 1
min_param_scale = 0.001
factored_min_dim = 32
seed = 1234
log_every = 1
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--vlen-strings", action="store_true", help="variable-length string attributes (h5py default)")
    ap.add_argument("--drop", help="leave this dataset out")
    ap.add_argument("--reshape", help="write this dataset with one more row")
    ap.add_argument("--bad-checksum", help="store a wrong checksum for this dataset")
    ap.add_argument("--extra", help="add this dataset, which the config does not imply")
    ap.add_argument("--format", default=ckpt_doc.FORMAT)
    ap.add_argument("--version", type=int, default=ckpt_doc.VERSION)
    a = ap.parse_args()

    rng = np.random.default_rng(7)
    string = (lambda s: s) if a.vlen_strings else (lambda s: np.bytes_(s.encode()))
    tmp = a.out + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = string(a.format)
        f.attrs["version"] = np.int64(a.version)
        f.attrs["step"] = np.int64(7)
        f.attrs["updates"] = np.int64(6)
        f.attrs["skipped_total"] = np.int64(1)
        f.attrs["data_next_row"] = np.int64(28)
        f.attrs["seed"] = np.uint64(1234)
        f.attrs["config"] = string(CONFIG)
        f.attrs["mesh"] = string("1x1")
        shapes = ckpt_doc.dataset_shapes(ckpt_doc.parse_config(CONFIG))
        if a.extra:
            shapes[a.extra] = (3,)
        for path, shape in shapes.items():
            if path == a.drop:
                continue
            if path == a.reshape:
                shape = (shape[0] + 1,) + tuple(shape[1:])
            if path.startswith("/optimizer/"):
                data = rng.random(shape, dtype=np.float32) * np.float32(1e-3)
            else:
                data = rng.standard_normal(shape, dtype=np.float32)
            if path == "/params/embedding":  # bf16 ties and extremes
                flat = data.reshape(-1)
                specials = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7F7FFF, 0x00000001, 0x80000000,
                                     0x3F80FFFF, 0x477FFF80], dtype="<u4").view("<f4")
                flat[: specials.size] = specials
            ds = f.create_dataset(path, data=data, dtype="<f4")
            sum_ = ckpt_doc.checksum(data)
            if path == a.bad_checksum:
                sum_ ^= 1
            ds.attrs["checksum"] = np.uint64(sum_)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {len(shapes)} datasets")


if __name__ == "__main__":
    main()
