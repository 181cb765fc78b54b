#!/usr/bin/env bash
# Packs glam's GPU programs with every shared library they need, so they run on
# a GPU machine that has the CUDA driver and toolkit but no MPI, HDF5, Boost,
# SentencePiece or OpenBLAS, no ssh/rsh, and where nothing can be installed.
#
# usage: scripts/gpu-bundle.sh BUILD_DIR OUT.tar.gz
#        scripts/gpu-bundle.sh --programs      (the CMake targets it needs, for make)
#   BUILD_DIR  a build with the CUDA backend (cmake -DGLAM_CUDA=ON) in which every
#              program below is built; a missing one stops it (exit 2, named)
#   OUT        the archive; on the GPU machine (docs/GPU.md):
#                mkdir -p /tmp/g && tar xzf OUT -C /tmp/g && /tmp/g/check.sh
#                /tmp/g/run.sh PROGRAM ARGS...         (any program in bin/, or mpirun)
#
# Inside: bin/ (glam, the CUDA tests, bench_gpu), lib/ (their libraries and those
# of Open MPI's plugins, found with ldd), Open MPI's run-time tree mirrored under
# usr/ (orted, mpirun, the MCA and PMIx plugins, the help texts), which run.sh
# points OPAL_PREFIX (and PMIX_PREFIX, at PMIx's own prefix) at, input/*.cfg, run.sh and
# check.sh. Left out on purpose: the C library, libstdc++/libgcc (the machine's
# newer ones are compatible), the CUDA driver and cuBLAS (the machine's toolkit
# provides them, the same major version; cuda-libs.txt names them), and the Open
# MPI plugins for networks between nodes (InfiniBand, libfabric, UCX, PSM): the
# bundle runs ranks of one node over shared memory. Programs and libraries are
# stripped. GPU_BUNDLE_MAX_MB (default 56) caps the archive: a larger one fails
# (it must travel with the source tree in 64 MiB).
set -euo pipefail

# Every program check.sh runs (and glam, for run.sh): CMake target = file name.
tests=(test_cuda_layers test_cuda_model test_cuda_mesh)
tools=(glam bench_gpu)
if [[ ${1:-} == --programs ]]; then
  echo "${tools[*]} ${tests[*]}"
  exit 0
fi
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT.tar.gz | $0 --programs" >&2
  exit 2
fi
build=$1
out=$2
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "gpu-bundle: error: $*" >&2; exit 2; }
[[ -d $build ]] || die "no build directory $build"

programs=() missing=()
for p in "${tools[@]}"; do
  if [[ -x $build/$p ]]; then programs+=("$build/$p"); else missing+=("$p"); fi
done
for p in "${tests[@]}"; do
  if [[ -x $build/tests/cuda/$p ]]; then programs+=("$build/tests/cuda/$p"); else missing+=("$p"); fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  die "missing program(s) that check.sh needs: ${missing[*]} (not in $build; configure it with" \
      "-DGLAM_CUDA=ON and build them: cmake --build $build --target $("$0" --programs))"
fi

