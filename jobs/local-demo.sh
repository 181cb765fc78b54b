#!/usr/bin/env bash
# Runs the demo on this machine with mpirun: corpus, training, generation.
# usage: jobs/local-demo.sh [NP]   (make demo NP=... does the same)
set -euo pipefail
cd "$(dirname "$0")/.."
make demo NP="${1:-1}"
