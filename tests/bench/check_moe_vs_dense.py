#!/usr/bin/env python3
"""bench/moe_vs_dense.py --reuse on run dirs with known curves: the fraction of
tokens the MoE needs to reach the dense model's final loss, from val_loss records
and from the training-loss fallback, against the value worked out here by hand.
usage: check_moe_vs_dense.py REPO_ROOT TMP_DIR"""
import json
import os
import re
import subprocess
import sys

root, tmp = sys.argv[1], sys.argv[2]


def write_run(run_dir, slope, with_val):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in range(1, 101):
            ce = 6.0 - slope * step
            f.write(json.dumps({"step": step, "loss": ce + 0.01, "ce": ce}) + "\n")
            if with_val and step % 10 == 0:
                f.write(json.dumps({"step": step, "val_loss": 6.0 - slope * step}) + "\n")


def run(case, with_val):
    runs = os.path.join(tmp, case)
    write_run(os.path.join(runs, "moe-vs-dense-dense"), 0.01, with_val)
    write_run(os.path.join(runs, "moe-vs-dense-moe"), 0.02, with_val)
    report = os.path.join(runs, "report.md")
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "moe_vs_dense.py"), "--reuse",
                          "--runs", runs, "--plot", "", "--report", report, "--window", "10", "--steps", "100"],
                         capture_output=True, text=True)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, f"{case}: exit {out.returncode}"
    return out.stdout, open(report).read()


# Validation records: dense ends at 6 - 0.01*100 = 5.0; the MoE (6 - 0.02*step) is
# there at step 50: half the tokens.
stdout, report = run("val", True)
assert "after 50% of the tokens" in stdout and "fallback" not in stdout, stdout
assert "**50%**" in report and "validation loss (`val_loss` records)" in report, report
# Smoothed over 3 evaluations: dense ends at the mean of 5.2, 5.1, 5.0 = 5.1; the
# MoE's trailing mean at step s is 6 - 0.02 (s - 10), 5.1 at step 55: 55%.
assert "smoothed over 3 evaluations: 55%" in stdout, stdout
assert "ends at 5.1000, and the MoE reaches that after **55%**" in report, report

# Fallback: means of 10-step windows of ce. Dense's last window (steps 91..100) has
# mean 6 - 0.01*95.5 = 5.045. The MoE's window ending at step 10k has mean
# 6 - 0.02*(10k - 4.5): 5.09 at step 50, 4.89 at step 60, so it crosses 5.045 at
# step 50 + 10 * (5.09 - 5.045) / (5.09 - 4.89) = 52.25: 52% of the tokens.
stdout, report = run("fallback", False)
assert "after 52% of the tokens (training-loss fallback)" in stdout, stdout
assert "fallback: training cross-entropy" in report and "**52%**" in report, report

# A MoE that never gets there is reported as such.
runs = os.path.join(tmp, "never")
write_run(os.path.join(runs, "moe-vs-dense-dense"), 0.02, True)
write_run(os.path.join(runs, "moe-vs-dense-moe"), 0.01, True)
out = subprocess.run([sys.executable, os.path.join(root, "bench", "moe_vs_dense.py"), "--reuse", "--runs", runs,
                      "--plot", "", "--report", os.path.join(runs, "r.md")], capture_output=True, text=True)
assert out.returncode == 0 and re.search(r"never \(within the run\)", out.stdout), out.stdout + out.stderr
print("check_moe_vs_dense: all cases as expected")
