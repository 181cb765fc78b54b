#!/usr/bin/env bash
# Packs glam's GPU programs with every shared library they need, so they run on
# a GPU machine that has the CUDA driver and toolkit but no MPI, HDF5, Boost,
# SentencePiece or OpenBLAS, and where nothing can be installed.
#
# usage: scripts/gpu-bundle.sh BUILD_DIR OUT.tar.gz
#   BUILD_DIR  a build with the CUDA backend (cmake -DGLAM_CUDA=ON)
#   OUT        the archive; on the GPU machine:
#                mkdir -p /tmp/glam && tar xzf OUT -C /tmp/glam
#                /tmp/glam/run.sh test_cuda_layers      (any program in bin/)
#
# Inside: bin/ (glam, the CUDA tests and benchmarks), lib/ (their libraries and
# those of Open MPI's plugins, found with ldd), and Open MPI's run-time tree
# mirrored under usr/ (orted, the MCA and PMIx plugins, the help texts), which
# run.sh points OPAL_PREFIX and PMIX_INSTALL_PREFIX at. Left out on purpose: the
# C library, libstdc++/libgcc (the machine's newer ones are compatible) and the
# CUDA libraries (the machine's toolkit provides them, the same major version).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT.tar.gz" >&2
  exit 2
fi
build=$1
out=$2
die() { echo "gpu-bundle: error: $*" >&2; exit 2; }

programs=()
for p in glam test_cuda_layers test_cuda_model test_cuda_mesh bench_gpu; do
  f=$(find "$build" -maxdepth 3 -type f -name "$p" -perm -u+x | head -n 1)
  [[ -n $f ]] && programs+=("$f")
done
[[ ${#programs[@]} -gt 0 ]] || die "no programs in $build: build it first"
ls "$build"/tests/cuda/test_cuda_layers >/dev/null 2>&1 ||
  die "$build has no CUDA tests: configure it with -DGLAM_CUDA=ON (nvcc must be present)"

multiarch=$(gcc -print-multiarch)
ompi_lib=/usr/lib/$multiarch/openmpi/lib
pmix_lib=/usr/lib/$multiarch/pmix2/lib
[[ -d $ompi_lib/openmpi3 ]] || die "Open MPI's plugins are not in $ompi_lib/openmpi3 (install openmpi-bin)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/usr/bin" "$stage/usr/share"
cp "${programs[@]}" "$stage/bin/"
cp /usr/bin/orted /usr/bin/orterun "$stage/usr/bin/"
ln -s orterun "$stage/usr/bin/mpirun"
mkdir -p "$stage/input"
cp "$(dirname "${BASH_SOURCE[0]}")"/../input/*.cfg "$stage/input/"
mkdir -p "$stage/usr/lib/$multiarch/openmpi/lib" "$stage/usr/lib/$multiarch/pmix2/lib"
cp -a "$ompi_lib/openmpi3" "$stage/usr/lib/$multiarch/openmpi/lib/"
[[ -d $pmix_lib/pmix ]] && cp -a "$pmix_lib/pmix" "$stage/usr/lib/$multiarch/pmix2/lib/"
cp -a /usr/share/openmpi "$stage/usr/share/"
[[ -d /usr/share/pmix ]] && cp -a /usr/share/pmix "$stage/usr/share/"

# Every library that a program or plugin loads, except the system's own.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libnvidia)'
mapfile -t objects < <(printf '%s\n' "$stage"/bin/* "$stage/usr/bin/orted";
                       find "$stage/usr/lib" -name '*.so*' -type f)
declare -A seen=()
for obj in "${objects[@]}"; do
  while read -r name _ path _; do
    [[ $path == /* ]] || continue
    [[ $name =~ $skip ]] && continue
    [[ -n ${seen[$name]:-} ]] && continue
    seen[$name]=1
    cp -L "$path" "$stage/lib/$name"
  done < <(ldd "$obj" 2>/dev/null | grep '=>')
done

cat > "$stage/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a program of this bundle: run.sh PROGRAM [ARGS...]
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=$1; shift
export OPAL_PREFIX=$here/usr PMIX_INSTALL_PREFIX=$here/usr
export LD_LIBRARY_PATH=$here/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$here/usr/bin:$PATH
# one process, shared memory only: no network transports to probe
export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_mtl=^ofi,psm,psm2 OMPI_MCA_osc=^ucx
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [[ -x $here/bin/$prog ]]; then exec "$here/bin/$prog" "$@"; else exec "$here/usr/bin/$prog" "$@"; fi
RUN
chmod +x "$stage/run.sh"

# check.sh: every GPU check in one go (tests, several ranks on the GPU, benchmark).
cat > "$stage/check.sh" <<'CHECK'
#!/usr/bin/env bash
# usage: check.sh [bench configs...]   (default: glam-0.1b-64e and glam-1.7b shapes)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
status=0
step() {
  echo "== $*"
  "$@"
  local rc=$?
  if [[ $rc -eq 77 ]]; then echo "== SKIPPED (no GPU): $*"
  elif [[ $rc -ne 0 ]]; then echo "== FAILED ($rc): $*"; status=1; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
step ./run.sh test_cuda_layers
step ./run.sh test_cuda_model
for shape in 2x1 1x2 2x2 1x3; do
  np=$(( ${shape%x*} * ${shape#*x} ))
  step ./run.sh mpirun --oversubscribe -np "$np" -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PMIX_INSTALL_PREFIX \
    -x GLAM_TEST_MESH="$shape" -x OMP_NUM_THREADS=1 "$here/bin/test_cuda_mesh"
done
configs=("$@")
[[ ${#configs[@]} -gt 0 ]] || configs=(input/glam-0.1b-64e.cfg input/glam-1.7b.cfg)
step ./run.sh bench_gpu --rows 8 --steps 3 --warmup 1 "${configs[@]}"
exit $status
CHECK
chmod +x "$stage/check.sh"
tar czf "$out" -C "$stage" .
echo "gpu-bundle: $out ($(du -h "$out" | cut -f1)): $(ls "$stage/bin" | tr '\n' ' ')"
