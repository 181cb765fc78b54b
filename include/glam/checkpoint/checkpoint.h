// Sharded checkpoints in parallel HDF5 (schema: docs/CHECKPOINT.md). Every tensor
// of the model and of Adafactor's state is one dataset in its global shape; each
// rank writes and reads only its own hyperslab, so a checkpoint written on one
// mesh restores on any other. Writing is atomic (temporary name, fsync, rename,
// then the `latest` marker).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "glam/model/adafactor.h"
#include "glam/model/config.h"
#include "glam/mesh/mesh.h"
#include "glam/model/params.h"

namespace glam {

constexpr const char* kCheckpointFormat = "glam-checkpoint";
constexpr int64_t kCheckpointVersion = 1;

// Everything besides tensors that a resumed run needs to continue exactly.
struct TrainState {
  int64_t step = 0;           // optimizer steps completed
  int64_t updates = 0;        // Adafactor updates made (step minus skipped)
  int64_t skipped_total = 0;  // steps skipped for non-finite gradients
  int64_t data_next_row = 0;  // next row of the packed corpus stream
  uint64_t seed = 0;          // train.seed
};

// One dataset of a checkpoint (docs/CHECKPOINT.md): its path, what it holds, and
// its shape and sharding as a Param descriptor (global_shape, shape, model_axis,
// data_axis, data_replicas; w and g empty). The optimizer's factored statistics
// drop a dim of the parameter's shape; a dropped dim takes its sharding with it
// (model_axis or data_axis -1, and data_replicas 1 when data_axis is dropped).
enum class CheckpointPart { param, v, vr, vc };  // the parameter, or its Adafactor state
struct CheckpointDataset {
  std::string path;           // "/params/layer_00/attn/wq", "/optimizer/layer_00/attn/wq/vr"
  CheckpointPart part = CheckpointPart::param;
  size_t param_index = 0;     // the parameter's index in the table
  Param desc;
  bool is_param() const { return part == CheckpointPart::param; }
};

// The datasets of a checkpoint of `table` (shapes only: a describe_params table
// will do), in table order: each parameter, then its state: v, or vr and vc when
// adafactor_factored. The one list save_checkpoint writes, load_checkpoint reads
// and glam-ckpt checks.
std::vector<CheckpointDataset> checkpoint_layout(const ParamTable& table, const AdafactorOptions& opt);

// Rank `rank` of a DxM mesh as its sizes and ranks alone (no communicators): enough
// to lay out that rank's shards (shard_offset, is_primary) without running on it.
Mesh mesh_stand_in(int data_size, int model_size, int rank);

// A dataset of the layout and this rank's local data for it.
struct CheckpointTensor : CheckpointDataset {
  float* data = nullptr;      // [desc.shape] this rank's shard
};

// The datasets of a model and its optimizer, in layout order, with their data.
std::vector<CheckpointTensor> checkpoint_tensors(ParamTable& table, Adafactor& opt);

// Order-independent checksum of a tensor: sum over elements of mix(i * golden + bits).
uint64_t checksum_element(uint64_t global_index, float value);
// This rank's contribution for a shard (zero unless it is the shard's primary copy).
uint64_t checksum_shard(const Param& desc, const float* data, const Mesh& mesh);

// What is wrong with a training state read from a file, for the config that wrote
// it ("" when nothing): step in [0, train_steps], updates + skipped_total = step
// (both >= 0), data_next_row = step * batch_rows without overflow. Checked before
// a resume replays `step` steps of row choices, and by glam-ckpt verify.
std::string train_state_problem(const TrainState& st, int64_t train_steps, int64_t batch_rows);
// The integer `key` of `[section]` in INI text (a config as stored in a file):
// false when it is absent or not an integer.
bool ini_int(const std::string& ini, const std::string& section, const std::string& key, int64_t* value);

// File name of a step's checkpoint: "step_00000100.h5".
std::string checkpoint_name(int64_t step);
// Path of the newest complete checkpoint in RUN_DIR/checkpoints, "" if none.
std::string latest_checkpoint(const std::string& run_dir);

// Collective: writes RUN_DIR/checkpoints/step_X.h5 atomically, updates `latest`,
// then keeps only the newest `keep` checkpoints (keep <= 0: all). Returns the path.
std::string save_checkpoint(const std::string& run_dir, ParamTable& table, Adafactor& opt,
                            const TrainState& state, const Config& cfg, const Mesh& mesh, int64_t keep);
// Collective: reads this rank's hyperslabs of every tensor and verifies their
// checksums. Throws UserError naming the file (and the dataset) when it is not a
// glam checkpoint, was written for other shapes, or is truncated or corrupt.
TrainState load_checkpoint(const std::string& path, ParamTable& table, Adafactor& opt, const Mesh& mesh);

}  // namespace glam
