#!/usr/bin/env python3
"""Checks the SLURM job scripts jobs/*.sbatch against their configs input/*.cfg.

    check_jobs.py [--root DIR]            check every job script; exit 1 on a problem
    check_jobs.py [--root DIR] --table    also print the mesh and the memory estimate per job
    check_jobs.py [--root DIR] --plan MODEL [--gpu-gb 80]
                                          every valid mesh of input/MODEL.cfg on 1..256
                                          nodes of 8 and its memory per rank
    check_jobs.py [--root DIR] --self-test
                                          the checks reject broken job scripts

Per job script: the #SBATCH lines (job name = file name, nodes, --ntasks-per-node,
--cpus-per-task, --time, --requeue, --signal=USR1@N or B:USR1@N (jobs/common.sh
forwards a signal to the batch shell to the step), --open-mode=append, --output; no
--gpus-per-task or --gres, so that the job runs on CPU-only nodes: GPUs come from
the environment, SBATCH_GPUS_PER_TASK=1), the GLAM_MODEL line, the
GLAM_MESH="${GLAM_MESH:-DxM}" line (the default mesh; the environment may replace it)
and the `source .../jobs/common.sh` line; then the default mesh DxM against the
config, as glam checks it at start (src/commands/train.cpp, src/model/params.cpp):
  D * M = nodes * ntasks-per-node; M divides ntasks-per-node (a model group lies
  inside one node: srun places consecutive ranks on one node);
  M divides n_heads, d_ff and vocab_size;
  E = n_experts: 0, or E % D == 0 or D % E == 0;
  D divides train.batch_rows; an MoE model's group_size divides the tokens of a data
  rank (batch_rows / D * seq_len).
Every paper config input/glam-*.cfg (all but glam-tiny) must have its job script.

The memory estimate per rank is that of the CPU reference path, which keeps
everything in fp32 (measured peak RSS of `glam train` is within 10% above it, plus
~60 MB of libraries):
  parameters held by the rank * 8 bytes (weights and gradients)
  + Adafactor state * 4 bytes (factored: row + column statistics per matrix whose
    two last dims are >= 128, per expert for [E, M, H]; full for the rest)
  + activations kept for the backward pass, per token of the rank and per layer:
    residual and norms 4*d_model, q k v and attention output 4*heads*d_head/M,
    attention probabilities heads/M*seq_len; a dense layer 3*d_ff/M (GEGLU), an MoE
    layer n_experts + 8*d_model + 4*d_ff/M (dispatched rows at capacity factor 2);
    then 2*vocab/M for the logits and their gradient.
"""
import argparse
import configparser
import contextlib
import io
import os
import re
import shutil
import sys
import tempfile

REQUIRED_JOBS = [
    "glam-0.1b", "glam-0.1b-64e", "glam-1.7b", "glam-1.7b-32e", "glam-1.7b-64e",
    "glam-1.7b-128e", "glam-1.7b-256e", "glam-8b", "glam-8b-64e", "glam-137b",
    "glam-64b-64e",
]
GB = 1e9


def load_config(path):
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    with open(path) as f:
        cp.read_file(f)
    model = {k: int(v) for k, v in cp["model"].items() if re.fullmatch(r"-?\d+", v.strip())}
    train = {k: int(v) for k, v in cp["train"].items() if re.fullmatch(r"-?\d+", v.strip())}
    return model, train


