// glam-ckpt reshard: one file per rank of a DxM mesh, each holding that rank's
// shard of every dataset (with its global_shape, offset and shard_checksum), as
// glam's own sharding (params.cpp) places it. Under mpirun rank file f is created
// (at a temporary name) by rank f % N, every rank copies its blocks of every
// shard into place (pieces.cpp), and the files are renamed only when every rank
// succeeded and the primary shards' sums reproduce every stored checksum.
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
  MemoryOptions memory;
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
  add_memory_options(opt);
  po::variables_map vm;
  if (!parse_options(args, "reshard", "CKPT --mesh DxM --output-dir DIR [options]", opt, vm)) return false;
  r.path = vm["checkpoint"].as<std::string>();
  r.dir = vm["output-dir"].as<std::string>();
  r.overwrite = vm["overwrite"].as<bool>();
  r.memory = memory_options(vm);
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

// Rank file `rank` at tpath without the shards' bytes, which every rank writes in
// place (pieces.cpp); at[i]: the byte offset of tensors[i]'s shard in it.
void create_rank_file(const Checkpoint& c, const ReshardRequest& r, int rank,
                      const std::vector<CheckpointDataset>& tensors, const std::string& tpath, uint64_t* at) {
  const Mesh mesh = mesh_stand_in(r.D, r.M, rank);
  h5::File file = create_untimed_file(tpath);
  try {
    copy_attrs(c.file.get(), file.get(), {"mesh", "rank"});
  } catch (const UserError& e) {
    throw UserError(msg("checkpoint '", c.path, "': ", e.what()));
  }
  attr_written(h5::write_string_attr(file.get(), "mesh", r.mesh_name), "mesh", tpath);
  attr_written(h5::write_int_attr(file.get(), "rank", rank), "rank", tpath);
  for (size_t i = 0; i < tensors.size(); i++) {
    const CheckpointDataset& t = tensors[i];
    const std::string what = msg("cannot write dataset ", t.path, " to '", tpath, "'");
    const h5::Dataset dst = create_raw_dataset(file.get(), t.path, H5T_IEEE_F32LE, t.desc.shape, what);
    attr_written(h5::write_int_array_attr(dst.get(), "global_shape", t.desc.global_shape), "global_shape", tpath);
    attr_written(h5::write_int_array_attr(dst.get(), "offset", t.desc.shard_offset(mesh)), "offset", tpath);
    at[i] = static_cast<uint64_t>(raw_offset(dst.get(), what));
  }
  GLAM_REQUIRE(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0 && file.close() >= 0, "cannot write '", tpath, "'");
}

// The output paths, checked before any work; the directory is created (rank 0).
std::vector<std::string> rank_outputs(const ReshardRequest& r, bool check) {
  if (check) {
    std::error_code ec;
    fs::create_directories(r.dir, ec);
    GLAM_REQUIRE(fs::is_directory(r.dir), "cannot create output directory '", r.dir, "'");
  }
  std::vector<std::string> outs;
  for (int rank = 0; rank < r.D * r.M; rank++) {
    outs.push_back((fs::path(r.dir) / msg("rank_", rank, ".h5")).string());
    if (check) require_output(outs.back(), r.overwrite);
  }
  return outs;
}

// The checkpoint, every rank file's shards and the global datasets, checked on
// every rank (the outputs on rank 0) before any work.
struct Plan {
  Checkpoint c;
  std::vector<std::vector<CheckpointDataset>> ranks;  // [rank file] its shards
  std::vector<CheckpointDataset> global;
  std::vector<std::string> outs;
};

Plan plan_reshard(const Team& team, const ReshardRequest& r) {
  Plan p;
  team.agree([&] {
    p.c = open_checkpoint(r.path);
    rank_tensors(p.c, r, 0);  // the mesh must split the model: checked on one rank before any other work
    // Every rank's shards first: a mesh the model cannot be split on fails before any write.
    for (int rank = 0; rank < r.D * r.M; rank++) p.ranks.push_back(rank_tensors(p.c, r, rank));
    p.global = expected_tensors(p.c.cfg, Mesh{});
    for (const CheckpointDataset& t : p.global) open_tensor(p.c, t, " (run glam-ckpt verify)");
    p.outs = rank_outputs(r, team.root());
  });
  return p;
}

