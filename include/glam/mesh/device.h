// Where the model runs: the CPU (the reference; every build) or one GPU per rank
// (builds with the CUDA backend). `--device auto` picks cuda when a GPU is
// visible, else cpu.
#pragma once
#include <string>

#include "glam/mesh/mesh.h"

namespace glam {

enum class Device { cpu, cuda };

// Parses "auto" | "cpu" | "cuda" (the --device flag). For cuda, selects this
// rank's GPU: local rank (Mesh::node_ranks) modulo the GPUs
// visible, so several ranks may share one GPU. Throws UserError when cuda is
// asked for and this build has no CUDA backend or no GPU is visible.
Device select_device(const std::string& name, const Mesh& mesh);

// "cpu", or "cuda:<index> (<GPU name>)".
std::string device_description(Device device);

// Provided by the CUDA backend (src/layers/cuda/device.cu), or by its stand-in in a build
// without one (src/layers/cuda/unavailable.cpp), so no other file asks which it is.
bool cuda_backend_built();
// GPUs visible to this process; 0 in a build without the CUDA backend.
int cuda_device_count();
// Makes GPU `index` this process's device; false when it cannot.
bool cuda_select_device(int index);
// "cuda:<index> (<GPU name>)" of the current device.
std::string cuda_device_name();

// CPUs this process may run on (its affinity mask) and the OpenMP threads it
// will start. mpirun binds each rank to one core by default when the ranks do
// not outnumber the cores, so threads per rank > 1 then share that core.
int cpus_in_affinity();
// Empty, or a warning for the log when some rank has more threads than CPUs
// (collective over the mesh).
std::string thread_binding_warning(const Mesh& mesh);

}  // namespace glam