def parse_job(path):
    """Returns ({sbatch option: value}, {variable: value}, source line found)."""
    opts, vars_, sources = {}, {}, False
    short = {"-N": "nodes", "-n": "ntasks", "-c": "cpus-per-task", "-t": "time",
             "-J": "job-name", "-o": "output", "-p": "partition", "-A": "account"}
    body_started = False
    with open(path) as f:
        for line in f:
            s = line.strip()
            if s.startswith("#SBATCH"):
                if body_started:
                    raise ValueError(f"#SBATCH line after the first command (sbatch ignores it): {s}")
                arg = s[len("#SBATCH"):].strip().split("#")[0].strip()
                m = re.fullmatch(r"(--[\w-]+|-\w)(?:[= ]\s*(.*))?", arg)
                if not m:
                    raise ValueError(f"cannot parse {s!r}")
                key = m.group(1)
                key = short.get(key, key.lstrip("-"))
                opts[key] = (m.group(2) or "").strip()
                continue
            if not s or s.startswith("#"):
                continue
            body_started = True
            m = re.fullmatch(r"(\w+)=(\S+)(?:\s+#.*)?", s)
            if m:
                value = m.group(2).strip("'\"")
                default = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)  # ${GLAM_MESH:-2x2}: its default
                if default and default.group(1) == m.group(1):
                    value = default.group(2)
                vars_[m.group(1)] = value
            if re.match(r"(source|\.)\s.*jobs/common\.sh", s):
                sources = True
    return opts, vars_, sources


