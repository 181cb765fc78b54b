"""glam's INI configs in Python, for the bench scripts: the keys of
include/glam/model/config.h with their defaults, and the parameter counts of
src/model/params.cpp (count_params, count_activated_params)."""
import sys


DEFAULTS = {
    "model.vocab_size": 8000, "model.d_model": 256, "model.n_layers": 4, "model.n_heads": 4,
    "model.d_head": 64, "model.d_ff": 1024, "model.n_experts": 8, "model.group_size": 512,
    "model.capacity_factor": 2.0, "model.expert_act": "relu", "model.second_policy": "all",
    "model.seq_len": 256, "model.aux_loss_weight": 0.01, "model.z_loss_weight": 1e-4,
    "train.batch_rows": 8, "train.lr": 0.01, "train.warmup_steps": 10000, "train.decay_pow": 0.8,
    "train.clip_threshold": 1.0, "train.min_param_scale": 1e-3, "train.factored_min_dim": 128,
    "train.seed": 1234, "data.corpus": "",
}


def read_config(path, overrides=()):
    """The config file's values over the defaults, then `overrides` ("section.key=value")."""
    cfg, section = dict(DEFAULTS), ""
    pairs = []
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        sys.exit(f"bench: error: cannot read config '{path}': {e.strerror}")
    for line in lines:
        line = line.split("#")[0].strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            pairs.append((f"{section}.{k}", v))
    for item in overrides:
        if "=" not in item:
            sys.exit(f"bench: error: --set expects section.key=value, got '{item}'")
        pairs.append(tuple(x.strip() for x in item.split("=", 1)))
    for key, v in pairs:
        if key not in DEFAULTS:
            continue  # keys the benches do not need (checkpoint, logging)
        try:
            cfg[key] = type(DEFAULTS[key])(v)
        except ValueError:
            sys.exit(f"bench: error: {path}: {key} = '{v}' is not a {type(DEFAULTS[key]).__name__}")
    return cfg


def is_moe_layer(c, l):
    return c["model.n_experts"] > 0 and l % 2 == 0


def count_params(c, activated=False):
    M, H, E = c["model.d_model"], c["model.d_ff"], c["model.n_experts"]
    L = c["model.n_layers"]
    n_moe = (L + 1) // 2 if E > 0 else 0
    attn = 4 * M * c["model.n_heads"] * c["model.d_head"] + c["model.n_heads"] * 32 + 2 * M
    experts = (2 if activated else E) * 2 * M * H
    return c["model.vocab_size"] * M + L * attn + (L - n_moe) * 3 * M * H + n_moe * (experts + M * E) + M
