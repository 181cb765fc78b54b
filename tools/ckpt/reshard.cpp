// glam-ckpt reshard: one file per rank of a DxM mesh, each holding that rank's
// shard of every dataset (with its global_shape, offset and shard_checksum), as
// glam's own sharding (params.cpp) places it. Nothing is written under the final
// names unless the primary shards' sums reproduce every stored checksum.
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "ckpt.h"

namespace fs = std::filesystem;

namespace glam::ckpt {

namespace {

// At most this many rank files: far more ranks than a checkpoint's tensors split
// over is a typo, not a mesh (100000x1 would write for minutes).
constexpr int kMaxReshardRanks = 4096;

void parse_mesh(const std::string& s, int* d, int* m) {
  const size_t x = s.find('x');
  auto number = [&](const std::string& t) {
    GLAM_REQUIRE(!t.empty() && t.size() <= 9 && t.find_first_not_of("0123456789") == std::string::npos,
                 "--mesh must be DxM with positive D and M (e.g. 2x2), not '", s, "'");
    return std::stoi(t);
  };
  GLAM_REQUIRE(x != std::string::npos, "--mesh must be DxM with positive D and M (e.g. 2x2), not '", s, "'");
  *d = number(s.substr(0, x));
  *m = number(s.substr(x + 1));
  GLAM_REQUIRE(*d > 0 && *m > 0, "--mesh must be DxM with positive D and M (e.g. 2x2), not '", s, "'");
  GLAM_REQUIRE(static_cast<int64_t>(*d) * *m <= kMaxReshardRanks, "--mesh ", s, " has ",
               static_cast<int64_t>(*d) * *m, " ranks; glam-ckpt reshard writes at most ", kMaxReshardRanks,
               " rank files");
}

struct ReshardRequest {
  std::string path, dir, mesh_name;
  int D = 0, M = 0;
  bool overwrite = false;
  int64_t chunk = 0;
};

bool parse_reshard(const std::vector<std::string>& args, ReshardRequest& r) {
  po::options_description opt("reshard options");
  add_command_options(opt);
  // clang-format off
  opt.add_options()
      ("mesh", po::value<std::string>()->required(), "the mesh DxM (data x model ranks)")
      ("output-dir", po::value<std::string>()->required(),
       "writes DIR/rank_R.h5 for R = data_rank * M + model_rank (created when missing)")
      ("overwrite", po::bool_switch(), "replace existing rank files");
  // clang-format on
  add_chunk_option(opt);
  po::variables_map vm;
  if (!parse_options(args, "reshard", "CKPT --mesh DxM --output-dir DIR [options]", opt, vm)) return false;
  r.path = vm["checkpoint"].as<std::string>();
  r.dir = vm["output-dir"].as<std::string>();
  r.overwrite = vm["overwrite"].as<bool>();
  r.chunk = chunk_bytes(vm);
  parse_mesh(vm["mesh"].as<std::string>(), &r.D, &r.M);
  r.mesh_name = msg(r.D, "x", r.M);
  return true;
}

// The datasets of rank `rank`, sharded as training would (params.cpp: the
// model-split dims over M, experts over D), or a UserError saying why not.
std::vector<CheckpointDataset> rank_tensors(const Checkpoint& c, const ReshardRequest& r, int rank) {
  try {
    return expected_tensors(c.cfg, mesh_stand_in(r.D, r.M, rank));
  } catch (const UserError& e) {
    throw UserError(msg("cannot reshard '", c.path, "' to mesh ", r.mesh_name, ": ", e.what()));
  }
}

// Shard `t` of rank file `file` (dataspace of the shard) from the checkpoint;
// returns the shard's part of the dataset checksum.
uint64_t write_shard(const Checkpoint& c, const CheckpointDataset& t, const Mesh& mesh, hid_t file, hid_t lcpl,
                     int64_t chunk, const std::string& tpath) {
  const auto offset = t.desc.shard_offset(mesh);
  const auto& count = t.desc.shape;
  const std::string what = msg("cannot write dataset ", t.path, " to '", tpath, "'");
  const h5::Dataset src(GLAM_REQUIRE_H5(H5Dopen2(c.file.get(), t.path.c_str(), H5P_DEFAULT), what));
  const h5::Space space = h5::simple_space(count);
  const h5::Dataset dst(GLAM_REQUIRE_H5(
      H5Dcreate2(file, t.path.c_str(), H5T_IEEE_F32LE, space.get(), lcpl, H5P_DEFAULT, H5P_DEFAULT), what));
  attr_written(h5::write_int_array_attr(dst.get(), "global_shape", t.desc.global_shape), "global_shape", tpath);
  attr_written(h5::write_int_array_attr(dst.get(), "offset", offset), "offset", tpath);
  uint64_t sum = 0;
  read_region(src.get(), offset, count, chunk, msg("checkpoint '", c.path, "': cannot read dataset ", t.path),
              [&](int64_t first, int64_t n, const float* data) {
                sum += checksum_slab(t.desc.global_shape, offset, count, first, n, data);
                write_slices(dst.get(), space.get(), count, first, n, H5T_NATIVE_FLOAT, data, what);
              });
  // The shard's part of the dataset checksum (sum over global indices of its elements).
  attr_written(h5::write_u64_attr(dst.get(), "shard_checksum", sum), "shard_checksum", tpath);
  return sum;
}

// Rank `rank`'s file at tpath; adds the primary shards' sums to sums[i].
void write_rank_file(const Checkpoint& c, const ReshardRequest& r, int rank,
                     const std::vector<CheckpointDataset>& tensors, const std::string& tpath,
                     std::vector<uint64_t>& sums) {
  const Mesh mesh = mesh_stand_in(r.D, r.M, rank);
  h5::File file(H5Fcreate(tpath.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  GLAM_REQUIRE(file.valid(), "cannot create '", tpath, "'");
  try {
    copy_attrs(c.file.get(), file.get(), {"mesh", "rank"});
  } catch (const UserError& e) {
    throw UserError(msg("checkpoint '", c.path, "': ", e.what()));
  }
  attr_written(h5::write_string_attr(file.get(), "mesh", r.mesh_name), "mesh", tpath);
  attr_written(h5::write_int_attr(file.get(), "rank", rank), "rank", tpath);
  const h5::Plist lcpl = h5::intermediate_groups();
  for (size_t i = 0; i < tensors.size(); i++) {
    const uint64_t sum = write_shard(c, tensors[i], mesh, file.get(), lcpl.get(), r.chunk, tpath);
    if (is_primary(tensors[i].desc, mesh)) sums[i] += sum;
  }
  GLAM_REQUIRE(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0 && file.close() >= 0, "cannot write '", tpath, "'");
}

// The output paths, checked before any work; the directory is created.
std::vector<std::string> rank_outputs(const ReshardRequest& r) {
  std::error_code ec;
  fs::create_directories(r.dir, ec);
  GLAM_REQUIRE(fs::is_directory(r.dir), "cannot create output directory '", r.dir, "'");
  std::vector<std::string> outs;
  for (int rank = 0; rank < r.D * r.M; rank++) {
    outs.push_back((fs::path(r.dir) / msg("rank_", rank, ".h5")).string());
    require_output(outs.back(), r.overwrite);
  }
  return outs;
}

}  // namespace

int reshard(const std::vector<std::string>& args) {
  ReshardRequest r;
  if (!parse_reshard(args, r)) return 0;
  const Checkpoint c = open_checkpoint(r.path);
  rank_tensors(c, r, 0);  // the mesh must split the model: checked on one rank before any other work
  // Every rank's shards first: a mesh the model cannot be split on fails before any write.
  std::vector<std::vector<CheckpointDataset>> ranks;
  for (int rank = 0; rank < r.D * r.M; rank++) ranks.push_back(rank_tensors(c, r, rank));
  const auto global = expected_tensors(c.cfg, Mesh{});
  for (const CheckpointDataset& t : global) open_tensor(c, t, " (run glam-ckpt verify)");
  const std::vector<std::string> outs = rank_outputs(r);

  std::vector<uint64_t> sums(global.size(), 0);  // over the primary copy of each shard
  std::vector<std::unique_ptr<TmpFile>> tmps;
  for (int rank = 0; rank < r.D * r.M; rank++) {
    tmps.push_back(std::make_unique<TmpFile>(outs[rank] + ".tmp"));
    write_rank_file(c, r, rank, ranks[rank], tmps.back()->path, sums);
  }
  // The primary shards cover each tensor once: their sums are the stored checksums.
  for (size_t i = 0; i < global.size(); i++) {
    const h5::Dataset ds(H5Dopen2(c.file.get(), global[i].path.c_str(), H5P_DEFAULT));
    const auto stored = h5::read_u64_attr(ds.get(), "checksum");
    GLAM_REQUIRE(stored && *stored == sums[i], "checkpoint '", r.path, "': dataset ", global[i].path,
                 stored ? " fails its checksum" : " has no checksum", " (run glam-ckpt verify); no rank file written");
  }
  for (int rank = 0; rank < r.D * r.M; rank++) tmps[rank]->commit(outs[rank]);
  std::printf("resharded '%s' to mesh %s: %d files rank_0.h5 .. rank_%d.h5 in '%s', %zu datasets each\n",
              r.path.c_str(), r.mesh_name.c_str(), r.D * r.M, r.D * r.M - 1, r.dir.c_str(), global.size());
  return 0;
}

}  // namespace glam::ckpt