multiarch=$(gcc -print-multiarch)
ompi_lib=/usr/lib/$multiarch/openmpi/lib
pmix_lib=/usr/lib/$multiarch/pmix2/lib
[[ -d $ompi_lib/openmpi3 ]] || die "Open MPI's plugins are not in $ompi_lib/openmpi3 (install openmpi-bin)"
for f in /usr/bin/orted /usr/bin/orterun; do [[ -x $f ]] || die "$f is missing (install openmpi-bin)"; done
command -v strip >/dev/null || die "strip is missing (install binutils)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/usr/bin" "$stage/usr/share" "$stage/input"
cp "${programs[@]}" "$stage/bin/"
cp /usr/bin/orted /usr/bin/orterun "$stage/usr/bin/"
ln -s orterun "$stage/usr/bin/mpirun"
ln -s orterun "$stage/usr/bin/mpiexec"
cp "$src"/input/*.cfg "$stage/input/"
plugins=$stage/usr/lib/$multiarch/openmpi/lib/openmpi3
mkdir -p "$(dirname "$plugins")" "$stage/usr/lib/$multiarch/pmix2/lib"
cp -a "$ompi_lib/openmpi3" "$plugins"
[[ -d $pmix_lib/pmix ]] && cp -a "$pmix_lib/pmix" "$stage/usr/lib/$multiarch/pmix2/lib/"
[[ -d $pmix_lib/../share ]] && cp -a "$pmix_lib/../share" "$stage/usr/lib/$multiarch/pmix2/"
cp -a /usr/share/openmpi "$stage/usr/share/"
[[ -d /usr/share/pmix ]] && cp -a /usr/share/pmix "$stage/usr/share/"

# Plugins for networks between nodes, OpenSHMEM and the debugger's message
# queues: never used by ranks of one node over shared memory (run.sh selects
# btl self,vader and pml ob1), and they pull in libfabric, UCX, verbs and PSM.
(cd "$plugins" && rm -f mca_btl_openib.so mca_btl_ofi.so mca_mtl_*.so mca_pml_ucx.so mca_pml_cm.so \
   mca_osc_ucx.so mca_atomic_*.so mca_spml_*.so mca_sshmem_*.so mca_scoll_*.so mca_memheap_*.so \
   libompi_dbg_msgq.so)

# Every library that a program or plugin loads, except the system's own and
# CUDA's (the machine's toolkit and driver provide them; their names are kept
# in cuda-libs.txt for run.sh to look for). The CUDA runtime is small and is
# carried: the programs were built against this one.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libnvidia)'
cuda_provided='^(libcublas|libcublasLt|libnvrtc|libnvJitLink)'
mapfile -t objects < <(printf '%s\n' "$stage"/bin/* "$stage/usr/bin/orted" "$stage/usr/bin/orterun";
                       find "$stage/usr/lib" -name '*.so*' -type f)
declare -A seen=()
: > "$stage/cuda-libs.txt"
for obj in "${objects[@]}"; do
  while read -r name _ path _; do
    [[ $path == /* ]] || continue
    [[ $name =~ $skip ]] && continue
    [[ -n ${seen[$name]:-} ]] && continue
    seen[$name]=1
    if [[ $name =~ $cuda_provided ]]; then echo "$name" >> "$stage/cuda-libs.txt"; continue; fi
    cp -L "$path" "$stage/lib/$name"
  done < <(ldd "$obj" 2>/dev/null | grep '=>')
done
chmod u+w "$stage"/bin/* "$stage"/lib/* "$stage"/usr/bin/orted "$stage"/usr/bin/orterun
strip --strip-unneeded "$stage"/bin/* "$stage"/lib/* "$stage"/usr/bin/orted "$stage"/usr/bin/orterun
find "$stage/usr/lib" -name '*.so' -type f -exec strip --strip-unneeded {} +

cat > "$stage/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a program of this bundle: run.sh PROGRAM [ARGS...]   (bin/*, or mpirun/mpiexec)
#   run.sh mpirun -np 4 -x GLAM_TEST_MESH=2x2 test_cuda_mesh   (ranks of one node)
#   run.sh --check-libs        every program's libraries resolve (else exit 1, named)
#   run.sh --env               the environment it sets, for a shell: eval "$(run.sh --env)"
# Open MPI runs without ssh/rsh (its launcher's agent is `false`: never needed on
# one node), over shared memory only (btl self,vader; pml ob1), as root.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Open MPI's and PMIx's install prefixes, relocated here (plugins, help texts)
pmix_prefix=$(echo "$here"/usr/lib/*/pmix2)
export OPAL_PREFIX=$here/usr PMIX_PREFIX=$pmix_prefix PMIX_INSTALL_PREFIX=$pmix_prefix
# (Debian's PMIx keeps absolute plugin and data folders: they are set one by one)
export PMIX_PKGLIBDIR=$pmix_prefix/lib/pmix PMIX_PKGDATADIR=$pmix_prefix/share/pmix

# CUDA: the driver (libcuda) and cuBLAS come from the machine. Standard places
# first; if cuBLAS is still not found, look where toolkits and Python wheels put it.
cuda_dirs=
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
  [[ -d $d ]] && cuda_dirs+=:$d
