#!/usr/bin/env python3
"""GLaM's central claim at small scale: an MoE model and a dense model with the
same activated FLOPs per token, trained on the same tokens of the demo corpus;
both validation curves in one plot, and the fraction of the dense model's tokens
the MoE needs to reach the dense model's final validation loss.

The pair: input/glam-tiny.cfg (8 experts on layers 0 and 2) and
bench/glam-tiny-dense.cfg (GEGLU everywhere, d_ff 1196: the same activated
parameters, checked here). Same rows per step, seed and corpus order, so both
see the same tokens.

Validation: `glam train --train.val_every N --train.val_rows R` writes records
{"step": N, "val_loss": X} into metrics.jsonl. When the glam binary has no such
keys (`glam train --help` does not list them), the script falls back to the
training cross-entropy averaged over windows of steps, and says so in the plot
and the report: each step's loss is measured before the model learns from that
batch, and no batch repeats while steps * rows * seq_len < corpus tokens, so it
is a held-out estimate too, only noisier.

Fraction: the first point where the MoE curve is at or below the dense model's
final loss, linearly interpolated between evaluations, in tokens, divided by the
dense model's tokens.

usage: bench/moe_vs_dense.py [--build build] [--steps 1000] [--np 2] [--mesh 2x1]
       [--val-every 50] [--val-rows 16] [--plot docs/moe_vs_dense.png]
       [--report docs/MOE_VS_DENSE.md] [--runs runs] [--reuse] [--set KEY=VALUE ...]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from glam_config import count_params, read_config  # noqa: E402

ROOT = os.path.dirname(HERE)
MOE_CFG = "input/glam-tiny.cfg"         # relative to the repository root
DENSE_CFG = "bench/glam-tiny-dense.cfg"


def fail(msg):
    sys.exit(f"moe_vs_dense: error: {msg}")


def has_validation(build):
    out = subprocess.run([f"{build}/glam", "train", "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"{build}/glam train --help failed:\n{out.stderr}")
    return "train.val_every" in out.stdout and "train.val_rows" in out.stdout


def train(a, cfg, run_dir, validate):
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(a.np),
           "-x", "OMP_NUM_THREADS", "-x", "OPENBLAS_NUM_THREADS",
           f"{a.build}/glam", "train", "--config", cfg, "--run-dir", run_dir, "--mesh", a.mesh,
           "--train.steps", str(a.steps), "--train.log_every", "50", "--overwrite"]
    if validate:
        cmd += ["--train.val_every", str(a.val_every), "--train.val_rows", str(a.val_rows)]
    for item in a.set:
        key, _, value = item.partition("=")
        cmd += [f"--{key}", value]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS=str(a.threads))
    print(f"moe_vs_dense: training {cfg} for {a.steps} steps -> {run_dir}", flush=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"training {cfg} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def curve(run_dir, tokens_per_step, window, use_val=True):
    """[(tokens, loss)], and whether it is the validation loss."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        fail(f"{path} is missing (train first, without --reuse)")
    records = [json.loads(l) for l in open(path) if l.strip()]
    val = [(r["step"] * tokens_per_step, r["val_loss"]) for r in records if "val_loss" in r]
    if val and use_val:
        return val, True
    train_ce = [(r["step"], r["ce"]) for r in records if "ce" in r]
    if not train_ce:
        fail(f"{path} holds neither val_loss nor ce records")
    pts = []
    for i in range(0, len(train_ce) - window + 1, window):  # window means, placed at the window's end
        chunk = train_ce[i:i + window]
        pts.append((chunk[-1][0] * tokens_per_step, sum(c for _, c in chunk) / len(chunk)))
    return pts, False


def tokens_to_reach(points, target):
    """Tokens at which the curve first reaches `target` (interpolated), or None."""
    prev = None
    for tok, loss in points:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return tok
            (t0, l0) = prev
            return t0 + (tok - t0) * (l0 - target) / (l0 - loss)
        prev = (tok, loss)
    return None


