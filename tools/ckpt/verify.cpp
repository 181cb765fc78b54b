// glam-ckpt verify: recomputes every checksum and checks every dataset against the
// stored config (present, shape, float32, storage within the file, no extras), and
// a checkpoint's training state. Prints one line per problem; exit 2 when any.
#include <algorithm>
#include <cinttypes>
#include <cstdio>

#include "ckpt.h"
#include "glam/data/bounded_read.h"

namespace glam::ckpt {

namespace {

// The root attributes of the training state, present and consistent with the
// stored config (glam::train_state_problem): a step of 2^62 or -1 is a problem.
std::vector<std::string> train_state_problems(const Checkpoint& c) {
  const hid_t f = c.file.get();
  std::vector<std::string> problems;
  for (const char* name : {"step", "updates", "skipped_total", "data_next_row", "seed"})
    if (!h5::read_u64_attr(f, name)) problems.push_back(msg("MISSING: root attribute ", name, " (integer)"));
  if (!h5::read_string_attr(f, "mesh", kMaxConfigBytes)) problems.push_back("MISSING: root attribute mesh (string)");
  if (!problems.empty()) return problems;
  TrainState st;
  st.step = *h5::read_int_attr(f, "step");
  st.updates = *h5::read_int_attr(f, "updates");
  st.skipped_total = *h5::read_int_attr(f, "skipped_total");
  st.data_next_row = *h5::read_int_attr(f, "data_next_row");
  const std::string p = train_state_problem(st, c.cfg.train.steps, c.cfg.train.batch_rows);
  if (!p.empty()) problems.push_back("STATE: " + p);
  return problems;
}

// What is wrong with one dataset the config implies ("" when nothing); with
// `checksums`, its stored checksum is recomputed (in slabs of `chunk` bytes).
std::string tensor_problem(const Checkpoint& c, const CheckpointDataset& t, bool checksums, int64_t chunk) {
  const hid_t f = c.file.get();
  if (H5Lexists(f, t.path.c_str(), H5P_DEFAULT) <= 0 || H5Oexists_by_name(f, t.path.c_str(), H5P_DEFAULT) <= 0)
    return msg("MISSING: ", t.path, " (", shape_str(t.desc.global_shape), " float32)");
  const h5::Dataset ds(H5Dopen2(f, t.path.c_str(), H5P_DEFAULT));
  if (!ds.valid()) return msg("MISSING: ", t.path, " (not a dataset)");
  const auto shape = h5::dataset_dims(ds.get());
  if (shape != t.desc.global_shape)
    return msg("SHAPE: ", t.path, " is ", shape_str(shape), ", the config implies ", shape_str(t.desc.global_shape));
  if (!is_float32_le(ds.get())) {
    const h5::Type type(H5Dget_type(ds.get()));
    const std::string name = type.valid() ? type_name(type.get()) : "?";
    return msg("TYPE: ", t.path, " is ", name, ", expected float32 little endian");
  }
  try {
    checked_dataset_shape(ds.get(), msg("'", c.path, "'"), t.path, 4, c.file_size);
  } catch (const UserError& e) {
    return msg("CORRUPT: ", t.path, " (", e.what(), ")");
  }
  if (!checksums) return "";
  const auto stored = h5::read_u64_attr(ds.get(), "checksum");
  if (!stored) return msg("CORRUPT: ", t.path, " (no checksum attribute)");
  uint64_t sum = 0;
  const std::vector<int64_t> zero(shape.size(), 0);
  try {
    read_region(ds.get(), zero, shape, chunk, "read", [&](int64_t first, int64_t n, const float* data) {
      sum += checksum_slab(shape, zero, shape, first, n, data);
    });
  } catch (const UserError&) {
    return msg("CORRUPT: ", t.path, " (unreadable)");
  }
  return sum == *stored ? "" : msg("CORRUPT: ", t.path, " (checksum mismatch)");
}

}  // namespace

int verify(const std::vector<std::string>& args) {
  po::options_description opt("verify options");
  add_command_options(opt);
  add_chunk_option(opt);
  po::variables_map vm;
  if (!parse_options(args, "verify", "CKPT [--chunk-bytes N]", opt, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>();
  const int64_t chunk = chunk_bytes(vm);
  const Checkpoint c = open_checkpoint(path, true, true);
  std::vector<std::string> problems = c.weights ? std::vector<std::string>{} : train_state_problems(c);
  const auto tensors = c.weights ? expected_params(c.cfg) : expected_tensors(c.cfg, Mesh{});
  const bool checksums = !c.weights || c.version >= 2;
  if (!checksums) std::printf("note: weights file version %" PRId64 " has no checksums: shapes checked only\n", c.version);
  int64_t ok = 0;
  for (const CheckpointDataset& t : tensors) {
    const std::string problem = tensor_problem(c, t, checksums, chunk);
    if (problem.empty()) ok++;
    else problems.push_back(problem);
  }
  // Datasets the config does not imply: a version-1 checkpoint has none.
  for (const auto& d : list_datasets(c.file.get(), path)) {
    const bool known = std::any_of(tensors.begin(), tensors.end(), [&](const auto& t) { return t.path == d.path; });
    if (!known) problems.push_back(msg("EXTRA: ", d.path, " (not implied by the stored config)"));
  }
  for (const auto& p : problems) std::printf("%s\n", p.c_str());
  if (!problems.empty()) {
    std::fflush(stdout);
    std::fprintf(stderr, "glam-ckpt: error: %s '%s' failed verification: %zu problem%s, %" PRId64
                 " of %zu datasets verified\n", c.kind(), path.c_str(),
                 problems.size(), problems.size() == 1 ? "" : "s", ok, tensors.size());
    return 2;
  }
  std::printf("OK: %" PRId64 " datasets verified\n", ok);
  return 0;
}

}  // namespace glam::ckpt
