// glam-ckpt export: the weights alone, from a checkpoint or a glam weights file,
// as a glam weights file (HDF5, version 2, checksummed when f32) or as
// safetensors (safetensors.cpp), in f32 or bf16. Every tensor's checksum is
// checked while it is copied; a failure leaves nothing under the output name.
#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "ckpt.h"
#include "glam/layers/cpu/gemm.h"
#include "glam/checkpoint/weights.h"

namespace glam::ckpt {

namespace {

struct ExportRequest {
  std::string path, out, format, json_path;
  bool bf16 = false, overwrite = false;
  int64_t chunk = 0;
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
  add_chunk_option(opt);
  po::variables_map vm;
  const char* synopsis = "CKPT --output OUT [--format hdf5|safetensors] [--dtype f32|bf16] [options]";
  if (!parse_options(args, "export", synopsis, opt, vm)) return false;
  r.path = vm["checkpoint"].as<std::string>();
  r.out = vm["output"].as<std::string>();
  r.format = vm["format"].as<std::string>();
  const std::string dtype = vm["dtype"].as<std::string>();
  r.overwrite = vm["overwrite"].as<bool>();
  r.chunk = chunk_bytes(vm);
  GLAM_REQUIRE(r.format == "hdf5" || r.format == "safetensors", "--format must be hdf5 or safetensors, not '",
               r.format, "'");
  GLAM_REQUIRE(dtype == "f32" || dtype == "bf16", "--dtype must be f32 or bf16, not '", dtype, "'");
  GLAM_REQUIRE(r.format == "safetensors" || !vm.count("config-json"), "--config-json goes with --format safetensors");
  r.bf16 = dtype == "bf16";
  r.json_path = vm.count("config-json") ? vm["config-json"].as<std::string>() : r.out + ".json";
  require_output(r.out, r.overwrite);
  if (r.format == "safetensors") require_output(r.json_path, r.overwrite);
  return true;
}

// One parameter into the HDF5 weights file being written; returns its bytes.
int64_t write_hdf5_param(const Checkpoint& c, const CheckpointDataset& t, hid_t file, hid_t lcpl,
                         const ExportRequest& r, const std::string& tmp) {
  const h5::Dataset src = open_tensor(c, t);
  const std::string what = msg("cannot write dataset ", t.path, " to '", tmp, "'");
  const auto& shape = t.desc.global_shape;
  const h5::Space space = h5::simple_space(shape);
  const h5::Dataset dst(GLAM_REQUIRE_H5(H5Dcreate2(file, t.path.c_str(), r.bf16 ? H5T_STD_U16LE : H5T_IEEE_F32LE,
                                                   space.get(), lcpl, H5P_DEFAULT, H5P_DEFAULT), what));
  if (r.bf16) attr_written(h5::write_string_attr(dst.get(), "dtype", "bfloat16"), "dtype", tmp);
  const int64_t inner = product(shape) / std::max<int64_t>(shape[0], 1);
  std::vector<uint16_t> half;
  const uint64_t sum = stream_param(c, t, src.get(), r.chunk, [&](int64_t first, int64_t n, const float* data) {
    if (!r.bf16) return write_slices(dst.get(), space.get(), shape, first, n, H5T_NATIVE_FLOAT, data, what);
    half.resize(static_cast<size_t>(n * inner));
    cpu::to_bf16(half.data(), data, n * inner);  // nearest even; NaN stays NaN
    write_slices(dst.get(), space.get(), shape, first, n, H5T_NATIVE_UINT16, half.data(), what);
  });
  // The same sum over the same float32 values: a checksummed weights file (bf16: other tools only).
  if (!r.bf16) attr_written(h5::write_u64_attr(dst.get(), "checksum", sum), "checksum", tmp);
  return product(shape) * (r.bf16 ? 2 : 4);
}

// A glam weights file (weights.h) of the parameters; returns the tensor bytes.
int64_t write_hdf5(const Checkpoint& c, const std::vector<CheckpointDataset>& params,
                   const std::optional<int64_t>& step, const ExportRequest& r, const std::string& tmp) {
  h5::File file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  GLAM_REQUIRE(file.valid(), "cannot create '", tmp, "'");
  const hid_t f = file.get();
  attr_written(h5::write_string_attr(f, "format", kWeightsFormat), "format", tmp);
  attr_written(h5::write_int_attr(f, "version", kWeightsVersion), "version", tmp);
  attr_written(h5::write_string_attr(f, "config", c.config_ini), "config", tmp);
  if (step) attr_written(h5::write_int_attr(f, "step", *step), "step", tmp);
  const h5::Plist lcpl = h5::intermediate_groups();
  int64_t bytes = 0;
  for (const CheckpointDataset& t : params) bytes += write_hdf5_param(c, t, f, lcpl.get(), r, tmp);
  GLAM_REQUIRE(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0 && file.close() >= 0, "cannot write '", tmp, "'");
  return bytes;
}

}  // namespace

uint64_t stream_param(const Checkpoint& c, const CheckpointDataset& t, hid_t ds, int64_t chunk, const SlabFn& sink) {
  const auto& shape = t.desc.global_shape;
  const std::vector<int64_t> zero(shape.size(), 0);
  uint64_t sum = 0;
  read_region(ds, zero, shape, chunk, msg(c.kind(), " '", c.path, "': cannot read dataset ", t.path),
              [&](int64_t first, int64_t n, const float* data) {
                sum += checksum_slab(shape, zero, shape, first, n, data);
                sink(first, n, data);
              });
  if (c.weights && c.version < 2) return sum;  // no checksums to check
  const auto stored = h5::read_u64_attr(ds, "checksum");
  GLAM_REQUIRE(stored && *stored == sum, c.kind(), " '", c.path, "': dataset ", t.path,
               stored ? " fails its checksum" : " has no checksum", " (run glam-ckpt verify); nothing exported");
  return sum;
}

int export_weights(const std::vector<std::string>& args) {
  ExportRequest r;
  if (!parse_export(args, r)) return 0;
  const Checkpoint c = open_checkpoint(r.path, true, true);
  const std::optional<int64_t> step = h5::read_int_attr(c.file.get(), "step");
  const std::vector<CheckpointDataset> params = expected_params(c.cfg);
  TmpFile tmp(r.out + ".tmp");
  const int64_t bytes = r.format == "hdf5" ? write_hdf5(c, params, step, r, tmp.path)
                                           : write_safetensors(c, params, r.bf16, r.chunk, tmp.path);
  tmp.commit(r.out);
  const std::string of_step = step ? msg(" of step ", *step) : std::string();
  std::printf("exported %zu tensors (%s MB, %s)%s from '%s' to '%s' (%s)\n", params.size(), mb(bytes).c_str(),
              r.bf16 ? "bf16" : "f32", of_step.c_str(), r.path.c_str(), r.out.c_str(), r.format.c_str());
  if (r.format == "safetensors") {
    write_text_file(r.json_path, config_json(c.cfg, step), r.overwrite);
    std::printf("model config: '%s'\n", r.json_path.c_str());
  }
  if (r.format == "hdf5" && r.bf16)
    std::printf("note: glam reads f32 weights only; this bf16 file is for other tools\n");
  return 0;
}

}  // namespace glam::ckpt
