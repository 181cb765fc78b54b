#!/usr/bin/env python3
"""Checks the SLURM job scripts jobs/*.sbatch against their configs input/*.cfg.

    check_jobs.py [--root DIR] [--glam BIN]          check every job script; exit 1 on a problem
    check_jobs.py [--root DIR] [--glam BIN] --table  also print each job's layout and its plan
    check_jobs.py [--root DIR] [--glam BIN] --self-test
                                                     the checks reject broken job scripts

Per job script: the #SBATCH lines (job name = file name, nodes, --ntasks-per-node,
--cpus-per-task, --time, --requeue, --signal=USR1@N or B:USR1@N (jobs/common.sh
forwards a signal to the batch shell to the step), --open-mode=append, --output; no
--gpus-per-task or --gres, so that the job runs on CPU-only nodes: GPUs come from
the environment, SBATCH_GPUS_PER_TASK=1), the GLAM_MODEL line, the
GLAM_MESH="${GLAM_MESH:-DxM}" line (the default mesh; the environment may replace it),
the optional GLAM_SETTINGS="${GLAM_SETTINGS:-...}" line (glam train options of the
plan's memory savings: train.micro_rows, remat, shard_state, shard_weights,
exchange_dtype, exchange_chunks) and the `source .../jobs/common.sh` line; then the
default mesh DxM against the config, as glam checks it at start
(src/commands/train.cpp, src/model/params.cpp):
  D * M = nodes * ntasks-per-node; M divides ntasks-per-node (a model group lies
  inside one node: srun places consecutive ranks on one node);
  M divides n_heads, d_ff and vocab_size;
  E = n_experts: 0, or E % D == 0 or D % E == 0;
  D divides train.batch_rows; an MoE model's group_size divides the tokens of a data
  rank (batch_rows / D * seq_len); train.micro_rows divides the rows of a data rank;
  train.shard_weights only with train.shard_state.
Then the plan: `glam plan --json` (--glam, default ROOT/build/glam) of the job's
config, mesh and settings on its nodes of 8 H100 80 GiB (input/clusters/h100-8.ini
for one node, h100-1024.ini for more) must fit with 10% to spare: memory.total <=
72 GiB per rank. tools/plan-table --jobs chooses the layouts (jobs/README.md).
Every paper config input/glam-*.cfg (all but glam-tiny) must have its job script.
"""
import argparse
import concurrent.futures
import configparser
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REQUIRED_JOBS = [
    "glam-0.1b", "glam-0.1b-64e", "glam-1.7b", "glam-1.7b-32e", "glam-1.7b-64e",
    "glam-1.7b-128e", "glam-1.7b-256e", "glam-8b", "glam-8b-64e", "glam-137b",
    "glam-64b-64e",
]
GIB = 2**30
GPU_GIB, SPARE = 80, 0.10  # nodes of 8 x 80 GiB, 10% of it kept free (tools/plan-table --jobs)
# GLAM_SETTINGS keys and the values each takes.
SETTINGS = {
    "--train.micro_rows": r"\d+", "--train.remat": "true|false", "--train.shard_state": "true|false",
    "--train.shard_weights": "true|false", "--train.exchange_dtype": "fp32|bf16",
    "--train.exchange_chunks": r"[1-9]\d*",
}


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
            m = re.fullmatch(r"(\w+)=(\"[^\"]*\"|'[^']*'|\S+)(?:\s+#.*)?", s)
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


def parse_settings(text):
    """'--train.remat true --train.micro_rows 8' -> ({key: value}, [problems])."""
    words, out, problems = text.split(), {}, []
    if len(words) % 2:
        problems.append(f"GLAM_SETTINGS {text!r}: want pairs of --train.key value")
    for key, value in zip(words[::2], words[1::2]):
        if key not in SETTINGS:
            problems.append(f"GLAM_SETTINGS: {key} is not one of {', '.join(SETTINGS)}")
        elif not re.fullmatch(SETTINGS[key], value):
            problems.append(f"GLAM_SETTINGS: {key} {value}: want {SETTINGS[key]}")
        elif key in out:
            problems.append(f"GLAM_SETTINGS: {key} twice")
        else:
            out[key] = value
    return out, problems