def mesh_of(text):
    m = re.fullmatch(r"([1-9]\d*)x([1-9]\d*)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def mesh_problems(cfg, D, M, ranks_per_node):
    model, train = cfg
    out = []
    if ranks_per_node % M:
        out.append(f"model axis M={M} does not divide the {ranks_per_node} ranks of a node "
                   "(a model group must stay inside one node)")
    for key in ("n_heads", "d_ff", "vocab_size"):
        if model[key] % M:
            out.append(f"M={M} does not divide model.{key}={model[key]}")
    E = model["n_experts"]
    if E and E % D and D % E:
        out.append(f"n_experts={E} is neither a multiple nor a divisor of D={D}")
    rows = train["batch_rows"]
    if rows % D:
        out.append(f"D={D} does not divide train.batch_rows={rows}")
    elif E and (rows // D * model["seq_len"]) % model["group_size"]:
        out.append(f"group_size={model['group_size']} does not divide the {rows // D * model['seq_len']} "
                   "tokens of a data rank")
    return out


def memory(cfg, D, M):
    """(parameters per rank, bytes of weights+gradients+Adafactor, bytes of activations)."""
    m, t = cfg
    V, dm, L, nh, dh, H, E, S = (m[k] for k in ("vocab_size", "d_model", "n_layers", "n_heads",
                                               "d_head", "d_ff", "n_experts", "seq_len"))
    A = nh * dh
    e_local = 0 if E == 0 else (E // D if E >= D else 1)

    def fac(rows, cols):  # Adafactor floats of one [rows, cols] matrix
        return rows + cols if rows >= 128 and cols >= 128 else rows * cols

    w = V * dm / M + dm
    opt = fac(V / M, dm) + dm
    act = 2 + 2 * dm + 2 * V / M
    for layer in range(L):
        w += 4 * dm * A / M + nh * 32 + 2 * dm
        opt += 3 * fac(dm, A / M) + fac(A / M, dm) + nh * 32 + 2 * dm
        act += 4 * dm + 2 + 4 * A / M + nh / M * S
        if E and layer % 2 == 0:
            w += dm * E + 2 * e_local * dm * H / M
            opt += fac(dm, E) + e_local * (fac(dm, H / M) + fac(H / M, dm))
            act += E + 8 * dm + 4 * H / M
        else:
            w += 3 * dm * H / M
            opt += 2 * fac(dm, H / M) + fac(H / M, dm)
            act += 3 * H / M
    tokens = t["batch_rows"] // D * S
    return w, 8 * w + 4 * opt, 4 * act * tokens


def check(root, table):
    jobs_dir = os.path.join(root, "jobs")
    problems, rows = [], []
    names = sorted(f[:-len(".sbatch")] for f in os.listdir(jobs_dir) if f.endswith(".sbatch"))
    for name in REQUIRED_JOBS:
        if name not in names:
            problems.append(f"jobs/{name}.sbatch is missing")
    for cfg_file in sorted(os.listdir(os.path.join(root, "input"))):
        base = cfg_file[:-4]
        if cfg_file.endswith(".cfg") and base != "glam-tiny" and base not in names:
            problems.append(f"input/{cfg_file} has no job script jobs/{base}.sbatch")
    for name in names:
        where = f"jobs/{name}.sbatch"
        bad = lambda msg: problems.append(f"{where}: {msg}")  # noqa: E731
        try:
            opts, vars_, sources = parse_job(os.path.join(jobs_dir, name + ".sbatch"))
        except ValueError as e:
            bad(str(e))
            continue
        for key in ("job-name", "nodes", "ntasks-per-node", "cpus-per-task", "time",
                    "requeue", "signal", "open-mode", "output"):
            if key not in opts:
                bad(f"no #SBATCH --{key}")
        if opts.get("job-name", name) != name:
            bad(f"--job-name={opts['job-name']} differs from the file name {name}")
        for gpu_key in ("gpus-per-task", "gres", "gpus", "gpus-per-node"):
            if gpu_key in opts:
                bad(f"#SBATCH --{gpu_key}: the script must run on CPU-only nodes; request GPUs from the "
                    "environment (SBATCH_GPUS_PER_TASK=1) or the sbatch command line")
        if "signal" in opts and not re.fullmatch(r"(B:)?USR1@\d+", opts["signal"]):
            bad(f"--signal={opts['signal']}: want USR1@<seconds> or B:USR1@<seconds>")
        if "open-mode" in opts and opts["open-mode"] != "append":
            bad("--open-mode must be append (a requeued job appends to its log)")
        if "ntasks" in opts:
            bad("use --nodes and --ntasks-per-node, not --ntasks")
        if not sources:
            bad("does not source jobs/common.sh")
        model_name = vars_.get("GLAM_MODEL")
        mesh = mesh_of(vars_.get("GLAM_MESH"))
        if model_name is None:
            bad("no GLAM_MODEL=<config name> line")
            continue
        if mesh is None:
            bad(f"no GLAM_MESH=DxM line (got {vars_.get('GLAM_MESH')!r})")
            continue
        cfg_path = os.path.join(root, "input", model_name + ".cfg")
        if not os.path.isfile(cfg_path):
            bad(f"GLAM_MODEL={model_name}: no input/{model_name}.cfg")
            continue
        try:
            nodes, per_node = int(opts.get("nodes", "")), int(opts.get("ntasks-per-node", ""))
        except ValueError:
            bad("--nodes and --ntasks-per-node must be plain integers")
            continue
        cfg = load_config(cfg_path)
        D, M = mesh
        if D * M != nodes * per_node:
            bad(f"mesh {D}x{M} has {D * M} cells but the job has {nodes} nodes x {per_node} tasks = "
                f"{nodes * per_node}")
        for p in mesh_problems(cfg, D, M, per_node):
            bad(f"mesh {D}x{M}: {p}")
        w, state, act = memory(cfg, D, M)
        rows.append((name, nodes, per_node, f"{D}x{M}", cfg[0]["n_experts"], w, state, act))
    if table:
        print(f"{'job':16} {'nodes':>5} {'ranks':>5} {'mesh':>7} {'E':>4} {'params/rank':>12} "
              f"{'w+g+opt GB':>10} {'act GB':>8} {'total GB':>8}")
        for name, nodes, per_node, mesh, E, w, state, act in sorted(rows, key=lambda r: (r[1] * r[2], r[0])):
            print(f"{name:16} {nodes:5} {nodes * per_node:5} {mesh:>7} {E:4} {w / 1e9:11.3f}B "
                  f"{state / GB:10.1f} {act / GB:8.1f} {(state + act) / GB:8.1f}")
    for p in problems:
        print("check_jobs: " + p, file=sys.stderr)
    if not problems:
        print(f"check_jobs: {len(names)} job scripts OK")
    return 1 if problems else 0


def plan(root, model_name, gpu_gb, per_node):
    cfg = load_config(os.path.join(root, "input", model_name + ".cfg"))
    print(f"{model_name}: meshes on nodes of {per_node} ranks; memory per rank (GB), '*' fits {gpu_gb} GB")
    nodes = 1
    while nodes <= 256:
        cells = []
        for M in (m for m in range(1, per_node + 1) if per_node % m == 0):
            D = nodes * per_node // M
            if not mesh_problems(cfg, D, M, per_node):
                _, state, act = memory(cfg, D, M)
                total = (state + act) / GB
                cells.append(f"{D}x{M}: {total:.0f}{'*' if total <= gpu_gb else ''}")
        print(f"  {nodes:3} nodes  " + "  ".join(cells))
        nodes *= 2
    return 0


def self_test(root):
    """Copies input/ and the real job scripts to a temporary root, breaks one job script
    at a time and expects the check to name the problem."""
    good = open(os.path.join(root, "jobs", "glam-1.7b-64e.sbatch")).read()
    cases = [
        ("mesh cells", lambda t: t.replace("GLAM_MESH:-128x2", "GLAM_MESH:-64x2"),
         "mesh 64x2 has 128 cells but the job has 32 nodes x 8 tasks = 256"),
        ("model axis beyond a node", lambda t: t.replace("GLAM_MESH:-128x2", "GLAM_MESH:-16x16"),
         "model axis M=16 does not divide the 8 ranks of a node"),
        ("heads", lambda t: t.replace("--ntasks-per-node=8", "--ntasks-per-node=6")
                             .replace("GLAM_MESH:-128x2", "GLAM_MESH:-64x3"),
         "M=3 does not divide model.n_heads=16"),
        ("experts", lambda t: t.replace("--ntasks-per-node=8", "--ntasks-per-node=6")
                               .replace("GLAM_MESH:-128x2", "GLAM_MESH:-96x2"),
         "n_experts=64 is neither a multiple nor a divisor of D=96"),
        ("another signal", lambda t: t.replace("USR1@300", "TERM@300"), "want USR1@<seconds> or B:USR1@<seconds>"),
        ("GPUs in the script", lambda t: t.replace("#SBATCH --requeue\n", "#SBATCH --requeue\n#SBATCH --gpus-per-task=1\n"),
         "must run on CPU-only nodes"),
        ("no requeue", lambda t: t.replace("#SBATCH --requeue\n", ""), "no #SBATCH --requeue"),
        ("no mesh", lambda t: t.replace("GLAM_MESH:-128x2", "GLAM_MESH=$MESH"), "no GLAM_MESH=DxM line"),
        ("directive after a command", lambda t: t + "#SBATCH --nodes=2\n", "after the first command"),
    ]
    failures = 0
    for what, edit, expect in cases:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(root, "input"), os.path.join(tmp, "input"))
            shutil.copytree(os.path.join(root, "jobs"), os.path.join(tmp, "jobs"))
            with open(os.path.join(tmp, "jobs", "glam-1.7b-64e.sbatch"), "w") as f:
                f.write(edit(good))
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = check(tmp, False)
            ok = rc == 1 and expect in err.getvalue()
            print(f"self-test {what}: {'ok' if ok else 'FAILED'}")
            if not ok:
                print(f"  expected {expect!r} and status 1, got status {rc}:\n{err.getvalue()}")
                failures += 1
    with tempfile.TemporaryDirectory() as tmp:  # a config without its job script
        shutil.copytree(os.path.join(root, "input"), os.path.join(tmp, "input"))
        shutil.copytree(os.path.join(root, "jobs"), os.path.join(tmp, "jobs"))
        os.remove(os.path.join(tmp, "jobs", "glam-8b.sbatch"))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = check(tmp, False)
        ok = rc == 1 and "jobs/glam-8b.sbatch is missing" in err.getvalue()
        print(f"self-test missing job script: {'ok' if ok else 'FAILED'}")
        failures += not ok
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--plan", metavar="MODEL")
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--ranks-per-node", type=int, default=8)
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    if a.self_test:
        return self_test(a.root)
    if a.plan:
        return plan(a.root, a.plan, a.gpu_gb, a.ranks_per_node)
    return check(a.root, a.table)


if __name__ == "__main__":
    sys.exit(main())
