// Sharded checkpoints in parallel HDF5 (see checkpoint.h and docs/CHECKPOINT.md).
// All HDF5 calls that create or write are collective over the mesh; a decision
// one rank could take alone (a failed read) is agreed on with mesh.any() before
// anyone throws, so no rank is left waiting in a collective.
#include "glam/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
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

#include "glam/bounded_read.h"
#include "glam/check.h"

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

// Drops dim `k` of a shape and moves the sharded axes accordingly.
Param without_dim(const Param& p, const std::string& name, int k) {
  std::vector<int64_t> g = p.global_shape, l = p.shape;
  g.erase(g.begin() + k);
  l.erase(l.begin() + k);
  auto moved = [k](int axis) { return axis < 0 || axis == k ? -1 : (axis > k ? axis - 1 : axis); };
  return descriptor(name, g, l, moved(p.model_axis), moved(p.data_axis), p.data_replicas);
}

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// RAII for HDF5 ids.
struct H5 {
  hid_t id;
  herr_t (*close)(hid_t);
  ~H5() { if (id >= 0) close(id); }
};

void write_attr(hid_t obj, const char* name, hid_t type, const void* value) {
  H5 space{GLAM_CHECK_H5(H5Screate(H5S_SCALAR)), H5Sclose};
  H5 attr{GLAM_CHECK_H5(H5Acreate2(obj, name, type, space.id, H5P_DEFAULT, H5P_DEFAULT)), H5Aclose};
  GLAM_CHECK_H5(H5Awrite(attr.id, type, value));
}

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  H5 type{GLAM_CHECK_H5(H5Tcopy(H5T_C_S1)), H5Tclose};
  GLAM_CHECK_H5(H5Tset_size(type.id, value.size() + 1));
  write_attr(obj, name, type.id, value.c_str());
}

// One value of an attribute (an array attribute read into one would overrun it).
bool single_value(hid_t attr) {
  H5 space{H5Aget_space(attr), H5Sclose};
  return space.id >= 0 && H5Sget_simple_extent_npoints(space.id) == 1;
}

bool read_attr(hid_t obj, const char* name, hid_t type, void* value) {
  if (H5Aexists(obj, name) <= 0) return false;
  H5 attr{H5Aopen(obj, name, H5P_DEFAULT), H5Aclose};
  return attr.id >= 0 && single_value(attr.id) && H5Aread(attr.id, type, value) >= 0;
}

constexpr size_t kMaxConfigBytes = 1 << 20;  // the INI text of a config is a few KB

std::string read_string_attr(hid_t obj, const char* name) {
  if (H5Aexists(obj, name) <= 0) return "";
  H5 attr{H5Aopen(obj, name, H5P_DEFAULT), H5Aclose};
  if (attr.id < 0 || !single_value(attr.id)) return "";
  H5 type{H5Aget_type(attr.id), H5Tclose};
  if (type.id < 0 || H5Tget_class(type.id) != H5T_STRING) return "";
  if (H5Tis_variable_str(type.id) > 0) {
    char* s = nullptr;
    H5 mem{H5Tcopy(H5T_C_S1), H5Tclose};
    H5Tset_size(mem.id, H5T_VARIABLE);
    if (H5Aread(attr.id, mem.id, &s) < 0 || !s) return "";
    std::string out(s);
    H5free_memory(s);
    return out;
  }
  if (H5Tget_size(type.id) > kMaxConfigBytes) return "";
  std::string out(H5Tget_size(type.id), '\0');
  if (H5Aread(attr.id, type.id, out.data()) < 0) return "";
  return out.c_str();
}

