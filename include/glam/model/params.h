// The parameter table: one entry per tensor of the model, named as in the
// checkpoint ("layer_00/attn/wq"), in global (unsharded) shape and in the local
// shard shape the mesh implies. The same table drives allocation, initialisation,
// the optimizer and the weights file.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "glam/model/config.h"
#include "glam/mesh/mesh.h"

namespace glam {

enum class Init { ones, normal, uniform };

struct Param {
  std::string name;
  std::vector<int64_t> global_shape;
  std::vector<int64_t> shape;     // local shard shape
  int model_axis = -1;            // dim split over the mesh's model axis, -1 if replicated there
  int data_axis = -1;             // dim split over the data axis (experts), -1 if replicated there
  int64_t data_replicas = 1;      // ranks of the data axis holding the same shard (experts < D)
  Init init = Init::normal;
  double scale = 1.0;             // std for normal, bound for uniform
  std::vector<float> w;           // [shape] fp32 master weights
  std::vector<float> g;           // [shape] gradient
  // train.shard_state: this data rank updates rows [zero_row0, zero_row0 + zero_rows)
  // of dim 0 of its shard; g holds the gradient of those rows only (reduce-scattered), the
  // Adafactor statistics cover only them and the weights are all-gathered after
  // the update. zero_rows < 0: the tensor's state is not sharded over data.
  int64_t zero_row0 = 0, zero_rows = -1;
  // train.shard_weights: between uses w keeps those rows only (w_on_shard) and the
  // backend gathers the whole shard into a window per layer just before use.
  bool zero_weights = false, w_on_shard = false;

  bool zero_sharded() const { return zero_rows >= 0; }
  int64_t row_size() const;       // elements per row of dim 0 of the shard

  int64_t size() const;
  int64_t global_size() const;
  // Offset of this rank's shard along each dim of the global shape.
  std::vector<int64_t> shard_offset(const Mesh& mesh) const;
};

struct ParamTable {
  std::vector<Param> params;
  Param& get(const std::string& name);
  const Param& get(const std::string& name) const;
  void zero_grad();
  int64_t local_size() const;
};

// All parameters of a GLaM model described by cfg, with shapes sharded for mesh.
// Throws UserError when the config cannot be sharded on that mesh.
ParamTable build_params(const ModelConfig& cfg, const Mesh& mesh);
// The same table without buffers (w and g empty): shapes only, for planning models
// too large for this machine. Reads only mesh.data_size and mesh.model_size.
ParamTable describe_params(const ModelConfig& cfg, const Mesh& mesh);
// Sums per-shard partial values v[n] of p (e.g. sums of squares) into whole-tensor
// values on every rank: over the axes p is split on, each shard counted once.
void sum_over_shards(const Param& p, const Mesh& mesh, double* v, int64_t n);
// True for the one rank that holds the primary copy of each element of p's shard
// (replicas over the model axis or over expert replicas are not primary): it
// writes the element to files and counts it in checksums.
bool is_primary(const Param& p, const Mesh& mesh);
// Calls f(local index, global flat index) for every element of this rank's shard.
void for_each_element(const Param& p, const Mesh& mesh, const std::function<void(int64_t, int64_t)>& f);
// The whole tensor [global_shape] assembled from every rank's shard `local`
// (collective over the mesh; for tests and the weights file of small models).
std::vector<float> gather_global(const Param& p, const std::vector<float>& local, const Mesh& mesh);

// train.shard_state: marks every tensor replicated over data (no expert, at most
// two dims) as sharded over it, rows of dim 0 split as evenly as they go (the
// first n % D ranks one more). Returns the tensors marked (none on a data axis of 1).
int64_t shard_state_over_data(ParamTable& table, const Mesh& mesh);
// train.shard_weights: marks the tensors shard_state_over_data marked as keeping
// their weights sharded too (the backend's params_to_device drops the other rows).
int64_t shard_weights_over_data(ParamTable& table);
// w [shape] -> w [zero_rows, ...] (this rank's rows), and back (an all-gather over
// data): the layout between steps, and the whole shard a checkpoint writes.
void keep_weight_rows(Param& p);
void gather_weight_rows(Param& p, const Mesh& mesh);
// Rows of dim 0 that data rank r of D updates: [first, first + count).
void zero_rows_of(int64_t rows, int D, int r, int64_t& first, int64_t& count);
// Elements of p's shard updated by each data rank (the counts of the reduce-scatter).
std::vector<int64_t> zero_counts(const Param& p, int D);

// Deterministic init from (seed, name, global index): the same weights on any mesh.
void init_params(ParamTable& table, uint64_t seed, const Mesh& mesh);
// Parameter counts in the paper's sense (the GLaM paper, Du et al. 2022).
int64_t count_params(const ModelConfig& cfg);
int64_t count_activated_params(const ModelConfig& cfg);

}  // namespace glam
