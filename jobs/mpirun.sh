#!/usr/bin/env bash
# mpirun for `glam train` outside SLURM that always stops with a checkpoint:
#   jobs/mpirun.sh [mpirun options] build/glam train ...
# Open MPI's mpirun does not pass SIGTERM or SIGINT on: it aborts the job, sending
# the ranks SIGTERM one odls_base_sigkill_timeout (1 s) late and SIGKILL one more
# later, which cuts a checkpoint short. This script runs mpirun in the background
# and turns SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 into SIGUSR1 to mpirun, which
# forwards it: every rank finishes its step, writes a checkpoint and exits 75,
# the status this script then exits with. `timeout 3600 jobs/mpirun.sh ...` works.
# MPIRUN names the launcher (default: mpirun).
set -uo pipefail
[[ $# -gt 0 ]] || { echo "usage: jobs/mpirun.sh [mpirun options] PROGRAM [ARGS...]" >&2; exit 2; }
# Its own process group (set -m): a Ctrl-C at a terminal reaches this script, not mpirun.
set -m
"${MPIRUN:-mpirun}" "$@" < /dev/null &
pid=$!
set +m
# shellcheck disable=SC2317  # called from the traps
stop() {
  echo "jobs/mpirun.sh: SIG$1: glam finishes its step, writes a checkpoint and exits 75" >&2
  kill -USR1 "$pid" 2> /dev/null || true
}
trap 'stop TERM' TERM
trap 'stop INT' INT
trap 'stop USR1' USR1
# Polled, not `wait`ed: bash 5.2 may record -1 for a child reaped while a trap interrupts `wait`.
while kill -0 "$pid" 2> /dev/null; do sleep 0.2; done
wait "$pid"