// Collective-IO file access over the whole mesh. HDF5 gets a plain (non-Cartesian)
// copy of the mesh communicator: Open MPI 4.1's OMPIO collective writes (fcoll
// vulcan) corrupt data when handed the Cartesian one (seen on 2x2 meshes); HDF5
// duplicates the communicator, so ours is freed right away.
hid_t mpio_fapl(const Mesh& mesh) {
  MPI_Comm plain;
  GLAM_CHECK_MPI(MPI_Comm_split(mesh.world, 0, mesh.world_rank, &plain));
  hid_t fapl = GLAM_CHECK_H5(H5Pcreate(H5P_FILE_ACCESS));
  GLAM_CHECK_H5(H5Pset_fapl_mpio(fapl, plain, MPI_INFO_NULL));
  MPI_Comm_free(&plain);
  return fapl;
}

// File and memory dataspaces for this rank's part: its hyperslab, or nothing.
void select_shard(const Param& d, const Mesh& mesh, bool all_replicas, hid_t filespace, hid_t* memspace) {
  const std::vector<hsize_t> count(d.shape.begin(), d.shape.end());
  if (all_replicas || is_primary(d, mesh)) {
    const std::vector<int64_t> off64 = d.shard_offset(mesh);
    const std::vector<hsize_t> off(off64.begin(), off64.end());
    GLAM_CHECK_H5(H5Sselect_hyperslab(filespace, H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr));
    *memspace = GLAM_CHECK_H5(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
  } else {
    GLAM_CHECK_H5(H5Sselect_none(filespace));
    *memspace = GLAM_CHECK_H5(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
    GLAM_CHECK_H5(H5Sselect_none(*memspace));
  }
}

uint64_t global_checksum(const CheckpointTensor& t, const Mesh& mesh) {
  uint64_t sum = checksum_shard(t.desc, t.data, mesh);
  if (mesh.world_size > 1)
    GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_UINT64_T, MPI_SUM, mesh.world));
  return sum;
}

void fsync_path(const fs::path& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  if (fd >= 0) { ::fsync(fd); ::close(fd); }
}

// Writes text to path atomically (temporary file, fsync, rename, fsync of the dir).
// A failed write names the file and the cause (errno: ENOSPC, EROFS, ...) and ends the job.
[[noreturn]] void write_failed(const std::string& file, const std::string& what, int err) {
  fatal(msg("cannot write '", file, "' (", what, "): ", io_error_reason(err)), __FILE__, __LINE__);
}

template <typename T>
T check_write(T rc, const std::string& file, const char* what) {
  if (rc < 0) write_failed(file, what, errno);
  return rc;
}

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

std::vector<CheckpointTensor> checkpoint_tensors(ParamTable& table, Adafactor& opt) {
  std::vector<CheckpointTensor> out;
  for (size_t i = 0; i < table.params.size(); i++) {
    Param& p = table.params[i];
    AdafactorSlot& s = opt.slots()[i];
    Param d = descriptor(p.name, p.global_shape, p.shape, p.model_axis, p.data_axis, p.data_replicas);
    out.push_back({"/params/" + p.name, d, p.w.data()});
    const std::string base = "/optimizer/" + p.name;
    if (s.factored) {
      const int nd = static_cast<int>(p.shape.size());
      out.push_back({base + "/vr", without_dim(d, p.name + "/vr", nd - 1), s.vr.data()});
      out.push_back({base + "/vc", without_dim(d, p.name + "/vc", nd - 2), s.vc.data()});
    } else {
      out.push_back({base + "/v", d, s.v.data()});
    }
  }
  return out;
}

