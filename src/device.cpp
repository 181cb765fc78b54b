// Device selection: --device auto|cpu|cuda, one GPU per rank by local rank.
#include "glam/device.h"

#include <mpi.h>
#include <omp.h>
#include <sched.h>

#ifdef GLAM_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "glam/check.h"

namespace glam {

int cuda_device_count() {
#ifdef GLAM_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error
    return 0;
  }
  return n;
#else
  return 0;
#endif
}

namespace {

int local_rank() {
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int rank = 0;
  MPI_Comm_rank(node, &rank);
  MPI_Comm_free(&node);
  return rank;
}

}  // namespace

Device select_device(const std::string& name, const Mesh& mesh) {
  GLAM_REQUIRE(name == "auto" || name == "cpu" || name == "cuda", "--device must be auto, cpu or cuda, got '",
               name, "'");
  if (name == "cpu") return Device::cpu;
  const int n = cuda_device_count();
  bool any_gpu = n > 0;
#ifndef GLAM_WITH_CUDA
  GLAM_REQUIRE(name != "cuda", "--device cuda: this build has no CUDA backend (nvcc was not found when it "
               "was configured; rebuild with cmake -DGLAM_CUDA=ON)");
#endif
  // every rank must agree, or the collectives of the two backends would mix
  int all_have = any_gpu ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all_have, 1, MPI_INT, MPI_MIN, mesh.world);
  GLAM_REQUIRE(name != "cuda" || all_have, "--device cuda: no GPU is visible to ",
               any_gpu ? "some ranks" : "this rank", " (CUDA_VISIBLE_DEVICES, driver)");
  if (!all_have) return Device::cpu;
#ifdef GLAM_WITH_CUDA
  const int chosen = local_rank() % n;
  GLAM_REQUIRE(cudaSetDevice(chosen) == cudaSuccess, "--device cuda: cannot select GPU ", chosen);
#endif
  return Device::cuda;
}

std::string device_description(Device device) {
  if (device == Device::cpu) return "cpu";
#ifdef GLAM_WITH_CUDA
  int index = 0;
  cudaGetDevice(&index);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, index);
  return "cuda:" + std::to_string(index) + " (" + prop.name + ")";
#else
  return "cuda";
#endif
}

int cpus_in_affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;  // unknown
  return CPU_COUNT(&set);
}

std::string thread_binding_warning(const Mesh& mesh) {
  const int threads = omp_get_max_threads(), cpus = cpus_in_affinity();
  if (!mesh.any(cpus > 0 && threads > cpus)) return "";
  return "# warning: " + std::to_string(threads) + " threads per rank, but some rank may run on fewer CPUs (rank 0: " +
         std::to_string(cpus) + "); mpirun binds each rank to one core by default: add --bind-to none, or " +
         "--map-by slot:PE=" + std::to_string(threads) + " on a whole node";
}

}  // namespace glam
