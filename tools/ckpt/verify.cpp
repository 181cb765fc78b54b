// glam-ckpt verify: recomputes every checksum and checks every dataset against the
// stored config (present, shape, float32, storage within the file, no extras), and
// a checkpoint's training state. Prints one line per problem; exit 2 when any.
// Every rank makes the metadata checks (cheap, the same everywhere); the checksums'
// reads are split over the ranks in blocks (pieces.cpp) and their sums added up.
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

// What is wrong with the metadata of one dataset the config implies ("" when
// nothing): present, shape, float32, storage within the file; with `checksums`,
// a stored checksum (in *stored).
std::string tensor_problem(const Checkpoint& c, const CheckpointDataset& t, bool checksums, uint64_t* stored) {
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
  const auto sum = h5::read_u64_attr(ds.get(), "checksum");
  if (!sum) return msg("CORRUPT: ", t.path, " (no checksum attribute)");
  *stored = *sum;
  return "";
}

// What verify found, the same on every rank.
struct Findings {
  std::vector<std::string> state;    // training-state problems
  std::vector<std::string> tensors;  // per dataset the config implies: its problem or ""
  std::vector<std::string> extra;    // datasets the config does not imply
  size_t count() const {
    size_t n = state.size() + extra.size();
    for (const auto& p : tensors) n += !p.empty();
    return n;
  }
};

// Every check but the checksums' sums: the training state, each dataset's
// metadata, datasets the config does not imply. Adds a region to `job` for
// each dataset whose checksum is to be recomputed (stored: what it must sum to).
Findings check_metadata(const Checkpoint& c, const std::vector<CheckpointDataset>& tensors, bool checksums,
                        PieceJob& job, std::vector<size_t>& region_tensor, std::vector<uint64_t>& stored) {
  Findings found;
  if (!c.weights) found.state = train_state_problems(c);
  for (size_t i = 0; i < tensors.size(); i++) {
    uint64_t sum = 0;
    found.tensors.push_back(tensor_problem(c, tensors[i], checksums, &sum));
    if (!found.tensors.back().empty() || !checksums) continue;
    const auto& shape = tensors[i].desc.global_shape;
    job.regions.push_back({tensors[i].path, shape, std::vector<int64_t>(shape.size(), 0), shape, -1, 0});
    region_tensor.push_back(i);
    stored.push_back(sum);
  }
  // Datasets the config does not imply: a version-1 checkpoint has none.
  for (const auto& d : list_datasets(c.file.get(), c.path)) {
    const bool known = std::any_of(tensors.begin(), tensors.end(), [&](const auto& t) { return t.path == d.path; });
    if (!known) found.extra.push_back(msg("EXTRA: ", d.path, " (not implied by the stored config)"));
  }
  return found;
}

// Prints the findings (rank 0); returns the exit status.
int report(const Team& team, const Checkpoint& c, const Findings& found, size_t n_tensors, const PieceResult& res,
           int64_t memory_limit) {
  const size_t problems = found.count();
  if (team.root()) {
    for (const auto* list : {&found.state, &found.tensors, &found.extra})
      for (const auto& p : *list)
        if (!p.empty()) std::printf("%s\n", p.c_str());
    if (problems == 0) std::printf("OK: %zu datasets verified\n", n_tensors);
  }
  report_memory(team, res.peak_buffer, memory_limit);
  if (problems == 0) return 0;
  const auto ok = std::count(found.tensors.begin(), found.tensors.end(), std::string());
  if (team.root())
    std::fprintf(stderr, "glam-ckpt: error: %s '%s' failed verification: %zu problem%s, %td of %zu datasets verified\n",
                 c.kind(), c.path.c_str(), problems, problems == 1 ? "" : "s", ok, n_tensors);
  return 2;
}

}  // namespace

int verify(const std::vector<std::string>& args) {
  po::options_description opt("verify options");
  add_command_options(opt);
  add_memory_options(opt);
  po::variables_map vm;
  if (!parse_options(args, "verify", "CKPT [--memory-limit SIZE] [--chunk-bytes N]", opt, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>();
  const MemoryOptions memory = memory_options(vm);
  const Team& team = Team::world();
  Checkpoint c;
  std::vector<CheckpointDataset> tensors;
  Findings found;
  PieceJob job;
  std::vector<size_t> region_tensor;  // the dataset of each region
  std::vector<uint64_t> stored;       // the checksum each region must sum to
  team.agree([&] {
    c = open_checkpoint(path, true, true);
    tensors = c.weights ? expected_params(c.cfg) : expected_tensors(c.cfg, Mesh{});
    const bool checksums = !c.weights || c.version >= 2;
    if (!checksums && team.root())
      std::printf("note: weights file version %" PRId64 " has no checksums: shapes checked only\n", c.version);
    found = check_metadata(c, tensors, checksums, job, region_tensor, stored);
  });
  job.c = &c;
  job.keep_going = true;
  job.memory_limit = memory.limit;
  job.chunk = memory.chunk;
  const PieceResult res = run_pieces(team, job);
  for (size_t k = 0; k < job.regions.size(); k++) {
    std::string& problem = found.tensors[region_tensor[k]];
    if (res.unreadable[k] > 0) problem = msg("CORRUPT: ", job.regions[k].path, " (unreadable)");
    else if (res.sums[k] != stored[k]) problem = msg("CORRUPT: ", job.regions[k].path, " (checksum mismatch)");
  }
  return report(team, c, found, tensors.size(), res, memory.limit);
}

}  // namespace glam::ckpt
