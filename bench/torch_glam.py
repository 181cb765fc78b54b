#!/usr/bin/env python3
"""The glam model and its training step written in PyTorch: the peer that
`make bench` times against the C++ CPU path, at the same shapes and thread count.

Same model as src/model/model.cpp and src/layers/cpu/*: tied embedding (not scaled), pre-norm
RMSNorm, attention without 1/sqrt(d_head) plus a per-layer T5-bucket relative bias,
a segment mask for packed rows and one extra zero logit in the softmax; GEGLU
dense FFN on odd layers; on even layers top-2 gating (GShard: renormalised before
capacity, all first choices placed before any second choice, fixed capacity per
group of group_size tokens, dropped choices weigh 0) over plain act(x Wi) Wo
experts; loss = CE + 0.01 * sum(aux) + 1e-4 * mean(lse^2); Adafactor (no first
moment, factored second moment, update clipping, parameter-scaled step).

The weights are drawn with glam's own counter-based initialiser (params.cpp), so at
the same seed both start from identical parameters, and the batches are packed
exactly as Corpus::rows packs them: the first losses must agree with
`glam train` to float rounding (train_bench.py checks it).

The experts run as one batched matmul over fixed-capacity buffers [E, G*C, M]
(how GShard and GLaM's public code lay them out); tokens move in and out with
index_add (no one-hot dispatch einsum), the idiomatic fast way in PyTorch.

usage: bench/torch_glam.py --config input/glam-tiny.cfg [--steps 6] [--warmup 2]
       [--threads 2] [--corpus FILE] [--set model.d_model=512 ...]
Prints one JSON object: params, activated params, losses per step, tokens/s over
the steps after the warm-up.
"""
import argparse
import json
import math
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from glam_config import count_params, is_moe_layer, read_config

# ---- glam's initialiser (params.cpp): splitmix64 of (seed, name, global index) ----

MASK = (1 << 64) - 1


