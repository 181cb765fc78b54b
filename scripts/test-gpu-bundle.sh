#!/usr/bin/env bash
# Tests the GPU bundle (scripts/gpu-bundle.sh) on this machine as if it were the
# GPU machine: no ssh or rsh, no Open MPI, PMIx, HDF5, Boost, SentencePiece or
# OpenBLAS (the gpu_bundle CTest).
#
# usage: scripts/test-gpu-bundle.sh BUILD_DIR WORK_DIR
#
#  1. gpu-bundle.sh refuses a build that lacks a program check.sh runs: exit 2,
#     naming it (a build dir holding all but test_cuda_mesh);
#  2. builds the bundle of BUILD_DIR into WORK_DIR/glam-gpu.tar.gz (size printed);
#  3. in a private mount namespace (unshare --mount) hides, by mounting empty files
#     and folders over them: ssh, rsh and the other Open MPI and OpenSSH programs,
#     Open MPI's and PMIx's folders, and every system copy of a library the bundle
#     carries plus any Open MPI, PMIx, HDF5, Boost, SentencePiece, BLAS/LAPACK
#     (OpenBLAS) library (except those this script's own tools load); then unpacks
#     the bundle and, under `env -i` (a bare environment):
#       - run.sh bench_gpu --mpi-check             singleton MPI_Init: must pass
#       - run.sh mpirun -np 2 bench_gpu --mpi-check  both ranks exchange: must pass
#       - run.sh test_cuda_layers; mpirun -np 2 test_cuda_mesh (2x1 mesh)
#                                                  pass, or 77 ("no GPU") here: their
#                                                  libraries all resolved
#       - check.sh --no-gpu-ok                     0 failed; check.log, summary.txt,
#                                                  steps.tar.gz under $OUT, no more
#       - check.sh                                 must FAIL without a GPU (77 is a
#                                                  failure there), unless one is visible
#       - MPI_Init without run.sh's rsh agent      reported: whether the namespace
#                                                  reproduces Open MPI's need for ssh
# Exit 0 when all hold, 1 when one does not, 77 (SKIPPED) only when this machine
# does not permit a mount namespace (unshare), which the test needs.
set -uo pipefail

if [[ ${1:-} == --inner ]]; then inner=1; shift; else inner=0; fi
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR WORK_DIR" >&2
  exit 2
fi
build=$(cd "$1" && pwd) || exit 2
work=$2
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self=$src/scripts/test-gpu-bundle.sh
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }
now_s() { date +%s; }

if (( ! inner )); then
  t0=$(now_s)
  mkdir -p "$work" || exit 2
  work=$(cd "$work" && pwd)
  command -v unshare >/dev/null || { echo "SKIPPED: no unshare(1) here: the test needs a mount namespace"; exit 77; }
  if ! unshare --mount --fork true 2>"$work/unshare.err"; then
    echo "SKIPPED: mount namespaces are not permitted here (unshare --mount: $(cat "$work/unshare.err")):"
    echo "         the test hides the system's MPI, HDF5, Boost and ssh inside one"
    exit 77
  fi

  # 1. a build without test_cuda_mesh: refused, naming it
  fake=$work/fake-build
  rm -rf "$fake" && mkdir -p "$fake/tests/cuda"
  for p in glam bench_gpu; do ln -s "$build/$p" "$fake/$p"; done
  for p in test_cuda_layers test_cuda_model; do ln -s "$build/tests/cuda/$p" "$fake/tests/cuda/$p"; done
  "$src/scripts/gpu-bundle.sh" "$fake" "$work/fake.tar.gz" > "$work/fake.log" 2>&1
  rc=$?
  cat "$work/fake.log"
  if [[ $rc -eq 2 ]] && grep -q 'test_cuda_mesh' "$work/fake.log" && [[ ! -e $work/fake.tar.gz ]]; then
    ok "gpu-bundle.sh refuses a build without test_cuda_mesh (exit 2, named)"
  else
    fail "gpu-bundle.sh on a build without test_cuda_mesh: exit $rc, expected 2 naming test_cuda_mesh"
  fi

  # 2. the bundle
  t1=$(now_s)
  rm -f "$work/glam-gpu.tar.gz"
  if ! "$src/scripts/gpu-bundle.sh" "$build" "$work/glam-gpu.tar.gz"; then
    echo "FAIL: gpu-bundle.sh $build failed"
    exit 1
  fi
  echo "bundle made in $(( $(now_s) - t1 ))s"

  # 3. the rest inside a mount namespace
  unshare --mount --fork "$self" --inner "$build" "$work"
  rc=$?
  echo "gpu_bundle test: $(( $(now_s) - t0 ))s in all"
  [[ $rc -eq 0 && $failures -eq 0 ]] && exit 0
  exit 1
