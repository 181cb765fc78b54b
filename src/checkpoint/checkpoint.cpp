// Sharded checkpoints in parallel HDF5 (see checkpoint.h and docs/CHECKPOINT.md).
// All HDF5 calls that create or write are collective over the mesh; a decision
// one rank could take alone (a failed read) is agreed on with mesh.any() before
// anyone throws, so no rank is left waiting in a collective.
#include "glam/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <cerrno>
#include <sstream>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"
#include "glam/base/hash.h"
#include "glam/io/h5.h"

namespace fs = std::filesystem;

namespace glam {

namespace {

Param descriptor(const std::string& name, std::vector<int64_t> global, std::vector<int64_t> local,
                 int model_axis, int data_axis, int64_t replicas) {
  Param d;
  d.name = name;
  d.global_shape = std::move(global);
  d.shape = std::move(local);
  d.model_axis = model_axis;
  d.data_axis = data_axis;
  d.data_replicas = replicas;
  return d;
}

// Drops dim `k` of a shape and moves the sharded axes accordingly (a dropped
// data axis leaves no replicas to count).
Param without_dim(const Param& p, const std::string& name, int k) {
  std::vector<int64_t> g = p.global_shape, l = p.shape;
  g.erase(g.begin() + k);
  l.erase(l.begin() + k);
  auto moved = [k](int axis) { return axis < 0 || axis == k ? -1 : (axis > k ? axis - 1 : axis); };
  const int data_axis = moved(p.data_axis);
  return descriptor(name, g, l, moved(p.model_axis), data_axis, data_axis >= 0 ? p.data_replicas : 1);
}

// Selects this rank's part in the file's dataspace (its hyperslab, or nothing)
// and returns the memory dataspace to match.
h5::Space select_shard(const Param& d, const Mesh& mesh, bool all_replicas, hid_t filespace) {
  h5::Space memspace = h5::simple_space(d.shape);
  if (all_replicas || is_primary(d, mesh)) {
    const std::vector<hsize_t> off = h5::dims_of(d.shard_offset(mesh)), count = h5::dims_of(d.shape);
    GLAM_CHECK_H5(H5Sselect_hyperslab(filespace, H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr));
  } else {
    GLAM_CHECK_H5(H5Sselect_none(filespace));
    GLAM_CHECK_H5(H5Sselect_none(memspace.get()));
  }
  return memspace;
}

uint64_t global_checksum(const CheckpointTensor& t, const Mesh& mesh) {
  return mesh.sum_world(checksum_shard(t.desc, t.data, mesh));
}

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) { ::fsync(fd); ::close(fd); }
}

using h5::check_write;
using h5::write_failed;  // names the file and the cause (errno: ENOSPC, EROFS, ...) and ends the job

// Writes text to path atomically (temporary file, fsync, rename, fsync of the dir);
// every step is checked, so a full disk never leaves an empty `latest`.
void write_atomic(const fs::path& path, const std::string& text) {
  const std::string tmp = path.string() + ".tmp";
  errno = 0;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) write_failed(tmp, "open", errno);
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = errno;
  if (n != static_cast<ssize_t>(text.size()) || ::fsync(fd) != 0) {
    ::close(fd);
    std::remove(tmp.c_str());
    write_failed(tmp, "write", n < 0 ? err : errno);
  }
  if (::close(fd) != 0) write_failed(tmp, "close", errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) write_failed(path.string(), "rename", errno);
  fsync_path(path.parent_path());
}

// Before a collective write: every rank throws the same UserError when rank 0
// finds the directory missing, read-only or without room for `bytes`.
void require_room(const fs::path& dir, const std::string& file, int64_t bytes, const Mesh& mesh) {
  const std::string problem = mesh.is_root() ? write_room_problem(dir.string(), file, bytes) : "";
  GLAM_REQUIRE(!mesh.any(!problem.empty()), problem.empty() ? msg("rank 0 cannot write '", file, "'") : problem);
}

int64_t step_of(const std::string& name) {
  long long step = -1;
  char tail[8] = {0};
  if (std::sscanf(name.c_str(), "step_%lld.%3s", &step, tail) == 2 && std::string(tail) == "h5" &&
      name.size() == checkpoint_name(step).size())
    return step;
  return -1;
}