uint64_t checksum_element(uint64_t global_index, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return mix(global_index * 0x9E3779B97F4A7C15ULL + bits);
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

  H5 fapl{mpio_fapl(mesh), H5Pclose};
  errno = 0;
  H5 file{H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id), H5Fclose};
  const int create_errno = errno;
  GLAM_REQUIRE(!mesh.any(file.id < 0), "cannot create checkpoint '", tmp.string(), "': ", io_error_reason(create_errno));
  write_string_attr(file.id, "format", kCheckpointFormat);
  write_attr(file.id, "version", H5T_NATIVE_INT64, &kCheckpointVersion);
  write_attr(file.id, "step", H5T_NATIVE_INT64, &state.step);
  write_attr(file.id, "updates", H5T_NATIVE_INT64, &state.updates);
  write_attr(file.id, "skipped_total", H5T_NATIVE_INT64, &state.skipped_total);
  write_attr(file.id, "data_next_row", H5T_NATIVE_INT64, &state.data_next_row);
  write_attr(file.id, "seed", H5T_NATIVE_UINT64, &state.seed);
  write_string_attr(file.id, "config", cfg.to_ini());
  write_string_attr(file.id, "mesh", std::to_string(mesh.data_size) + "x" + std::to_string(mesh.model_size));

  H5 lcpl{GLAM_CHECK_H5(H5Pcreate(H5P_LINK_CREATE)), H5Pclose};
  GLAM_CHECK_H5(H5Pset_create_intermediate_group(lcpl.id, 1));
  H5 dxpl{GLAM_CHECK_H5(H5Pcreate(H5P_DATASET_XFER)), H5Pclose};
  GLAM_CHECK_H5(H5Pset_dxpl_mpio(dxpl.id, H5FD_MPIO_COLLECTIVE));
  for (size_t i = 0; i < tensors.size(); i++) {
    const CheckpointTensor& t = tensors[i];
    debug_kill_point("checkpoint", state.step, static_cast<int64_t>(i));
    const std::vector<hsize_t> dims(t.desc.global_shape.begin(), t.desc.global_shape.end());
    H5 filespace{GLAM_CHECK_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose};
    H5 ds{check_write(H5Dcreate2(file.id, t.path.c_str(), H5T_IEEE_F32LE, filespace.id, lcpl.id, H5P_DEFAULT,
                                 H5P_DEFAULT), tmp.string(), t.path.c_str()), H5Dclose};
    hid_t mem = -1;
    select_shard(t.desc, mesh, false, filespace.id, &mem);
    H5 memspace{mem, H5Sclose};
    errno = 0;
    check_write(H5Dwrite(ds.id, H5T_NATIVE_FLOAT, memspace.id, filespace.id, dxpl.id, t.data), tmp.string(),
                t.path.c_str());
    const uint64_t sum = global_checksum(t, mesh);
    write_attr(ds.id, "checksum", H5T_NATIVE_UINT64, &sum);
  }
  errno = 0;
  check_write(H5Fflush(file.id, H5F_SCOPE_GLOBAL), tmp.string(), "flush");
  check_write(H5Fclose(file.id), tmp.string(), "close");
  file.id = -1;
  debug_kill_point("checkpoint", state.step, static_cast<int64_t>(tensors.size()));
  if (mesh.is_root()) {
    fsync_path(tmp);
    if (std::rename(tmp.c_str(), final_path.c_str()) != 0) write_failed(final_path.string(), "rename", errno);
    fsync_path(dir);
    debug_kill_point("checkpoint", state.step, static_cast<int64_t>(tensors.size()) + 1);
    write_atomic(dir / "latest", name + "\n");
    prune(dir, keep, name);
  }
  MPI_Barrier(mesh.world);
  return final_path.string();
}