fi

# ---- inside the namespace ------------------------------------------------------------
mount --make-rprivate / || { echo "FAIL: mount --make-rprivate /"; exit 1; }
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
hide=$work/hide
rm -rf "$hide" && mkdir -p "$hide/dir" && : > "$hide/file" && chmod 0644 "$hide/file"
hidden=0
hide_path() {  # bind an empty file or folder over the real path behind $1
  local real
  real=$(realpath -e "$1" 2>/dev/null) || return 0
  if [[ -d $real ]]; then mount --bind "$hide/dir" "$real"; else mount --bind "$hide/file" "$real"; fi &&
    hidden=$((hidden + 1))
}

# Libraries this script's own tools need stay visible (they are the machine's own there too).
declare -A keep=()
for t in bash tar gzip date stat timeout grep sed awk cmp diff find env ls cat mkdir rm cp mv tail head \
         sort tr cut wc nproc hostname realpath dirname sleep ldd mount unshare; do
  exe=$(command -v "$t") || continue
  while read -r name _; do keep[$name]=1; done < <(ldd "$exe" 2>/dev/null | grep '=>')
done

unpacked=$work/unpacked
rm -rf "$unpacked" && mkdir -p "$unpacked"
tar xzf "$work/glam-gpu.tar.gz" -C "$unpacked" || { echo "FAIL: cannot unpack the bundle"; exit 1; }

# the programs
for f in /usr/bin/* /usr/sbin/*; do
  case ${f##*/} in
    ssh|rsh|scp|sftp|slogin|ssh-*|rcp|rlogin|remsh|mpi*|orte*|orted|ompi*|opal*|oshmem*|oshrun|shmem*|prte*|pmix*|h5*)
      hide_path "$f" ;;
  esac
done
# the folders of Open MPI, PMIx, HDF5, BLAS/LAPACK
for d in /usr/lib/$multiarch/openmpi /usr/lib/$multiarch/pmix2 /usr/lib/$multiarch/pmix /usr/share/openmpi \
         /usr/share/pmix /etc/openmpi /etc/pmix /usr/lib/$multiarch/hdf5 /usr/lib/$multiarch/openblas-pthread \
         /usr/lib/$multiarch/openblas-openmp /usr/lib/$multiarch/openblas-serial /usr/lib/$multiarch/blas \
         /usr/lib/$multiarch/lapack /usr/lib/$multiarch/hwloc; do
  [[ -e $d ]] && hide_path "$d"
done
# the libraries: every one the bundle carries, and the families it must not take from the system
libdirs=(/usr/lib/$multiarch /lib/$multiarch /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
for lib in "$unpacked"/lib/*; do
  name=${lib##*/}
  [[ -n ${keep[$name]:-} ]] && continue
  for d in "${libdirs[@]}"; do [[ -e $d/$name ]] && hide_path "$d/$name"; done
