"""The glam checkpoint schema as docs/CHECKPOINT.md states it, in Python (h5py and
numpy only, no glam): the datasets a stored config implies and the checksum.
Shared by the test scripts of tests/ckpt; deliberately written from the document,
not from the C++ sources."""
import configparser

import numpy as np

FORMAT = "glam-checkpoint"
VERSION = 1
INT_ATTRS = ("step", "updates", "skipped_total", "data_next_row", "seed")
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def attr_str(value):
    """A string attribute as h5py returns it (str, bytes or a numpy bytes scalar)."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)


def parse_config(ini):
    """The stored INI config -> {"model.d_model": "32", ...}."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(ini)
    return {f"{sec}.{key}": val.strip() for sec in parser.sections() for key, val in parser[sec].items()}


def model_dims(cfg):
    get = lambda key, default: int(cfg.get(key, default))
    return dict(V=get("model.vocab_size", 8000), M=get("model.d_model", 256), L=get("model.n_layers", 4),
                heads=get("model.n_heads", 4), d_head=get("model.d_head", 64), H=get("model.d_ff", 1024),
                E=get("model.n_experts", 8), min_dim=get("train.factored_min_dim", 128))


def param_shapes(cfg):
    """[(name, shape)] of the /params datasets, in the documented order."""
    d = model_dims(cfg)
    V, M, H, E = d["V"], d["M"], d["H"], d["E"]
    A = d["heads"] * d["d_head"]
    out = [("embedding", (V, M))]
    for layer in range(d["L"]):
        pre = f"layer_{layer:02d}/"
        out += [(pre + "attn/norm_scale", (M,)), (pre + "attn/wq", (M, A)), (pre + "attn/wk", (M, A)),
                (pre + "attn/wv", (M, A)), (pre + "attn/wo", (A, M)), (pre + "attn/rel_bias", (d["heads"], 32)),
                (pre + "ffn/norm_scale", (M,))]
        if E > 0 and layer % 2 == 0:  # MoE on even layers
            out += [(pre + "moe/router", (M, E)), (pre + "moe/wi", (E, M, H)), (pre + "moe/wo", (E, H, M))]
        else:  # GEGLU on odd layers, or every layer of a dense model
            out += [(pre + "ffn/wi0", (M, H)), (pre + "ffn/wi1", (M, H)), (pre + "ffn/wo", (H, M))]
    out.append(("final_norm_scale", (M,)))
    return out


def dataset_shapes(cfg):
    """{path: shape} of every dataset of a checkpoint of this config."""
    min_dim = model_dims(cfg)["min_dim"]
    out = {}
    params = param_shapes(cfg)
    for name, shape in params:
        out["/params/" + name] = shape
    for name, shape in params:
        base = "/optimizer/" + name
        if len(shape) >= 2 and shape[-1] >= min_dim and shape[-2] >= min_dim:
            out[base + "/vr"] = shape[:-1]
            out[base + "/vc"] = shape[:-2] + shape[-1:]
        else:
            out[base + "/v"] = shape
    return out


def mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def checksum(array, first_index=0):
    """Sum mod 2^64 of mix(i * golden + bits_i) over a float32 array (flat, row-major),
    element 0 having global flat index first_index."""
    a = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    idx = np.arange(a.size, dtype=np.uint64) + np.uint64(first_index)
    with np.errstate(over="ignore"):
        z = mix(idx * GOLDEN + a.view("<u4").astype(np.uint64))
        return int(np.sum(z, dtype=np.uint64))


def checksum_indexed(values, global_indices):
    """The same sum for float32 values at arbitrary global flat indices."""
    a = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    idx = np.asarray(global_indices, dtype=np.uint64).reshape(-1)
    with np.errstate(over="ignore"):
        return int(np.sum(mix(idx * GOLDEN + a.view("<u4").astype(np.uint64)), dtype=np.uint64))


def bf16_bits(array):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, NaN kept NaN."""
    u = np.ascontiguousarray(array, dtype="<f4").view("<u4").astype(np.uint64)
    rounded = ((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)) & np.uint64(0xFFFF)
    nan = ((u & np.uint64(0x7F800000)) == np.uint64(0x7F800000)) & ((u & np.uint64(0x007FFFFF)) != 0)
    rounded = np.where(nan, (u >> np.uint64(16)) | np.uint64(0x40), rounded)
    return rounded.astype("<u2").reshape(np.shape(array))


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype="<u2").astype("<u4") << np.uint32(16)).view("<f4")
