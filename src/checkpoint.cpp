// Sharded checkpoints in parallel HDF5 (see checkpoint.h and docs/CHECKPOINT.md).
// All HDF5 calls that create or write are collective over the mesh; a decision
// one rank could take alone (a failed read) is agreed on with mesh.any() before
// anyone throws, so no rank is left waiting in a collective.
#include "glam/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

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

bool read_attr(hid_t obj, const char* name, hid_t type, void* value) {
  if (H5Aexists(obj, name) <= 0) return false;
  H5 attr{H5Aopen(obj, name, H5P_DEFAULT), H5Aclose};
  return attr.id >= 0 && H5Aread(attr.id, type, value) >= 0;
}

std::string read_string_attr(hid_t obj, const char* name) {
  if (H5Aexists(obj, name) <= 0) return "";
  H5 attr{H5Aopen(obj, name, H5P_DEFAULT), H5Aclose};
  H5 type{H5Aget_type(attr.id), H5Tclose};
  if (H5Tis_variable_str(type.id) > 0) {
    char* s = nullptr;
    H5 mem{H5Tcopy(H5T_C_S1), H5Tclose};
    H5Tset_size(mem.id, H5T_VARIABLE);
    if (H5Aread(attr.id, mem.id, &s) < 0 || !s) return "";
    std::string out(s);
    H5free_memory(s);
    return out;
  }
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
void write_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  { std::ofstream(tmp) << text; }
  fsync_path(tmp);
  fs::rename(tmp, path);
  fsync_path(path.parent_path());
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
  if (mesh.is_root()) fs::create_directories(dir);
  MPI_Barrier(mesh.world);
  const std::string name = checkpoint_name(state.step);
  const fs::path final_path = dir / name, tmp = dir / (name + ".tmp");

  H5 fapl{mpio_fapl(mesh), H5Pclose};
  H5 file{H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id), H5Fclose};
  if (file.id < 0) fatal("cannot create checkpoint '" + tmp.string() + "'", __FILE__, __LINE__);
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
  const std::vector<CheckpointTensor> tensors = checkpoint_tensors(table, opt);
  for (size_t i = 0; i < tensors.size(); i++) {
    const CheckpointTensor& t = tensors[i];
    debug_kill_point("checkpoint", state.step, static_cast<int64_t>(i));
    const std::vector<hsize_t> dims(t.desc.global_shape.begin(), t.desc.global_shape.end());
    H5 filespace{GLAM_CHECK_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)), H5Sclose};
    H5 ds{GLAM_CHECK_H5(H5Dcreate2(file.id, t.path.c_str(), H5T_IEEE_F32LE, filespace.id, lcpl.id, H5P_DEFAULT,
                                   H5P_DEFAULT)), H5Dclose};
    hid_t mem = -1;
    select_shard(t.desc, mesh, false, filespace.id, &mem);
    H5 memspace{mem, H5Sclose};
    GLAM_CHECK_H5(H5Dwrite(ds.id, H5T_NATIVE_FLOAT, memspace.id, filespace.id, dxpl.id, t.data));
    const uint64_t sum = global_checksum(t, mesh);
    write_attr(ds.id, "checksum", H5T_NATIVE_UINT64, &sum);
  }
  GLAM_CHECK_H5(H5Fflush(file.id, H5F_SCOPE_GLOBAL));
  H5Fclose(file.id);
  file.id = -1;
  debug_kill_point("checkpoint", state.step, static_cast<int64_t>(tensors.size()));
  if (mesh.is_root()) {
    fsync_path(tmp);
    fs::rename(tmp, final_path);
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

  H5 dxpl{GLAM_CHECK_H5(H5Pcreate(H5P_DATASET_XFER)), H5Pclose};
  GLAM_CHECK_H5(H5Pset_dxpl_mpio(dxpl.id, H5FD_MPIO_COLLECTIVE));
  for (CheckpointTensor& t : checkpoint_tensors(table, opt)) {
    H5 ds{H5Dopen2(file.id, t.path.c_str(), H5P_DEFAULT), H5Dclose};
    GLAM_REQUIRE(ds.id >= 0, "checkpoint '", path, "' has no dataset ", t.path,
                 " (written for another model config or n_experts?)");
    H5 filespace{H5Dget_space(ds.id), H5Sclose};
    std::vector<hsize_t> dims(std::max(0, H5Sget_simple_extent_ndims(filespace.id)));
    H5Sget_simple_extent_dims(filespace.id, dims.data(), nullptr);
    const std::vector<hsize_t> want(t.desc.global_shape.begin(), t.desc.global_shape.end());
    if (dims != want) {
      std::string got, expected;
      for (hsize_t d : dims) got += (got.empty() ? "" : "x") + std::to_string(d);
      for (hsize_t d : want) expected += (expected.empty() ? "" : "x") + std::to_string(d);
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
