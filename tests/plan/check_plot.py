#!/usr/bin/env python3
"""tools/plot on a real run dir: copies RUN_DIR/metrics.jsonl (written by a short
glam train run) into OUT, adds two validation records and two skipped steps whose
loss is null (as glam writes it) and nan (as older runs did), then the records of
a run that resumed from the checkpoint of step 1 (its steps start again at 2), runs
the plot tool, and checks that it names the run (OUT's base name), counts each step
once, found the resume, and that each expected file is a whole PNG: the 8-byte
signature, an IHDR chunk with a non-zero size first, an IEND chunk last, and every
chunk's CRC right.
usage: check_plot.py PYTHON TOOL RUN_DIR OUT
"""
import json, os, shutil, struct, subprocess, sys, zlib

EXPECTED = ["loss.png", "tokens_per_s.png", "expert_load.png", "dropped.png"]


def check_png(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return "no PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        if pos + 12 > len(data):
            return "truncated chunk"
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if zlib.crc32(kind + body) != crc:
            return f"bad CRC in chunk {kind!r}"
        chunks.append((kind, body))
        pos += 12 + n
    if not chunks or chunks[0][0] != b"IHDR" or chunks[-1][0] != b"IEND":
        return "chunks do not start with IHDR and end with IEND"
    w, h = struct.unpack(">II", chunks[0][1][:8])
    if w == 0 or h == 0:
        return "zero size"
    return None


def main():
    python, tool, run_dir, out = sys.argv[1:5]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write(open(os.path.join(run_dir, "metrics.jsonl")).read())
        f.write('{"step": 1, "val_loss": 5.5}\n{"step": 3, "val_loss": 5.25}\n')
        # a skipped step as glam train writes it (non-finite values as null), and one
        # as runs before that wrote it (nan, as C++ prints it)
        last = json.loads(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()[-1])
        last.update(step=last["step"] + 1, skipped=True, loss=None, grad_norm=None)
        f.write(json.dumps(last) + "\n")
        last.update(step=last["step"] + 1, loss=1.0)
        f.write(json.dumps(last).replace('"loss": ', '"loss": nan, "was": ', 1) + "\n")
        # resumed from step 1: steps 2.. again (the later records of a step are kept)
        for step in range(2, last["step"] + 1):
            last.update(step=step, skipped=False, loss=2.0, grad_norm=1.0)
            f.write(json.dumps(last) + "\n")
        n_steps = last["step"]
    r = subprocess.run([python, tool, out, "--out", os.path.join(out, "plots")], capture_output=True, text=True)
    print(r.stdout, r.stderr)
    if r.returncode != 0:
        sys.exit(f"FAILED: tools/plot exited {r.returncode}")
    expect = f"plot: {os.path.basename(out)}: {n_steps} steps, 2 validation records, resumed after step 1 ->"
    if expect not in r.stdout:
        sys.exit(f"FAILED: expected '{expect}' (the run's name, each step once, the validation records, the resume)")
    bad = []
    for name in EXPECTED:
        path = os.path.join(out, "plots", name)
        why = check_png(path) if os.path.isfile(path) else "missing"
        print(f"{name}: {why or 'valid PNG'}")
        if why:
            bad.append(name)
    if bad:
        sys.exit(f"FAILED: {', '.join(bad)}")


if __name__ == "__main__":
    main()