TrainState load_checkpoint(const std::string& path, ParamTable& table, Adafactor& opt, const Mesh& mesh) {
  GLAM_REQUIRE(fs::exists(path), "checkpoint '", path, "' does not exist");
  H5E_auto2_t old_func;
  void* old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_func, &old_data);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  struct Restore {  // HDF5's own error printing back on, however we leave
    H5E_auto2_t f; void* d;
    ~Restore() { H5Eset_auto2(H5E_DEFAULT, f, d); }
  } restore{old_func, old_data};

  H5 fapl{mpio_fapl(mesh), H5Pclose};
  H5 file{H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.id), H5Fclose};
  GLAM_REQUIRE(file.id >= 0, "checkpoint '", path, "' is not a readable HDF5 file (truncated or corrupt?)");
  GLAM_REQUIRE(read_string_attr(file.id, "format") == kCheckpointFormat, "'", path, "' is not a glam checkpoint (format attribute)");
  int64_t version = 0;
  read_attr(file.id, "version", H5T_NATIVE_INT64, &version);
  GLAM_REQUIRE(version == kCheckpointVersion, "checkpoint '", path, "' has format version ", version, "; this glam reads ",
               kCheckpointVersion, " (glam-ckpt convert)");
  TrainState st;
  bool ok = read_attr(file.id, "step", H5T_NATIVE_INT64, &st.step) &&
            read_attr(file.id, "updates", H5T_NATIVE_INT64, &st.updates) &&
            read_attr(file.id, "skipped_total", H5T_NATIVE_INT64, &st.skipped_total) &&
            read_attr(file.id, "data_next_row", H5T_NATIVE_INT64, &st.data_next_row) &&
            read_attr(file.id, "seed", H5T_NATIVE_UINT64, &st.seed);
  GLAM_REQUIRE(ok, "checkpoint '", path, "' lacks a training-state attribute (step, updates, ...)");
  // Checked against the config that wrote it before anything replays `step` rows.
  const std::string ini = read_string_attr(file.id, "config");
  int64_t steps = -1, rows = -1;
  GLAM_REQUIRE(ini_int(ini, "train", "steps", &steps) && ini_int(ini, "train", "batch_rows", &rows),
               "checkpoint '", path, "': its config attribute lacks [train] steps and batch_rows");
  const std::string problem = train_state_problem(st, steps, rows);
  GLAM_REQUIRE(problem.empty(), "checkpoint '", path, "': ", problem,
               " (damaged training state; resume from an older checkpoint)");
  const int64_t file_size = file_bytes(path, "checkpoint");

  H5 dxpl{GLAM_CHECK_H5(H5Pcreate(H5P_DATASET_XFER)), H5Pclose};
  GLAM_CHECK_H5(H5Pset_dxpl_mpio(dxpl.id, H5FD_MPIO_COLLECTIVE));
  for (CheckpointTensor& t : checkpoint_tensors(table, opt)) {
    H5 ds{H5Dopen2(file.id, t.path.c_str(), H5P_DEFAULT), H5Dclose};
    GLAM_REQUIRE(ds.id >= 0, "checkpoint '", path, "' has no dataset ", t.path,
                 " (written for another model config or n_experts?)");
    const std::vector<int64_t> dims =
        checked_dataset_shape(ds.id, msg("checkpoint '", path, "'"), t.path, sizeof(float), file_size);
    H5 filespace{H5Dget_space(ds.id), H5Sclose};
    const std::vector<int64_t>& want = t.desc.global_shape;
    if (dims != want) {
      std::string got, expected;
      for (int64_t d : dims) got += (got.empty() ? "" : "x") + std::to_string(d);
      for (int64_t d : want) expected += (expected.empty() ? "" : "x") + std::to_string(d);
      throw UserError(msg("checkpoint '", path, "': dataset ", t.path, " has shape [", got, "] but the config implies [",
                          expected, "]"));
    }
    hid_t mem = -1;
    select_shard(t.desc, mesh, true, filespace.id, &mem);
    H5 memspace{mem, H5Sclose};
    const bool read_ok = H5Dread(ds.id, H5T_NATIVE_FLOAT, memspace.id, filespace.id, dxpl.id, t.data) >= 0;
    GLAM_REQUIRE(!mesh.any(!read_ok), "checkpoint '", path, "': dataset ", t.path, " cannot be read (truncated file?)");
    uint64_t stored = 0;
    const bool has_sum = read_attr(ds.id, "checksum", H5T_NATIVE_UINT64, &stored);
    GLAM_REQUIRE(has_sum && global_checksum(t, mesh) == stored, "checkpoint '", path, "': dataset ", t.path,
                 " is corrupt (checksum mismatch)");
  }
  return st;
}

}  // namespace glam