done
found() {  # found SONAME: in cuda_dirs, LD_LIBRARY_PATH or ld.so's cache
  local d
  for d in ${cuda_dirs//:/ } ${LD_LIBRARY_PATH//:/ }; do [[ -e $d/$1 ]] && return 0; done
  /sbin/ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$1 " && return 0
  return 1
}
if [[ -s $here/cuda-libs.txt ]]; then
  while read -r so; do
    found "$so" && continue
    for f in /usr/local/cuda*/lib64/"$so" /usr/local/cuda*/targets/*/lib/"$so" /usr/lib/*-linux-gnu/"$so" \
             /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib/"$so" \
             /usr/local/lib/python3*/dist-packages/nvidia/*/lib/"$so" \
             /usr/lib/python3/dist-packages/nvidia/*/lib/"$so"; do
      [[ -e $f ]] && { cuda_dirs+=:$(dirname "$f"); break; }
    done
  done < "$here/cuda-libs.txt"
fi
export LD_LIBRARY_PATH=$here/lib$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=$here/usr/bin:$here/bin:$PATH
[[ -d /usr/local/nvidia/bin ]] && PATH=$PATH:/usr/local/nvidia/bin

# Open MPI without ssh or rsh: singleton MPI_Init and mpirun on one node start
# no remote daemon, but the launcher's rsh component insists on finding an agent.
export OMPI_MCA_plm_rsh_agent=false
# shared memory only; no single-copy (CMA/ptrace), which containers often refuse
export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_btl_vader_single_copy_mechanism=none
# no system or user MCA parameter files of another Open MPI
export OMPI_MCA_mca_base_param_files=/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# vader's shared-memory files go to /dev/shm; where a VM or container has none, to /tmp
[[ -d /dev/shm && -w /dev/shm ]] || export OMPI_MCA_btl_vader_backing_directory=/tmp

case ${1:-} in
  "")
    echo "usage: run.sh PROGRAM [ARGS...] | --check-libs | --env" >&2; exit 2 ;;
  --env)
    for v in LD_LIBRARY_PATH PATH $(compgen -e | grep -E '^(OPAL_PREFIX|PMIX_|OMPI_MCA_|OMPI_ALLOW_)'); do
      printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0 ;;
  --check-libs)
    rc=0
    for f in "$here"/bin/* "$here"/usr/bin/orted "$here"/usr/bin/orterun \
             $(find "$here/usr/lib" -name '*.so' -type f); do
      missing=$(ldd "$f" 2>&1 | grep 'not found' | awk '{print $1}' | sort -u | tr '\n' ' ')
      if [[ -n $missing ]]; then echo "run.sh: ${f#$here/} needs $missing: not found"; rc=1; fi
    done
    for f in "$here"/bin/*; do
      echo "${f#$here/}: $(ldd "$f" | grep -E 'libcuda|libcublas|libcudart' | awk '{print $1 " -> " $3}' | tr '\n' ' ')"
    done
    [[ $rc -eq 0 ]] && echo "run.sh: every library of bin/ and of Open MPI resolves" ||
      echo "run.sh: cuBLAS and the CUDA driver must come from the machine (cuda-libs.txt);" \
           "set LD_LIBRARY_PATH to their folder"
    exit $rc ;;
esac
prog=$1; shift
if [[ -x $here/bin/$prog ]]; then exec "$here/bin/$prog" "$@"; else exec "$here/usr/bin/$prog" "$@"; fi
RUN
chmod +x "$stage/run.sh"
cp "$src/scripts/gpu-check.sh" "$stage/check.sh"
echo "glam $(git -C "$src" describe --always --dirty 2>/dev/null || echo '(no git)'), bundled $(date -u '+%F %T UTC')" \
  > "$stage/VERSION"
chmod +x "$stage/check.sh"

# gzip -6 in one pass; the size must leave room for the source tree it travels with
tar czf "$out" -C "$stage" .
bytes=$(stat -c %s "$out")
max_mb=${GPU_BUNDLE_MAX_MB:-56}
echo "gpu-bundle: $out: $((bytes / 1048576)).$(( (bytes % 1048576) * 10 / 1048576 )) MiB" \
     "($(du -sh "$stage" | cut -f1) unpacked; limit ${max_mb} MiB): $(ls "$stage/bin" | tr '\n' ' ')"
if (( bytes > max_mb * 1048576 )); then
  rm -f "$out"
  die "the archive is over GPU_BUNDLE_MAX_MB=$max_mb MiB: it would not travel with the tree (64 MiB)"
fi
