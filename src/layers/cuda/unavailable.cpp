// The CUDA backend's entry points in a build without it (no nvcc at configure
// time): no GPU is visible and `--device cuda` is refused with the fix.
#include "glam/model/backend.h"
#include "glam/base/check.h"
#include "glam/mesh/device.h"

namespace glam {

bool cuda_backend_built() { return false; }
int cuda_device_count() { return 0; }
bool cuda_select_device(int) { return false; }
std::string cuda_device_name() { return "cuda (not built)"; }

std::unique_ptr<Backend> make_cuda_backend(const Config&, const Mesh&) {
  throw UserError("--device cuda: this build has no CUDA backend (rebuild with cmake -DGLAM_CUDA=ON)");
}

}  // namespace glam