def smooth(points, k):
    """Trailing mean over k evaluations (validation loss on a few rows is noisy)."""
    return [(tok, sum(l for _, l in points[max(0, i - k + 1):i + 1]) / len(points[max(0, i - k + 1):i + 1]))
            for i, (tok, _) in enumerate(points)]


def reach_text(fraction):
    return (f"after **{fraction:.0%}** of the dense model's tokens" if fraction is not None
            else "**not within the run** (train longer: --steps)")


def plot(path, moe, dense, is_val, fraction, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([t / 1e6 for t, _ in dense], [l for _, l in dense], "o-", ms=3, label="dense (glam-tiny-dense)")
    ax.plot([t / 1e6 for t, _ in moe], [l for _, l in moe], "o-", ms=3, label="MoE (glam-tiny, 8 experts)")
    final = dense[-1][1]
    ax.axhline(final, color="gray", ls=":", lw=1, label=f"dense final {final:.3f}")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("validation loss" if is_val else "training cross-entropy, window means (fallback)")
    note = f"MoE reaches it after {fraction:.0%} of the tokens" if fraction is not None else "MoE does not reach it"
    ax.set_title(f"{title}\n{note}", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(path, a, moe, dense, is_val, fraction, c_moe, c_dense, plot_path, smoothed):
    tps = c_moe["train.batch_rows"] * c_moe["model.seq_len"]
    kind = "validation loss (`val_loss` records)" if is_val else (
        "**fallback: training cross-entropy** in windows of "
        f"{a.window} steps (this glam had no `train.val_every`); each step's loss is taken "
        "before the model learns from that batch, so it is a held-out estimate, only noisier")
    reach = reach_text(fraction)
    dense_s, fraction_s = smoothed
    sets = "".join(f" --set {s}" for s in a.set)
    lines = [
        "# MoE vs dense at equal activated FLOPs",
        "",
        "GLaM's central claim at small scale: for the same compute per token, the sparse",
        "model learns more from each token. Two models trained on the same tokens of the",
        "demo corpus, in the same order:",
        "",
        "| model | config | parameters | activated per token | final loss |",
        "|---|---|---|---|---|",
        f"| MoE | `{MOE_CFG}` | {count_params(c_moe) / 1e6:.2f}M | {count_params(c_moe, True) / 1e6:.2f}M | {moe[-1][1]:.4f} |",
        f"| dense | `{DENSE_CFG}` | {count_params(c_dense) / 1e6:.2f}M | "
        f"{count_params(c_dense, True) / 1e6:.2f}M | {dense[-1][1]:.4f} |",
        "",
        f"Both: {a.steps} steps of {tps} tokens ({a.steps * tps / 1e6:.2f}M tokens), mesh {a.mesh} on "
        f"{a.np} ranks, {a.threads} thread(s) each. Loss: {kind}.",
        "",
        f"The MoE model reaches the dense model's final loss ({dense[-1][1]:.4f}) {reach}.",
        f"Smoothed (trailing mean of {a.smooth} evaluations on both curves, against the noise of the "
        f"validation loss): the dense model ends at {dense_s:.4f}, and the MoE reaches that "
        f"{reach_text(fraction_s)}.",
        "",
    ] + ([f"![validation curves]({os.path.relpath(plot_path, os.path.dirname(path) or '.')})", ""] if plot_path else []) + [
        "Reproduce: `make moe-vs-dense` (`bench/moe_vs_dense.py --steps "
        f"{a.steps} --np {a.np} --mesh {a.mesh} --val-every {a.val_every} --val-rows {a.val_rows}{sets}`).",
        "",
        "| tokens (M) | dense | MoE |",
        "|---|---|---|",
    ]
    moe_at = dict(moe)
    for tok, loss in dense:
        m = moe_at.get(tok)
        lines.append(f"| {tok / 1e6:.3f} | {loss:.4f} | {m:.4f} |" if m is not None else
                     f"| {tok / 1e6:.3f} | {loss:.4f} | - |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--mesh", default="2x1")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP/OpenBLAS threads per rank")
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--val-rows", type=int, default=16)
    ap.add_argument("--window", type=int, default=50, help="steps per point of the training-loss fallback")
    ap.add_argument("--smooth", type=int, default=3, help="evaluations in the trailing mean of the smoothed fraction")
    ap.add_argument("--runs", default="runs", help="run dirs go to RUNS/moe-vs-dense-{moe,dense}")
    ap.add_argument("--plot", default="docs/moe_vs_dense.png", help="PNG of both curves ('' for none)")
    ap.add_argument("--report", default="docs/MOE_VS_DENSE.md")
    ap.add_argument("--reuse", action="store_true", help="plot existing run dirs without training")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="passed to both runs as --SECTION.KEY VALUE (e.g. data.corpus=FILE)")
    a = ap.parse_args()
    if a.steps < 1 or a.val_every < 1 or a.val_rows < 1 or a.window < 1 or a.smooth < 1:
        fail("--steps, --val-every, --val-rows, --window and --smooth must be positive")
    overrides = [s for s in a.set if s.startswith(("model.", "train.", "data."))]
    c_moe = read_config(os.path.join(ROOT, MOE_CFG), overrides)
    c_dense = read_config(os.path.join(ROOT, DENSE_CFG), overrides)
    if count_params(c_moe, True) != count_params(c_dense, True):
        fail(f"activated parameters differ: MoE {count_params(c_moe, True)}, dense {count_params(c_dense, True)}")
    runs = {"moe": (os.path.join(ROOT, MOE_CFG), os.path.join(a.runs, "moe-vs-dense-moe")),
            "dense": (os.path.join(ROOT, DENSE_CFG), os.path.join(a.runs, "moe-vs-dense-dense"))}
    if not a.reuse:
        validate = has_validation(a.build)
        if not validate:
            print("moe_vs_dense: this glam has no train.val_every: falling back to the training loss", flush=True)
        for cfg, run_dir in runs.values():
            train(a, cfg, run_dir, validate)
    tps = c_moe["train.batch_rows"] * c_moe["model.seq_len"]
    moe, moe_val = curve(runs["moe"][1], tps, a.window)
    dense, dense_val = curve(runs["dense"][1], tps, a.window)
    is_val = moe_val and dense_val
    if not is_val and (moe_val or dense_val):  # compare like with like
        moe, _ = curve(runs["moe"][1], tps, a.window, use_val=False)
        dense, _ = curve(runs["dense"][1], tps, a.window, use_val=False)
    reached = tokens_to_reach(moe, dense[-1][1])
    fraction = reached / dense[-1][0] if reached is not None else None
    moe_s, dense_s = smooth(moe, a.smooth), smooth(dense, a.smooth)
    reached_s = tokens_to_reach(moe_s, dense_s[-1][1])
    fraction_s = reached_s / dense_s[-1][0] if reached_s is not None else None
    title = "MoE vs dense, equal activated FLOPs per token" + ("" if is_val else " (training-loss fallback)")
    if a.plot:
        os.makedirs(os.path.dirname(a.plot) or ".", exist_ok=True)
        plot(a.plot, moe, dense, is_val, fraction, title)
    report(a.report, a, moe, dense, is_val, fraction, c_moe, c_dense, a.plot, (dense_s[-1][1], fraction_s))
    print(f"dense final loss {dense[-1][1]:.4f}; MoE final {moe[-1][1]:.4f}; "
          f"MoE reaches the dense final loss after "
          f"{'%.0f%%' % (100 * fraction) if fraction is not None else 'never (within the run)'} of the tokens"
          f"{'' if is_val else ' (training-loss fallback)'}; smoothed over {a.smooth} evaluations: "
          f"{'%.0f%%' % (100 * fraction_s) if fraction_s is not None else 'never'}; "
          f"plot {a.plot or '-'}, report {a.report}")


if __name__ == "__main__":
    main()