def mix_int(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def mix_array(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit(bits):
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def glam_init(name, shape, kind, scale, seed):
    if kind == "ones":
        return torch.ones(shape)
    key = mix_int(seed)
    for ch in name.encode():
        key = mix_int(key ^ ch)
    with np.errstate(over="ignore"):
        index = np.arange(int(np.prod(shape)), dtype=np.uint64)
        a = mix_array(np.uint64(key) ^ mix_array(index))
        u1 = unit(a)
        if kind == "uniform":
            w = (2.0 * u1 - 1.0) * scale
        else:
            u2 = unit(mix_array(a))
            w = scale * np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)
    return torch.from_numpy(w.astype(np.float32).reshape(shape))


def param_specs(c):
    """(name, shape, init, scale) in glam's table order (params.cpp build_params)."""
    M, A, H, E = c["model.d_model"], c["model.n_heads"] * c["model.d_head"], c["model.d_ff"], c["model.n_experts"]
    nh, dh = c["model.n_heads"], c["model.d_head"]
    u_in, u_out = math.sqrt(3.0 / M), math.sqrt(3.0 / H)
    specs = [("embedding", (c["model.vocab_size"], M), "normal", 1.0)]
    for l in range(c["model.n_layers"]):
        p = f"layer_{l:02d}/"
        specs += [(p + "attn/norm_scale", (M,), "ones", 1.0),
                  (p + "attn/wq", (M, A), "normal", 1.0 / math.sqrt(M * dh)),
                  (p + "attn/wk", (M, A), "normal", 1.0 / math.sqrt(M)),
                  (p + "attn/wv", (M, A), "normal", 1.0 / math.sqrt(M)),
                  (p + "attn/wo", (A, M), "normal", 1.0 / math.sqrt(A)),
                  (p + "attn/rel_bias", (nh, 32), "normal", 1.0 / math.sqrt(32.0 * nh)),
                  (p + "ffn/norm_scale", (M,), "ones", 1.0)]
        if is_moe_layer(c, l):
            specs += [(p + "moe/router", (M, E), "uniform", u_in),
                      (p + "moe/wi", (E, M, H), "uniform", u_in),
                      (p + "moe/wo", (E, H, M), "uniform", u_out)]
        else:
            specs += [(p + "ffn/wi0", (M, H), "uniform", u_in),
                      (p + "ffn/wi1", (M, H), "uniform", u_in),
                      (p + "ffn/wo", (H, M), "uniform", u_out)]
    specs.append(("final_norm_scale", (M,), "ones", 1.0))
    return specs


# ---- data: Corpus::rows of src/data/corpus.cpp ------------------------------------

class Corpus:
    def __init__(self, path):
        with h5py.File(path, "r") as f:
            self.tokens = f["tokens"][:].astype(np.int64)
            self.offsets = f["doc_offsets"][:].astype(np.int64)

    def rows(self, first_row, n_rows, S):
        n = len(self.tokens)
        ids = np.zeros((n_rows, S), np.int64)
        targets = np.zeros((n_rows, S), np.int64)
        segments = np.zeros((n_rows, S), np.int64)
        doc_end = np.zeros(n, bool)
        doc_end[self.offsets[1:] - 1] = True
        starts = np.zeros(n, bool)
        starts[self.offsets[:-1]] = True
        for r in range(n_rows):
            pos = (np.arange(S) + (first_row + r) * S) % n
            nxt = (pos + 1) % n
            ids[r] = self.tokens[pos]
            targets[r] = np.where(doc_end[pos], -1, self.tokens[nxt])
            new_doc = starts[pos].copy()
            new_doc[0] = False
            segments[r] = np.cumsum(new_doc)
        return torch.from_numpy(ids), torch.from_numpy(targets), torch.from_numpy(segments)


# ---- the model --------------------------------------------------------------------

def relpos_bucket(n):
    n = max(0, n)
    if n < 16:
        return n
    return min(31, 16 + int(math.log(n / 16.0) / math.log(128.0 / 16.0) * 16))


def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def expert_capacity(S, factor, E):
    c = max(int(S * factor / E), 1)
    return (c + 3) // 4 * 4


class GlamTorch(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.specs = param_specs(c)
        self.p = torch.nn.ParameterDict()
        for name, shape, kind, scale in self.specs:
            self.p[name.replace("/", "__")] = torch.nn.Parameter(glam_init(name, shape, kind, scale, c["train.seed"]))
        S = c["model.seq_len"]
        dist = torch.arange(S)[:, None] - torch.arange(S)[None, :]
        table = torch.tensor([relpos_bucket(d) for d in range(S)])
        self.register_buffer("bucket", table[dist.clamp(min=0)])  # [S, S]

    def w(self, l, what):
        return self.p[f"layer_{l:02d}__{what.replace('/', '__')}"]

    def attention(self, l, x, mask):
        c = self.c
        B, S, M = x.shape
        nh, dh = c["model.n_heads"], c["model.d_head"]
        xn = rmsnorm(x, self.w(l, "attn/norm_scale"))
        q, k, v = ((xn @ self.w(l, n)).view(B, S, nh, dh).transpose(1, 2) for n in ("attn/wq", "attn/wk", "attn/wv"))
        a = q @ k.transpose(-1, -2) + self.w(l, "attn/rel_bias")[:, self.bucket]   # [B, nh, S, S]
        a = a.masked_fill(~mask, float("-inf"))
        a = torch.cat([a, a.new_zeros(B, nh, S, 1)], dim=-1)  # the extra logit fixed at 0
        p = torch.softmax(a, dim=-1)[..., :S]
        o = (p @ v).transpose(1, 2).reshape(B, S, nh * dh)
        return x + o @ self.w(l, "attn/wo")

    def dense(self, l, xn):
        return (gelu_tanh(xn @ self.w(l, "ffn/wi0")) * (xn @ self.w(l, "ffn/wi1"))) @ self.w(l, "ffn/wo")

    def moe(self, l, xn):
        """Top-2 gating with capacity (GShard Algorithm 2), experts on fixed-capacity buffers."""
        c = self.c
        T, M = xn.shape
        E, S = c["model.n_experts"], c["model.group_size"]
        G, C = T // S, expert_capacity(S, c["model.capacity_factor"], E)
        gates = torch.softmax(xn @ self.w(l, "moe/router"), dim=-1)            # [T, E]
        i1 = gates.argmax(-1)
        i2 = gates.masked_fill(F.one_hot(i1, E).bool(), float("-inf")).argmax(-1)
        r1, r2 = gates.gather(1, i1[:, None])[:, 0], gates.gather(1, i2[:, None])[:, 0]
        s = r1 + r2 + 1e-9
        g1, g2 = r1 / s, r2 / s
        with torch.no_grad():  # slots: all first choices of a group, then all second choices
            oh1, oh2 = F.one_hot(i1, E).view(G, S, E), F.one_hot(i2, E).view(G, S, E)
            pos1 = (oh1.cumsum(1) - 1).gather(2, i1.view(G, S, 1)).view(T)
            first_count = oh1.sum(1, keepdim=True)                            # [G, 1, E]
            pos2 = (oh2.cumsum(1) - 1 + first_count).gather(2, i2.view(G, S, 1)).view(T)
            kept1, kept2 = pos1 < C, pos2 < C
            group = torch.arange(T) // S
            slot1 = (i1 * G + group) * C + pos1.clamp(max=C - 1)              # row of [E, G, C]
            slot2 = (i2 * G + group) * C + pos2.clamp(max=C - 1)
            f = oh1.float().mean(1)                                           # [G, E] first-choice fraction
            tok = torch.arange(T)
            tokens = torch.cat([tok[kept1], tok[kept2]])
            slots = torch.cat([slot1[kept1], slot2[kept2]])
        aux = E * (f * gates.view(G, S, E).mean(1)).sum() / G                 # E^2 * mean(f * P)
        weights = torch.cat([g1[kept1], g2[kept2]])
        buf = xn.new_zeros(E * G * C, M).index_add(0, slots, xn[tokens])      # dispatch
        h = torch.bmm(buf.view(E, G * C, M), self.w(l, "moe/wi"))           # [E, G*C, H]
        h = torch.relu(h) if c["model.expert_act"] == "relu" else gelu_tanh(h)
        y = torch.bmm(h, self.w(l, "moe/wo")).view(E * G * C, M)
        out = xn.new_zeros(T, M).index_add(0, tokens, (y[slots] * weights[:, None]).to(xn.dtype))  # combine
        return out, aux

    def forward(self, ids, targets, segments):
        c = self.c
        B, S = ids.shape
        M = c["model.d_model"]
        emb = self.p["embedding"]
        causal = torch.ones(S, S, dtype=torch.bool).tril()
        mask = (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]  # [B, 1, S, S]
        x = emb[ids]
        aux_sum = x.new_zeros(())
        for l in range(c["model.n_layers"]):
            x = self.attention(l, x, mask)
            xn = rmsnorm(x, self.w(l, "ffn/norm_scale")).view(B * S, M)
            if is_moe_layer(c, l):
                out, aux = self.moe(l, xn)
                aux_sum = aux_sum + aux
            else:
                out = self.dense(l, xn)
            x = x + out.view(B, S, M)
        h = rmsnorm(x, self.p["final_norm_scale"]).view(B * S, M)
        logits = (h * M ** -0.5) @ emb.t()
        lse = torch.logsumexp(logits, dim=-1)
        t = targets.view(-1)
        valid = t >= 0
        n = max(1, int(valid.sum()))
        ce = (lse - logits.gather(1, t.clamp(min=0)[:, None])[:, 0])[valid].sum() / n
        z = lse[valid].pow(2).sum() / n
        loss = ce + c["model.aux_loss_weight"] * aux_sum + c["model.z_loss_weight"] * z
        return loss, ce.detach(), aux_sum.detach()


# ---- Adafactor (src/model/adafactor.cpp) -------------------------------------------------

class Adafactor:
    def __init__(self, params, c):
        self.c = c
        self.state = []
        for p in params:
            factored = p.dim() >= 2 and min(p.shape[-2:]) >= c["train.factored_min_dim"]
            if factored:
                self.state.append((p, True, p.new_zeros(p.shape[:-1]), p.new_zeros(p.shape[:-2] + p.shape[-1:])))
            else:
                self.state.append((p, False, p.new_zeros(p.shape), None))

    @torch.no_grad()
    def step(self, lr, t):
        c = self.c
        rho = 1.0 - (t + 1.0) ** -c["train.decay_pow"]
        for p, factored, a, b in self.state:
            g2 = p.grad * p.grad + 1e-30
            if factored:
                a.mul_(rho).add_(g2.mean(-1), alpha=1.0 - rho)               # row statistics
                b.mul_(rho).add_(g2.mean(-2), alpha=1.0 - rho)               # column statistics
                v = a.unsqueeze(-1) * b.unsqueeze(-2) / a.mean(-1, keepdim=True).unsqueeze(-1)
            else:
                a.mul_(rho).add_(g2, alpha=1.0 - rho)
                v = a
            u = p.grad / v.sqrt()
            clip = max(1.0, float(u.pow(2).mean().sqrt()) / c["train.clip_threshold"])
            scale = lr * max(c["train.min_param_scale"], float(p.pow(2).mean().sqrt())) / clip
            p.sub_(u, alpha=scale)


def learning_rate(c, step):
    warmup = max(c["train.warmup_steps"], 1)
    return c["train.lr"] * math.sqrt(warmup / max(warmup, step))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="steps not timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: the forward under torch.autocast (bf16 matmul operands, fp32 weights)")
    ap.add_argument("--corpus", help="overrides [data] corpus")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    a = ap.parse_args()
    if a.steps <= a.warmup:
        sys.exit("torch_glam: error: --steps must exceed --warmup")
    torch.set_num_threads(a.threads)
    c = read_config(a.config, a.set)
    corpus = Corpus(a.corpus or c["data.corpus"])
    model = GlamTorch(c)
    params = list(model.p.values())
    opt = Adafactor(params, c)
    n_params = sum(p.numel() for p in params)
    B, S = c["train.batch_rows"], c["model.seq_len"]
    losses, times = [], []
    for step in range(a.steps):
        ids, targets, segments = corpus.rows(step * B, B, S)
        t0 = time.perf_counter()
        for p in params:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss, ce, aux = model(ids, targets, segments)
        loss.backward()
        grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))
        if math.isfinite(grad_norm):
            opt.step(learning_rate(c, step + 1), step)
        times.append(time.perf_counter() - t0)
        losses.append({"step": step + 1, "loss": float(loss), "ce": float(ce), "aux": float(aux),
                       "grad_norm": grad_norm})
    timed = times[a.warmup:]
    print(json.dumps({"params": n_params, "params_formula": count_params(c),
                      "activated_params": count_params(c, activated=True), "threads": a.threads,
                      "tokens_per_step": B * S, "tokens_per_s": B * S * len(timed) / sum(timed),
                      "step_s": sum(timed) / len(timed), "losses": losses}))


if __name__ == "__main__":
    main()