void prune(const fs::path& dir, int64_t keep, const std::string& newest) {
  std::vector<std::pair<int64_t, fs::path>> ckpts;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp" && name != "latest.tmp") fs::remove(e.path());
    else if (step_of(name) >= 0) ckpts.emplace_back(step_of(name), e.path());
  }
  if (keep <= 0) return;
  std::sort(ckpts.rbegin(), ckpts.rend());
  for (size_t i = static_cast<size_t>(keep); i < ckpts.size(); i++)
    if (ckpts[i].second.filename() != newest) fs::remove(ckpts[i].second);
}

}  // namespace

std::vector<CheckpointDataset> checkpoint_layout(const ParamTable& table, const AdafactorOptions& opt) {
  std::vector<CheckpointDataset> out;
  for (size_t i = 0; i < table.params.size(); i++) {
    const Param& p = table.params[i];
    const Param d = descriptor(p.name, p.global_shape, p.shape, p.model_axis, p.data_axis, p.data_replicas);
    out.push_back({"/params/" + p.name, CheckpointPart::param, i, d});
    const std::string base = "/optimizer/" + p.name;
    if (adafactor_factored(p, opt)) {
      const int nd = static_cast<int>(p.shape.size());
      out.push_back({base + "/vr", CheckpointPart::vr, i, without_dim(d, p.name + "/vr", nd - 1)});
      out.push_back({base + "/vc", CheckpointPart::vc, i, without_dim(d, p.name + "/vc", nd - 2)});
    } else {
      out.push_back({base + "/v", CheckpointPart::v, i, d});
    }
  }
  return out;
}

Mesh mesh_stand_in(int data_size, int model_size, int rank) {
  Mesh m;
  m.data_size = data_size;
  m.model_size = model_size;
  m.data_rank = rank / model_size;
  m.model_rank = rank % model_size;
  m.world_rank = rank;
  m.world_size = data_size * model_size;
  return m;
}

std::vector<CheckpointTensor> checkpoint_tensors(ParamTable& table, Adafactor& opt) {
  std::vector<CheckpointTensor> out;
  for (CheckpointDataset& d : checkpoint_layout(table, opt.options())) {
    AdafactorSlot& s = opt.slots()[d.param_index];
    GLAM_ASSERT(s.factored == (d.part == CheckpointPart::vr || d.part == CheckpointPart::vc) || d.is_param());
    float* data = d.part == CheckpointPart::param ? table.params[d.param_index].w.data()
                  : d.part == CheckpointPart::v   ? s.v.data()
                  : d.part == CheckpointPart::vr  ? s.vr.data()
                                                  : s.vc.data();
    out.push_back({std::move(d), data});
  }
  return out;
}

uint64_t checksum_element(uint64_t global_index, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return mix64(global_index * kSplitmixGamma + bits);
}

uint64_t checksum_shard(const Param& desc, const float* data, const Mesh& mesh) {
  if (!is_primary(desc, mesh)) return 0;
  uint64_t sum = 0;
  for_each_element(desc, mesh, [&](int64_t i, int64_t g) { sum += checksum_element(static_cast<uint64_t>(g), data[i]); });
  return sum;
}

std::string train_state_problem(const TrainState& st, int64_t train_steps, int64_t batch_rows) {
  if (st.step < 0 || st.step > train_steps)
    return msg("step ", st.step, " is outside [0, train.steps = ", train_steps, "]");
  if (st.updates < 0 || st.skipped_total < 0 || st.updates > st.step || st.skipped_total != st.step - st.updates)
    return msg("updates ", st.updates, " + skipped_total ", st.skipped_total, " is not step ", st.step);
  if (batch_rows <= 0 || checked_mul(st.step, batch_rows) != st.data_next_row)
    return msg("data_next_row ", st.data_next_row, " is not step ", st.step, " * train.batch_rows ", batch_rows);
  return "";
}

bool ini_int(const std::string& ini, const std::string& section, const std::string& key, int64_t* value) {
  std::istringstream in(ini);
  std::string line, current;
  while (std::getline(in, line)) {
    const size_t a = line.find_first_not_of(" \t\r"), b = line.find_last_not_of(" \t\r");
    if (a == std::string::npos) continue;
    const std::string text = line.substr(a, b - a + 1);
    if (text.front() == '[' && text.back() == ']') { current = text.substr(1, text.size() - 2); continue; }
    const size_t eq = text.find('=');
    if (current != section || eq == std::string::npos) continue;
    const std::string name = text.substr(0, text.find_last_not_of(" \t", eq - 1) + 1);
    if (eq == 0 || name != key) continue;
    const std::string v = text.substr(std::min(text.size(), text.find_first_not_of(" \t", eq + 1)));
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || errno != 0 || *end != '\0') return false;
    *value = n;
    return true;
  }
  return false;
}

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld.h5", static_cast<long long>(step));
  return buf;
}

