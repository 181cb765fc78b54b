#!/usr/bin/env bash
# Runs the demo on this machine with mpirun: corpus, training, generation
# (a sampled continuation of the prompt, then the greedy one).
# usage: jobs/local-demo.sh [NP] [MESH]   (make demo NP=4 MESH=2x2 does the same)
set -euo pipefail
cd "$(dirname "$0")/.."
make demo NP="${1:-4}" MESH="${2:-2x2}"