def settings_problems(cfg, D, settings):
    rank_rows = cfg[1]["batch_rows"] // D
    out = []
    micro = int(settings.get("--train.micro_rows", 0))
    if micro and rank_rows % micro:
        out.append(f"train.micro_rows={micro} does not divide the {rank_rows} rows of a data rank")
    if settings.get("--train.shard_weights") == "true" and settings.get("--train.shard_state") != "true":
        out.append("train.shard_weights needs train.shard_state")
    return out


def plan(root, glam, model_name, mesh, nodes, settings):
    """(glam plan --json of the job, None) or (None, why it failed)."""
    cluster = os.path.join(root, "input", "clusters", "h100-8.ini" if nodes == 1 else "h100-1024.ini")
    cmd = [glam, "plan", "--config", os.path.join(root, "input", model_name + ".cfg"), "--mesh", mesh,
           "--cluster", cluster, "--device-memory", f"{GPU_GIB}GiB", "--json"]
    for key, value in settings.items():
        cmd += [key, value]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"glam plan failed (status {r.returncode}): {r.stderr.strip()}"
    return json.loads(r.stdout), None


def check(root, table, glam):
    jobs_dir = os.path.join(root, "jobs")
    problems, rows, pending = [], [], []
    pool = concurrent.futures.ThreadPoolExecutor(8)
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
        layout = [f"mesh {D}x{M}: {p}" for p in mesh_problems(cfg, D, M, per_node)]
        settings, settings_bad = parse_settings(vars_.get("GLAM_SETTINGS", ""))
        layout += settings_bad + settings_problems(cfg, D, settings)
        for p in layout:
            bad(p)
        if layout:
            continue
        pending.append((where, name, nodes, per_node, f"{D}x{M}", vars_.get("GLAM_SETTINGS", ""),
                        pool.submit(plan, root, glam, model_name, f"{D}x{M}", nodes, settings)))
    for where, name, nodes, per_node, mesh, settings, future in pending:  # the plans, run 8 at a time
        j, why = future.result()
        if j is None:
            problems.append(f"{where}: {why}")
            continue
        total, limit = j["memory"]["total"], (1 - SPARE) * GPU_GIB * GIB
        if total > limit:
            problems.append(f"{where}: mesh {mesh} with settings {settings!r}: glam plan counts "
                            f"{total / GIB:.1f} GiB per rank, more than {limit / GIB:.0f} GiB ({GPU_GIB} GiB "
                            f"less {SPARE:.0%} to spare): does not fit (tools/plan-table --jobs chooses one that does)")
        rows.append((name, nodes, per_node, mesh, settings or "-", total, j["predicted"]["mfu"]))
    pool.shutdown()
    if table:
        print(f"{'job':16} {'nodes':>5} {'ranks':>5} {'mesh':>6} {'GiB/rank':>8} {'MFU':>6}  settings")
        for name, nodes, per_node, mesh, settings, total, mfu in sorted(rows, key=lambda r: (r[1] * r[2], r[0])):
            print(f"{name:16} {nodes:5} {nodes * per_node:5} {mesh:>6} {total / GIB:8.1f} {mfu:6.1%}  {settings}")
    for p in problems:
        print("check_jobs: " + p, file=sys.stderr)
    if not problems:
        print(f"check_jobs: {len(names)} job scripts OK")
    return 1 if problems else 0


