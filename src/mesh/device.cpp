// Device selection: --device auto|cpu|cuda, one GPU per rank by local rank.
#include "glam/mesh/device.h"

#include <omp.h>
#include <sched.h>

#include "glam/base/check.h"

namespace glam {

Device select_device(const std::string& name, const Mesh& mesh) {
  GLAM_REQUIRE(name == "auto" || name == "cpu" || name == "cuda", "--device must be auto, cpu or cuda, got '",
               name, "'");
  if (name == "cpu") return Device::cpu;
  const int n = cuda_device_count();
  bool any_gpu = n > 0;
  GLAM_REQUIRE(name != "cuda" || cuda_backend_built(), "--device cuda: this build has no CUDA backend (nvcc was "
               "not found when it was configured; rebuild with cmake -DGLAM_CUDA=ON)");
  // every rank must agree, or the collectives of the two backends would mix
  const bool all_have = mesh.all(any_gpu);
  GLAM_REQUIRE(name != "cuda" || all_have, "--device cuda: no GPU is visible to ",
               any_gpu ? "some ranks" : "this rank", " (CUDA_VISIBLE_DEVICES, driver)");
  if (!all_have) return Device::cpu;
  const int chosen = mesh.node_ranks().rank % n;
  GLAM_REQUIRE(cuda_select_device(chosen), "--device cuda: cannot select GPU ", chosen);
  return Device::cuda;
}

std::string device_description(Device device) {
  if (device == Device::cpu) return "cpu";
  return cuda_device_name();
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