// Region f * n + i: shard i of rank file f (n datasets per file).
PieceJob shard_regions(const Plan& p, const ReshardRequest& r) {
  PieceJob job;
  job.c = &p.c;
  job.memory_limit = r.memory.limit;
  job.chunk = r.memory.chunk;
  for (size_t f = 0; f < p.ranks.size(); f++) {
    job.outputs.push_back(p.outs[f] + ".tmp");
    const Mesh mesh = mesh_stand_in(r.D, r.M, static_cast<int>(f));
    for (const CheckpointDataset& t : p.ranks[f])
      job.regions.push_back({t.path, t.desc.global_shape, t.desc.shard_offset(mesh), t.desc.shape,
                             static_cast<int>(f), 0});
  }
  return job;
}

// The primary shards cover each tensor once: their sums must be the stored checksums.
void require_checksums(const Plan& p, const ReshardRequest& r, const std::vector<uint64_t>& sums) {
  const size_t n = p.global.size();
  std::vector<uint64_t> total(n, 0);
  for (size_t f = 0; f < p.ranks.size(); f++) {
    const Mesh mesh = mesh_stand_in(r.D, r.M, static_cast<int>(f));
    for (size_t i = 0; i < n; i++)
      if (is_primary(p.ranks[f][i].desc, mesh)) total[i] += sums[f * n + i];
  }
  for (size_t i = 0; i < n; i++) {
    const h5::Dataset ds(H5Dopen2(p.c.file.get(), p.global[i].path.c_str(), H5P_DEFAULT));
    const auto stored = h5::read_u64_attr(ds.get(), "checksum");
    GLAM_REQUIRE(stored && *stored == total[i], "checkpoint '", r.path, "': dataset ", p.global[i].path,
                 stored ? " fails its checksum" : " has no checksum", " (run glam-ckpt verify); no rank file written");
  }
}

}  // namespace

int reshard(const std::vector<std::string>& args) {
  ReshardRequest r;
  if (!parse_reshard(args, r)) return 0;
  const Team& team = Team::world();
  const Plan p = plan_reshard(team, r);
  PieceJob job = shard_regions(p, r);
  const size_t files = p.ranks.size(), n = p.global.size();
  // Rank file f is created, finished and renamed by rank f % N.
  auto mine = [&](size_t f) { return static_cast<int>(f % static_cast<size_t>(team.size())) == team.rank(); };
  std::vector<std::unique_ptr<TmpFile>> tmps(files);
  std::vector<uint64_t> at(job.regions.size(), 0);
  team.agree([&] {
    for (size_t f = 0; f < files; f++) {
      if (!mine(f)) continue;
      tmps[f] = std::make_unique<TmpFile>(job.outputs[f]);
      create_rank_file(p.c, r, static_cast<int>(f), p.ranks[f], tmps[f]->path, &at[f * n]);
    }
  });
  team.sum(at);  // each creator's offsets on every rank
  for (size_t k = 0; k < at.size(); k++) job.regions[k].at = static_cast<int64_t>(at[k]);
  const PieceResult res = run_pieces(team, job);
  team.agree([&] {
    require_checksums(p, r, res.sums);
    for (size_t f = 0; f < files; f++)
      if (mine(f)) write_checksum_attrs(p.ranks[f], &res.sums[f * n], "shard_checksum", tmps[f]->path);
  });
  team.agree([&] {
    for (size_t f = 0; f < files; f++)
      if (mine(f)) tmps[f]->commit(p.outs[f]);
  });
  if (team.root())
    std::printf("resharded '%s' to mesh %s: %d files rank_0.h5 .. rank_%d.h5 in '%s', %zu datasets each\n",
                r.path.c_str(), r.mesh_name.c_str(), r.D * r.M, r.D * r.M - 1, r.dir.c_str(), n);
  report_memory(team, res.peak_buffer, r.memory.limit);
  return 0;
}

}  // namespace glam::ckpt
