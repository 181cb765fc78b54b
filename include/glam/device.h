// Where the model runs: the CPU (the reference; every build) or one GPU per rank
// (builds with the CUDA backend). `--device auto` picks cuda when a GPU is
// visible, else cpu.
#pragma once
#include <string>

#include "glam/mesh.h"

namespace glam {

enum class Device { cpu, cuda };

// Parses "auto" | "cpu" | "cuda" (the --device flag). For cuda, selects this
// rank's GPU: local rank (MPI_Comm_split_type over the node) modulo the GPUs
// visible, so several ranks may share one GPU. Throws UserError when cuda is
// asked for and this build has no CUDA backend or no GPU is visible.
Device select_device(const std::string& name, const Mesh& mesh);

// "cpu", or "cuda:<index> (<GPU name>)".
std::string device_description(Device device);

// GPUs visible to this process; 0 in a build without the CUDA backend.
int cuda_device_count();

}  // namespace glam