std::string latest_checkpoint(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  std::ifstream in(dir / "latest");
  if (!in) return "";
  std::string name;
  std::getline(in, name);
  GLAM_REQUIRE(step_of(name) >= 0 && fs::exists(dir / name), "checkpoint marker '", (dir / "latest").string(),
               "' names '", name, "', which is not a checkpoint file in that directory");
  return (dir / name).string();
}

namespace {

// The root attributes (docs/CHECKPOINT.md); a failure names the file and ends the job.
void write_root_attrs(hid_t f, const std::string& file_name, const TrainState& state, const Config& cfg,
                      const Mesh& mesh) {
  check_write(h5::write_string_attr(f, "format", kCheckpointFormat), file_name, "format");
  check_write(h5::write_int_attr(f, "version", kCheckpointVersion), file_name, "version");
  check_write(h5::write_int_attr(f, "step", state.step), file_name, "step");
  check_write(h5::write_int_attr(f, "updates", state.updates), file_name, "updates");
  check_write(h5::write_int_attr(f, "skipped_total", state.skipped_total), file_name, "skipped_total");
  check_write(h5::write_int_attr(f, "data_next_row", state.data_next_row), file_name, "data_next_row");
  check_write(h5::write_u64_attr(f, "seed", state.seed), file_name, "seed");
  check_write(h5::write_string_attr(f, "config", cfg.to_ini()), file_name, "config");
  check_write(h5::write_string_attr(f, "mesh", msg(mesh.data_size, "x", mesh.model_size)), file_name, "mesh");
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, ParamTable& table, Adafactor& opt, const TrainState& state,
                            const Config& cfg, const Mesh& mesh, int64_t keep) {
  const fs::path dir = fs::path(run_dir) / "checkpoints";
  const std::string name = checkpoint_name(state.step);
  const fs::path final_path = dir / name, tmp = dir / (name + ".tmp");
  const std::vector<CheckpointTensor> tensors = checkpoint_tensors(table, opt);
  int64_t bytes = 1 << 20;  // attributes and HDF5's own structures
  for (const CheckpointTensor& t : tensors) bytes += t.desc.global_size() * 4 + 4096;
  require_room(dir, tmp.string(), bytes, mesh);
  QuietHdf5 quiet;  // failures are reported below, naming the file and the cause
  const std::string file_name = tmp.string();

  const h5::Plist fapl = mesh.mpio_file_access();
  errno = 0;
  h5::File file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()));
  const int create_errno = errno;
  GLAM_REQUIRE(!mesh.any(!file.valid()), "cannot create checkpoint '", file_name, "': ", io_error_reason(create_errno));
  const hid_t f = file.get();
  write_root_attrs(f, file_name, state, cfg, mesh);
  const h5::Plist lcpl = h5::intermediate_groups(), dxpl = h5::collective_transfer();
  for (size_t i = 0; i < tensors.size(); i++) {
    const CheckpointTensor& t = tensors[i];
    debug_kill_point("checkpoint", state.step, static_cast<int64_t>(i));
    const h5::Space filespace = h5::simple_space(t.desc.global_shape);
    const h5::Dataset ds(check_write(H5Dcreate2(f, t.path.c_str(), H5T_IEEE_F32LE, filespace.get(), lcpl.get(),
                                                H5P_DEFAULT, H5P_DEFAULT), file_name, t.path));
    const h5::Space memspace = select_shard(t.desc, mesh, false, filespace.get());
    errno = 0;
    check_write(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, memspace.get(), filespace.get(), dxpl.get(), t.data), file_name,
                t.path);
    check_write(h5::write_u64_attr(ds.get(), "checksum", global_checksum(t, mesh)), file_name, t.path);
  }
  errno = 0;
  check_write(H5Fflush(f, H5F_SCOPE_GLOBAL), file_name, "flush");
  check_write(file.close(), file_name, "close");
  debug_kill_point("checkpoint", state.step, static_cast<int64_t>(tensors.size()));
  if (mesh.is_root()) {
    fsync_path(tmp);
    if (std::rename(tmp.c_str(), final_path.c_str()) != 0) write_failed(final_path.string(), "rename", errno);
    fsync_path(dir);
    debug_kill_point("checkpoint", state.step, static_cast<int64_t>(tensors.size()) + 1);
    write_atomic(dir / "latest", name + "\n");
    prune(dir, keep, name);
  }
  mesh.barrier();
  return final_path.string();
}

