// glam-ckpt export: the weights alone, from a checkpoint or a glam weights file,
// as a glam weights file (HDF5, version 2, checksummed when f32) or as
// safetensors (safetensors.cpp), in f32 or bf16. Rank 0 creates the output at a
// temporary name with every tensor's place in it; the ranks copy their blocks
// there (pieces.cpp); when every rank succeeded and every tensor's checksum
// holds, rank 0 adds the checksums and renames it. A failure on any rank leaves
// nothing under the output name.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <memory>

#include "ckpt.h"
#include "glam/checkpoint/weights.h"

namespace glam::ckpt {

namespace {

struct ExportRequest {
  std::string path, out, format, json_path;
  bool bf16 = false, overwrite = false;
  MemoryOptions memory;
};

// Parses export's options and checks its outputs may be written; false after --help.
bool parse_export(const std::vector<std::string>& args, ExportRequest& r) {
  po::options_description opt("export options");
  add_command_options(opt, "the checkpoint or glam weights file (positional)");
  // clang-format off
  opt.add_options()
      ("output", po::value<std::string>()->required(), "the file to write")
      ("format", po::value<std::string>()->default_value("hdf5"),
       "hdf5 (a glam weights file, usable as RUN_DIR/weights.h5 when f32) or safetensors")
      ("dtype", po::value<std::string>()->default_value("f32"),
       "f32, or bf16 (round to nearest even; in HDF5: uint16 datasets with attribute dtype=bfloat16)")
      ("config-json", po::value<std::string>(), "safetensors: where to write the model config as JSON "
       "(default OUTPUT.json)")
      ("overwrite", po::bool_switch(), "replace existing output files");
  // clang-format on
  add_memory_options(opt);
  po::variables_map vm;
  const char* synopsis = "CKPT --output OUT [--format hdf5|safetensors] [--dtype f32|bf16] [options]";
  if (!parse_options(args, "export", synopsis, opt, vm)) return false;
  r.path = vm["checkpoint"].as<std::string>();
  r.out = vm["output"].as<std::string>();
  r.format = vm["format"].as<std::string>();
  const std::string dtype = vm["dtype"].as<std::string>();
  r.overwrite = vm["overwrite"].as<bool>();
  r.memory = memory_options(vm);
  GLAM_REQUIRE(r.format == "hdf5" || r.format == "safetensors", "--format must be hdf5 or safetensors, not '",
               r.format, "'");
  GLAM_REQUIRE(dtype == "f32" || dtype == "bf16", "--dtype must be f32 or bf16, not '", dtype, "'");
  GLAM_REQUIRE(r.format == "safetensors" || !vm.count("config-json"), "--config-json goes with --format safetensors");
  r.bf16 = dtype == "bf16";
  r.json_path = vm.count("config-json") ? vm["config-json"].as<std::string>() : r.out + ".json";
  return true;
}

// The weights file (weights.h) without the tensors' bytes, which every rank writes
// in place (pieces.cpp); returns each parameter's byte offset in it.
std::vector<uint64_t> create_weights_file(const Checkpoint& c, const std::vector<CheckpointDataset>& params,
                                          const std::optional<int64_t>& step, bool bf16, const std::string& tmp) {
  h5::File file = create_untimed_file(tmp);
  const hid_t f = file.get();
  attr_written(h5::write_string_attr(f, "format", kWeightsFormat), "format", tmp);
  attr_written(h5::write_int_attr(f, "version", kWeightsVersion), "version", tmp);
  attr_written(h5::write_string_attr(f, "config", c.config_ini), "config", tmp);
  if (step) attr_written(h5::write_int_attr(f, "step", *step), "step", tmp);
  std::vector<uint64_t> at;
  for (const CheckpointDataset& t : params) {
    const std::string what = msg("cannot write dataset ", t.path, " to '", tmp, "'");
    const hid_t type = bf16 ? H5T_STD_U16LE : H5T_IEEE_F32LE;
    const h5::Dataset ds = create_raw_dataset(f, t.path, type, t.desc.global_shape, what);
    if (bf16) attr_written(h5::write_string_attr(ds.get(), "dtype", "bfloat16"), "dtype", tmp);
    at.push_back(static_cast<uint64_t>(raw_offset(ds.get(), what)));
  }
  GLAM_REQUIRE(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0 && file.close() >= 0, "cannot write '", tmp, "'");
  return at;
}

// Each parameter's elements (sums, in params order) against its stored checksum,
// in the order they are written: the first that fails stops the export.
void require_checksums(const Checkpoint& c, const std::vector<CheckpointDataset>& params,
                       const std::vector<size_t>& order, const std::vector<uint64_t>& sums) {
  if (c.weights && c.version < 2) return;  // no checksums to check
  for (size_t i : order) {
    const h5::Dataset ds(H5Dopen2(c.file.get(), params[i].path.c_str(), H5P_DEFAULT));
    const auto stored = ds.valid() ? h5::read_u64_attr(ds.get(), "checksum") : std::nullopt;
    GLAM_REQUIRE(stored && *stored == sums[i], c.kind(), " '", c.path, "': dataset ", params[i].path,
                 stored ? " fails its checksum" : " has no checksum", " (run glam-ckpt verify); nothing exported");
  }
}

// The checkpoint and its parameters, checked on every rank (outputs on rank 0).
struct Source {
  Checkpoint c;
  std::optional<int64_t> step;
  std::vector<CheckpointDataset> params;
};

Source open_source(const Team& team, const ExportRequest& r) {
  Source s;
  team.agree([&] {
    if (team.root()) {
      require_output(r.out, r.overwrite);
      if (r.format == "safetensors") require_output(r.json_path, r.overwrite);
    }
    s.c = open_checkpoint(r.path, true, true);
    s.step = h5::read_int_attr(s.c.file.get(), "step");
    s.params = expected_params(s.c.cfg);
    for (const CheckpointDataset& t : s.params) open_tensor(s.c, t);
  });
  return s;
}

// Rank 0 creates the output at its temporary name; every rank learns where each
// parameter's bytes go (job.regions[i].at) and their order (for the checksums).
std::vector<size_t> lay_out(const Team& team, const ExportRequest& r, const Source& s, PieceJob& job,
                            std::unique_ptr<TmpFile>& tmp) {
  std::vector<uint64_t> at(s.params.size(), 0);
  std::vector<size_t> order(s.params.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  SafetensorsLayout st;
  if (r.format == "safetensors") {
    st = safetensors_layout(s.c, s.params, r.bf16);
    for (size_t i = 0; i < at.size(); i++) at[i] = static_cast<uint64_t>(st.at[i]);
    order = st.order;
  }
  team.agree([&] {
    if (!team.root()) return;
    tmp = std::make_unique<TmpFile>(job.outputs[0]);
    if (r.format == "safetensors") create_safetensors(st, tmp->path);
    else at = create_weights_file(s.c, s.params, s.step, r.bf16, tmp->path);
  });
  if (r.format == "hdf5") team.sum(at);  // rank 0's offsets on every rank
  for (size_t i = 0; i < at.size(); i++) job.regions[i].at = static_cast<int64_t>(at[i]);
  return order;
}

}  // namespace

int export_weights(const std::vector<std::string>& args) {
  ExportRequest r;
  if (!parse_export(args, r)) return 0;
  const Team& team = Team::world();
  const Source s = open_source(team, r);
  PieceJob job;
  job.c = &s.c;
  job.outputs = {r.out + ".tmp"};
  job.bf16 = r.bf16;
  job.memory_limit = r.memory.limit;
  job.chunk = r.memory.chunk;
  int64_t bytes = 0;
  for (const CheckpointDataset& t : s.params) {
    const auto& shape = t.desc.global_shape;
    job.regions.push_back({t.path, shape, std::vector<int64_t>(shape.size(), 0), shape, 0, 0});
    bytes += product(shape) * (r.bf16 ? 2 : 4);
  }
  std::unique_ptr<TmpFile> tmp;  // rank 0's: removed unless committed
  const std::vector<size_t> order = lay_out(team, r, s, job, tmp);
  const PieceResult res = run_pieces(team, job);
  team.agree([&] {
    require_checksums(s.c, s.params, order, res.sums);
    if (!team.root()) return;
    if (r.format == "hdf5" && !r.bf16) write_checksum_attrs(s.params, res.sums.data(), "checksum", tmp->path);
    tmp->commit(r.out);
    const std::string of_step = s.step ? msg(" of step ", *s.step) : std::string();
    std::printf("exported %zu tensors (%s MB, %s)%s from '%s' to '%s' (%s)\n", s.params.size(), mb(bytes).c_str(),
                r.bf16 ? "bf16" : "f32", of_step.c_str(), r.path.c_str(), r.out.c_str(), r.format.c_str());
    if (r.format == "safetensors") {
      write_text_file(r.json_path, config_json(s.c.cfg, s.step), r.overwrite);
      std::printf("model config: '%s'\n", r.json_path.c_str());
    }
    if (r.format == "hdf5" && r.bf16)
      std::printf("note: glam reads f32 weights only; this bf16 file is for other tools\n");
  });
  report_memory(team, res.peak_buffer, r.memory.limit);
  return 0;
}

}  // namespace glam::ckpt