done
for d in /usr/lib/$multiarch; do
  for f in "$d"/lib{mpi,open-pal,open-rte,pmix,hdf5,boost_,sentencepiece,openblas,blas,lapack,hwloc,event,dnnl}*.so*; do
    [[ -e $f && -z ${keep[${f##*/}]:-} ]] && hide_path "$f"
  done
done
echo "hid $hidden files and folders of the system"

# the machine now looks like the GPU machine
on_path() {  # an executable $1 on PATH, as execvp and Open MPI look for it (bash's command -v
  local d     # also names files that are not executable)
  local IFS=:
  for d in $PATH; do [[ -f $d/$1 && -x $d/$1 ]] && { echo "$d/$1"; return 0; }; done
  return 1
}
for t in ssh rsh mpirun orted; do
  if p=$(on_path "$t"); then fail "$t is still on PATH ($p)"; else ok "no $t on PATH"; fi
done
for so in libmpi.so.40 libhdf5_openmpi.so.103 libopenblas.so.0 libsentencepiece.so.0 libboost_program_options.so.1.74.0; do
  f=/usr/lib/$multiarch/$so
  [[ -e $f ]] || continue
  if [[ -s $(realpath "$f") ]]; then fail "$f is still readable"; else ok "$so hidden"; fi
done

logs=$work/logs
rm -rf "$logs" && mkdir -p "$logs"
bare=(env -i HOME=/tmp PATH=/usr/bin:/bin)
# expect NAME "RCS" CMD...: CMD under a bare environment, rc one of RCS
expect() {
  local name=$1 rcs=$2
  shift 2
  timeout -k 5 120 "${bare[@]}" "$@" > "$logs/$name.log" 2>&1 < /dev/null
  local rc=$?
  sed 's/^/    /' "$logs/$name.log" | tail -n 15
  if [[ " $rcs " == *" $rc "* ]]; then ok "$name: exit $rc"; else fail "$name: exit $rc, expected one of: $rcs"; fi
  last_rc=$rc
}

cd "$unpacked" || exit 1
expect libs "0" ./run.sh --check-libs
expect mpi_singleton "0" ./run.sh bench_gpu --mpi-check
grep -q 'rank 0 of 1: ok' "$logs/mpi_singleton.log" || fail "mpi_singleton: no 'rank 0 of 1: ok'"
expect mpi_np2 "0" ./run.sh mpirun -np 2 "$unpacked/bin/bench_gpu" --mpi-check
[[ $(grep -c 'of 2: ok' "$logs/mpi_np2.log") -eq 2 ]] || fail "mpi_np2: not both ranks said ok"
expect layers "0 77" ./run.sh test_cuda_layers
gpu=1
[[ $last_rc -eq 77 ]] && gpu=0
expect mesh_2x1 "0 77" ./run.sh mpirun -np 2 -x LD_LIBRARY_PATH -x GLAM_TEST_MESH=2x1 -x OMP_NUM_THREADS=1 \
  "$unpacked/bin/test_cuda_mesh"

# Open MPI and PMIx found their plugins and help texts in the bundle (relocated prefixes)
if grep -l -E "couldn't open the help file|Sorry!  You were supposed to get help" "$logs"/*.log; then
  fail "Open MPI or PMIx looked for files outside the bundle (the logs above)"
fi

# check.sh --no-gpu-ok: no failure; three files under $OUT
out=$work/out
rm -rf "$out" && mkdir -p "$out"
expect check_no_gpu_ok "0" env OUT="$out" ./check.sh --no-gpu-ok --budget 240 input/glam-tiny.cfg
cat "$out/summary.txt" 2>/dev/null | sed 's/^/    /'
for f in check.log summary.txt steps.tar.gz; do [[ -s $out/$f ]] || fail "check.sh wrote no $out/$f"; done
n=$(find "$out" -type f | wc -l)
(( n <= 8 )) || fail "check.sh left $n files under \$OUT (the device tool returns 8)"
grep -Eq '^check: [0-9]+ passed, 0 failed, [0-9]+ skipped$' "$out/summary.txt" ||
  fail "check.sh --no-gpu-ok: no 'check: N passed, 0 failed' line"
for s in libs mpi_1 mpi_2 layers model mesh_2x1 mesh_1x2 mesh_2x2 mesh_1x3 repeat memcheck racecheck bench; do
  grep -Eq "^$s +rc=" "$out/summary.txt" || fail "summary.txt has no line for step $s"
done
for s in libs mpi_1 mpi_2; do
  grep -Eq "^$s +rc=0 .*PASSED" "$out/summary.txt" || fail "step $s did not pass"
done
tar tzf "$out/steps.tar.gz" > "$logs/steps.list" 2>&1
grep -q 'steps/04-layers.log' "$logs/steps.list" || fail "steps.tar.gz has no steps/04-layers.log"

# check.sh without --no-gpu-ok: a machine without a GPU fails
out2=$work/out-strict
rm -rf "$out2" && mkdir -p "$out2"
if (( gpu )); then
  echo "a GPU is visible here: check.sh without --no-gpu-ok was run above in effect; not repeated"
else
  expect check_strict "1" env OUT="$out2" ./check.sh --budget 120 input/glam-tiny.cfg
  grep -Eq '^layers +rc=77 .*FAILED.*no GPU' "$out2/summary.txt" || fail "check.sh: exit 77 of layers is not a failure"
  grep -Eq '^memcheck .*FAILED.*compute-sanitizer' "$out2/summary.txt" ||
    grep -Eq '^memcheck +rc=77 .*FAILED' "$out2/summary.txt" || fail "check.sh: memcheck without a GPU or sanitizer did not fail"
  grep -Eq '^check: [0-9]+ passed, [1-9][0-9]* failed' "$out2/summary.txt" || fail "check.sh: no failures counted"
fi

# A hung program and a hung rank: their steps end at their limit, nothing is left running.
hung=$work/hung
rm -rf "$hung" && cp -a "$unpacked" "$hung" && mkdir -p "$hung/out"
marker=glam-hung-$$
printf '#!/bin/bash\nexec -a %s-layers sleep 300\n' "$marker" > "$hung/bin/test_cuda_layers"
printf '#!/bin/bash\n[[ $OMPI_COMM_WORLD_RANK == 1 && $GLAM_TEST_MESH == 2x1 ]] && exec -a %s-rank sleep 300\nexit 0\n' \
  "$marker" > "$hung/bin/test_cuda_mesh"
chmod +x "$hung/bin/test_cuda_layers" "$hung/bin/test_cuda_mesh"
start=$(now_s)
(cd "$hung" && timeout 200 "${bare[@]}" GLAM_CHECK_MAX_STEP=6 OUT="$hung/out" ./check.sh --no-gpu-ok --budget 200 \
   input/glam-tiny.cfg > "$logs/check_hung.log" 2>&1 < /dev/null)
rc=$? took=$(( $(now_s) - start ))
sed 's/^/    /' "$hung/out/summary.txt"
[[ $rc -eq 1 ]] || fail "check.sh with a hung program: exit $rc, expected 1"
grep -Eq '^layers +rc=124 .*FAILED.*timed out after 6s' "$hung/out/summary.txt" || fail "a hung test_cuda_layers did not time out at 6s"
grep -Eq '^mesh_2x1 +rc=(124|137) .*FAILED.*timed out' "$hung/out/summary.txt" || fail "a hung rank of mesh_2x1 did not time out"
grep -Eq '^mesh_1x2 +rc=0 .*PASSED' "$hung/out/summary.txt" || fail "the step after the hung rank did not run"
(( took < 90 )) && ok "check.sh with a hung program and a hung rank ended in ${took}s" ||
  fail "check.sh with hung steps took ${took}s"
sleep 1
left=$(pgrep -f "^$marker" | tr '\n' ' ')
if [[ -n $left ]]; then fail "processes left running after their step timed out: $left"; kill $left 2>/dev/null
else ok "nothing of the hung steps is left running"; fi

# Does this namespace reproduce the GPU machine's trouble? MPI_Init without an rsh agent.
eval "$(./run.sh --env)"
timeout -k 5 60 env -u OMPI_MCA_plm_rsh_agent "$unpacked/bin/bench_gpu" --mpi-check > "$logs/no_agent.log" 2>&1 < /dev/null
rc=$?
if [[ $rc -ne 0 ]]; then
  echo "note: without OMPI_MCA_plm_rsh_agent MPI_Init fails here (exit $rc), as on a machine without ssh:"
  grep -m 3 -iE 'rsh|ssh|agent|plm' "$logs/no_agent.log" | sed 's/^/    /'
else
  echo "note: MPI_Init started without OMPI_MCA_plm_rsh_agent here too"
fi

echo "inside the namespace: $failures failure(s)"
(( failures == 0 ))
