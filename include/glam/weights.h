// The weights file at the end of a run: HDF5, one dataset per parameter in its
// global shape, named by the parameter table ("/params/layer_00/attn/wq"), with
// the effective config as an attribute. Written under a temporary name and
// renamed, so a crash never leaves a half-written file under the final name.
// (Full checkpoints with optimizer state, resume and resharding: checkpoint issue.)
#pragma once
#include <string>

#include "glam/config.h"
#include "glam/mesh.h"
#include "glam/params.h"

namespace glam {

// Collective over the mesh; rank 0 writes the file.
void save_weights(const std::string& path, const ParamTable& table, const Config& cfg, const Mesh& mesh);
// Reads every parameter of table from path; throws UserError naming the file and
// the dataset when one is missing or has another shape.
void load_weights(const std::string& path, ParamTable& table, const Mesh& mesh);

}  // namespace glam
