// The weights file at the end of a run: HDF5, one dataset per parameter in its
// global shape, named by the parameter table ("/params/layer_00/attn/wq"), with
// the effective config as an attribute. Written under a temporary name and
// renamed, so a crash never leaves a half-written file under the final name.
// Version 2: every dataset carries the checkpoint's `checksum` attribute
// (docs/CHECKPOINT.md), checked on read; version 1 files (no checksums) are read
// with a warning. `glam-ckpt verify` checks weights files too.
#pragma once
#include <cstdint>
#include <string>

#include "glam/model/config.h"
#include "glam/mesh/mesh.h"
#include "glam/model/params.h"

namespace glam {

constexpr const char* kWeightsFormat = "glam-weights";
constexpr int64_t kWeightsVersion = 2;

// Collective over the mesh; rank 0 writes the file.
void save_weights(const std::string& path, const ParamTable& table, const Config& cfg, const Mesh& mesh);
// Collective: reads every parameter of table from path; throws UserError naming
// the file and the dataset when it is not a glam weights file, a dataset is
// missing, has another shape or type, cannot be read or fails its checksum.
void load_weights(const std::string& path, ParamTable& table, const Mesh& mesh);

}  // namespace glam