def self_test(root, glam):
    """Copies input/ and the real job scripts to a temporary root, breaks one job script
    (glam-1.7b-64e: 1 node, mesh 8x1, micro_rows 4) at a time and expects the check to
    name the problem."""
    good = open(os.path.join(root, "jobs", "glam-1.7b-64e.sbatch")).read()
    settings = 'GLAM_SETTINGS="${GLAM_SETTINGS:-'
    cases = [
        ("mesh cells", lambda t: t.replace("GLAM_MESH:-8x1", "GLAM_MESH:-4x1"),
         "mesh 4x1 has 4 cells but the job has 1 nodes x 8 tasks = 8"),
        ("model axis beyond a node", lambda t: t.replace("--nodes=1", "--nodes=2")
                                              .replace("GLAM_MESH:-8x1", "GLAM_MESH:-1x16"),
         "model axis M=16 does not divide the 8 ranks of a node"),
        ("heads", lambda t: t.replace("--ntasks-per-node=8", "--ntasks-per-node=6")
                             .replace("GLAM_MESH:-8x1", "GLAM_MESH:-2x3"),
         "M=3 does not divide model.n_heads=16"),
        ("experts", lambda t: t.replace("--ntasks-per-node=8", "--ntasks-per-node=6")
                               .replace("GLAM_MESH:-8x1", "GLAM_MESH:-6x1"),
         "n_experts=64 is neither a multiple nor a divisor of D=6"),
        ("micro-steps", lambda t: t.replace("--train.micro_rows 4", "--train.micro_rows 3"),
         "train.micro_rows=3 does not divide the 128 rows of a data rank"),
        ("shard_weights alone", lambda t: t.replace(settings, settings + "--train.shard_weights true "),
         "train.shard_weights needs train.shard_state"),
        ("unknown setting", lambda t: t.replace(settings, settings + "--train.lr 0.1 "),
         "--train.lr is not one of"),
        ("does not fit", lambda t: t.replace("--train.micro_rows 4 ", ""),
         "per rank, more than 72 GiB (80 GiB less 10% to spare): does not fit"),
        ("another signal", lambda t: t.replace("USR1@300", "TERM@300"), "want USR1@<seconds> or B:USR1@<seconds>"),
        ("GPUs in the script", lambda t: t.replace("#SBATCH --requeue\n", "#SBATCH --requeue\n#SBATCH --gpus-per-task=1\n"),
         "must run on CPU-only nodes"),
        ("no requeue", lambda t: t.replace("#SBATCH --requeue\n", ""), "no #SBATCH --requeue"),
        ("no mesh", lambda t: t.replace("GLAM_MESH:-8x1", "GLAM_MESH=$MESH"), "no GLAM_MESH=DxM line"),
        ("directive after a command", lambda t: t + "#SBATCH --nodes=2\n", "after the first command"),
    ]
    failures = 0
    for what, edit, expect in cases:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(root, "input"), os.path.join(tmp, "input"))
            shutil.copytree(os.path.join(root, "jobs"), os.path.join(tmp, "jobs"))
            broken = edit(good)
            if broken == good:
                print(f"self-test {what}: FAILED: the edit does not apply to jobs/glam-1.7b-64e.sbatch")
                failures += 1
                continue
            with open(os.path.join(tmp, "jobs", "glam-1.7b-64e.sbatch"), "w") as f:
                f.write(broken)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = check(tmp, False, glam)
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
            rc = check(tmp, False, glam)
        ok = rc == 1 and "jobs/glam-8b.sbatch is missing" in err.getvalue()
        print(f"self-test missing job script: {'ok' if ok else 'FAILED'}")
        failures += not ok
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap.add_argument("--glam", help="the glam executable for the plan check (default: ROOT/build/glam)")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args()
    glam = a.glam or os.path.join(a.root, "build", "glam")
    if not os.access(glam, os.X_OK):
        print(f"check_jobs: no glam executable at {glam} for the plan check (build it, or --glam BIN)",
              file=sys.stderr)
        return 1
    if a.self_test:
        return self_test(a.root, glam)
    return check(a.root, a.table, glam)


if __name__ == "__main__":
    sys.exit(main())
