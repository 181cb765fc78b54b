#!/usr/bin/env bash
# Installs the Debian packages glam builds and runs with. Idempotent: when every
# package is present it only checks and returns in a second.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools
  libboost-program-options-dev
  libboost-context-dev  # the CUDA emulation's fibers (tests/cuda_emu)
  catch2
  libopenblas-dev
  libdnnl-dev ocl-icd-opencl-dev  # oneDNN; its CMake config looks for OpenCL
  libsentencepiece-dev sentencepiece
  nlohmann-json3-dev
  python3-h5py python3-numpy
  zlib1g-dev
  # tests/rundir/slurm_test.sh: a one-node SLURM on localhost (slurmctld, slurmd,
  # sbatch/scancel; munge comes with slurmd, the test uses auth/none)
  slurm-wlm
  # tools/plot
  python3-matplotlib
  # text for the demo corpus
  fortunes wordnet-base jargon-text
  bible-kjv bible-kjv-text
)
# scripts/deps.sh --bench adds what `make bench` and `make moe-vs-dense` need (the
# PyTorch peer and the plot); the base list above is what builds and tests use.
BENCH_PACKAGES=(python3-torch python3-matplotlib)
if [[ "${1:-}" == "--bench" ]]; then PACKAGES+=("${BENCH_PACKAGES[@]}"); fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
echo "deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