namespace {

// The training state of an open checkpoint, checked against the config that wrote
// it before anything replays `step` rows.
TrainState read_train_state(hid_t file, const std::string& path) {
  GLAM_REQUIRE(h5::read_string_attr(file, "format").value_or("") == kCheckpointFormat, "'", path,
               "' is not a glam checkpoint (format attribute)");
  const int64_t version = h5::read_int_attr(file, "version").value_or(0);
  GLAM_REQUIRE(version == kCheckpointVersion, "checkpoint '", path, "' has format version ", version, "; this glam reads ",
               kCheckpointVersion, " (glam-ckpt convert)");
  const auto step = h5::read_int_attr(file, "step"), updates = h5::read_int_attr(file, "updates");
  const auto skipped = h5::read_int_attr(file, "skipped_total"), next = h5::read_int_attr(file, "data_next_row");
  const auto seed = h5::read_u64_attr(file, "seed");
  GLAM_REQUIRE(step && updates && skipped && next && seed, "checkpoint '", path,
               "' lacks a training-state attribute (step, updates, ...)");
  const TrainState st{*step, *updates, *skipped, *next, *seed};
  const std::string ini = h5::read_string_attr(file, "config").value_or("");
  int64_t steps = -1, rows = -1;
  GLAM_REQUIRE(ini_int(ini, "train", "steps", &steps) && ini_int(ini, "train", "batch_rows", &rows),
               "checkpoint '", path, "': its config attribute lacks [train] steps and batch_rows");
  const std::string problem = train_state_problem(st, steps, rows);
  GLAM_REQUIRE(problem.empty(), "checkpoint '", path, "': ", problem,
               " (damaged training state; resume from an older checkpoint)");
  return st;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string out;
  for (int64_t d : dims) out += (out.empty() ? "" : "x") + std::to_string(d);
  return out;
}

// Collective: this rank's hyperslab of one tensor, its shape and checksum checked.
void read_tensor(hid_t file, const std::string& path, int64_t file_size, hid_t dxpl, CheckpointTensor& t,
                 const Mesh& mesh) {
  const h5::Dataset ds(H5Dopen2(file, t.path.c_str(), H5P_DEFAULT));
  GLAM_REQUIRE(ds.valid(), "checkpoint '", path, "' has no dataset ", t.path,
               " (written for another model config or n_experts?)");
  const std::vector<int64_t> dims =
      checked_dataset_shape(ds.get(), msg("checkpoint '", path, "'"), t.path, sizeof(float), file_size);
  GLAM_REQUIRE(dims == t.desc.global_shape, "checkpoint '", path, "': dataset ", t.path, " has shape [",
               dims_text(dims), "] but the config implies [", dims_text(t.desc.global_shape), "]");
  const h5::Space filespace(H5Dget_space(ds.get()));
  const h5::Space memspace = select_shard(t.desc, mesh, true, filespace.get());
  const bool read_ok = H5Dread(ds.get(), H5T_NATIVE_FLOAT, memspace.get(), filespace.get(), dxpl, t.data) >= 0;
  GLAM_REQUIRE(!mesh.any(!read_ok), "checkpoint '", path, "': dataset ", t.path, " cannot be read (truncated file?)");
  const std::optional<uint64_t> stored = h5::read_u64_attr(ds.get(), "checksum");
  GLAM_REQUIRE(stored && global_checksum(t, mesh) == *stored, "checkpoint '", path, "': dataset ", t.path,
               " is corrupt (checksum mismatch)");
}

}  // namespace

TrainState load_checkpoint(const std::string& path, ParamTable& table, Adafactor& opt, const Mesh& mesh) {
  GLAM_REQUIRE(fs::exists(path), "checkpoint '", path, "' does not exist");
  QuietHdf5 quiet;  // failures are reported naming the file and the dataset
  const h5::Plist fapl = mesh.mpio_file_access();
  const h5::File file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()));
  GLAM_REQUIRE(file.valid(), "checkpoint '", path, "' is not a readable HDF5 file (truncated or corrupt?)");
  const TrainState st = read_train_state(file.get(), path);
  const int64_t file_size = file_bytes(path, "checkpoint");
  const h5::Plist dxpl = h5::collective_transfer();
  for (CheckpointTensor& t : checkpoint_tensors(table, opt))
    read_tensor(file.get(), path, file_size, dxpl.get(), t, mesh);
  return st;
}

}  // namespace glam
