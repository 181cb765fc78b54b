// HDF5 weights file (see weights.h and docs/CHECKPOINT.md). Version 2 gives every
// dataset the checkpoint's `checksum` attribute; version 1 files (no checksums)
// are still read, with a warning.
#include "glam/weights.h"

#include <hdf5.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "glam/bounded_read.h"
#include "glam/check.h"
#include "glam/checkpoint.h"

namespace glam {

namespace {

constexpr const char* kFormat = "glam-weights";

// RAII for HDF5 ids.
struct H5 {
  hid_t id;
  herr_t (*close)(hid_t);
  ~H5() { if (id >= 0) close(id); }
};

// A failed write names the file and the cause and ends the job (rank 0 writes alone).
template <typename T>
T check_write(T rc, const std::string& file, const std::string& what) {
  if (rc < 0) fatal(msg("cannot write '", file, "' (", what, "): ", io_error_reason(errno)), __FILE__, __LINE__);
  return rc;
}

void write_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value,
                const std::string& file) {
  H5 space{check_write(H5Screate(H5S_SCALAR), file, name), H5Sclose};
  H5 attr{check_write(H5Acreate2(obj, name, file_type, space.id, H5P_DEFAULT, H5P_DEFAULT), file, name), H5Aclose};
  check_write(H5Awrite(attr.id, mem_type, value), file, name);
}

void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& file) {
  H5 type{check_write(H5Tcopy(H5T_C_S1), file, name), H5Tclose};
  check_write(H5Tset_size(type.id, value.size() + 1), file, name);
  write_attr(obj, name, type.id, type.id, value.c_str(), file);
}

// Sum of checksum_element over a whole tensor (flat row-major global index).
uint64_t checksum_global(const std::vector<float>& global) {
  uint64_t sum = 0;
  for (size_t i = 0; i < global.size(); i++) sum += checksum_element(i, global[i]);
  return sum;
}

void write_param(hid_t file, hid_t lcpl, const Param& p, const std::vector<float>& global, const std::string& tmp) {
  const std::string name = "/params/" + p.name;
  std::vector<hsize_t> dims(p.global_shape.begin(), p.global_shape.end());
  H5 space{check_write(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), tmp, name), H5Sclose};
  H5 ds{check_write(H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, space.id, lcpl, H5P_DEFAULT, H5P_DEFAULT), tmp,
                    name),
        H5Dclose};
  errno = 0;
  check_write(H5Dwrite(ds.id, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, global.data()), tmp, name);
  const uint64_t sum = checksum_global(global);
  write_attr(ds.id, "checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &sum, tmp);
}

// An integer attribute of one value read as mem_type; false when absent or another kind.
bool read_int_attr(hid_t obj, const char* name, hid_t mem_type, void* v) {
  if (H5Aexists(obj, name) <= 0) return false;
  H5 attr{H5Aopen(obj, name, H5P_DEFAULT), H5Aclose};
  H5 space{attr.id >= 0 ? H5Aget_space(attr.id) : -1, H5Sclose};
  H5 type{attr.id >= 0 ? H5Aget_type(attr.id) : -1, H5Tclose};
  return space.id >= 0 && type.id >= 0 && H5Sget_simple_extent_npoints(space.id) == 1 &&
         H5Tget_class(type.id) == H5T_INTEGER && H5Aread(attr.id, mem_type, v) >= 0;
}

std::string read_format(hid_t file) {
  if (H5Aexists(file, "format") <= 0) return "";
  H5 attr{H5Aopen(file, "format", H5P_DEFAULT), H5Aclose};
  H5 space{attr.id >= 0 ? H5Aget_space(attr.id) : -1, H5Sclose};
  H5 type{attr.id >= 0 ? H5Aget_type(attr.id) : -1, H5Tclose};
  if (space.id < 0 || type.id < 0 || H5Sget_simple_extent_npoints(space.id) != 1 ||
      H5Tget_class(type.id) != H5T_STRING || H5Tis_variable_str(type.id) > 0 || H5Tget_size(type.id) > 256)
    return "";
  std::string out(H5Tget_size(type.id), '\0');
  if (H5Aread(attr.id, type.id, out.data()) < 0) return "";
  return out.c_str();
}

// Reads this rank's hyperslab of one parameter and checks its checksum (version 2).
// Every rank agrees on failures (mesh.any) before anyone throws.
void read_param(hid_t file, const std::string& path, int64_t file_size, int64_t version, Param& p,
                const Mesh& mesh) {
  const std::string name = "/params/" + p.name, what = msg("weights file '", path, "'");
  H5 ds{H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0 ? H5Dopen2(file, name.c_str(), H5P_DEFAULT) : -1, H5Dclose};
  GLAM_REQUIRE(ds.id >= 0, what, " has no dataset ", name, " (written for another model config?)");
  H5 dtype{H5Dget_type(ds.id), H5Tclose};
  GLAM_REQUIRE(dtype.id >= 0 && H5Tget_class(dtype.id) == H5T_FLOAT && H5Tget_size(dtype.id) == 4, what, ": dataset ",
               name, " is not float32 (a bf16 export? export with --dtype f32 to use it with glam)");
  const std::vector<int64_t> dims = checked_dataset_shape(ds.id, what, name, 4, file_size);
  GLAM_REQUIRE(dims == p.global_shape, what, ": dataset ", name, " has another shape than the config implies");
  uint64_t stored = 0;
  GLAM_REQUIRE(version < 2 || read_int_attr(ds.id, "checksum", H5T_NATIVE_UINT64, &stored), what, ": dataset ", name,
               " has no checksum attribute");
  H5 space{H5Dget_space(ds.id), H5Sclose};
  const std::vector<int64_t> off64 = p.shard_offset(mesh);
  const std::vector<hsize_t> off(off64.begin(), off64.end()), count(p.shape.begin(), p.shape.end());
  H5 mem{H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose};
  const bool ok = mem.id >= 0 &&
                  H5Sselect_hyperslab(space.id, H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr) >= 0 &&
                  H5Dread(ds.id, H5T_NATIVE_FLOAT, mem.id, space.id, H5P_DEFAULT, p.w.data()) >= 0;
  // A mesh without a communicator (a test's or a tool's stand-in for one rank of
  // a larger mesh) reads its shard alone: it cannot sum the checksum over the mesh.
  const bool alone = mesh.world == MPI_COMM_NULL && mesh.world_size > 1;
  GLAM_REQUIRE(!(alone ? !ok : mesh.any(!ok)), what, ": dataset ", name, " cannot be read (truncated or corrupt file?)");
  if (version < 2 || alone) return;
  uint64_t sum = checksum_shard(p, p.w.data(), mesh);
  if (mesh.world_size > 1) GLAM_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_UINT64_T, MPI_SUM, mesh.world));
  GLAM_REQUIRE(sum == stored, what, ": dataset ", name, " is corrupt (checksum mismatch; glam-ckpt verify ", path,
               " lists every bad tensor)");
}

}  // namespace

// Collective: every shard is gathered to its global shape and rank 0 writes.
void save_weights(const std::string& path, const ParamTable& table, const Config& cfg, const Mesh& mesh) {
  const std::string tmp = path + ".tmp";
  int64_t bytes = 1 << 20;
  for (const Param& p : table.params) bytes += p.global_size() * 4 + 4096;
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const std::string problem = mesh.is_root() ? write_room_problem(dir.empty() ? "." : dir, tmp, bytes) : "";
  GLAM_REQUIRE(!mesh.any(!problem.empty()), problem.empty() ? msg("rank 0 cannot write '", tmp, "'") : problem);
  QuietHdf5 quiet;  // failures are reported naming the file and the cause
  hid_t file = -1, lcpl = -1;
  if (mesh.is_root()) {
    errno = 0;
    file = check_write(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp, "create");
    write_string_attr(file, "format", kFormat, tmp);
    write_attr(file, "version", H5T_STD_I64LE, H5T_NATIVE_INT64, &kWeightsVersion, tmp);
    write_string_attr(file, "config", cfg.to_ini(), tmp);
    lcpl = check_write(H5Pcreate(H5P_LINK_CREATE), tmp, "H5Pcreate");
    check_write(H5Pset_create_intermediate_group(lcpl, 1), tmp, "H5Pset_create_intermediate_group");
  }
  for (const Param& p : table.params) {
    const std::vector<float> global = gather_global(p, p.w, mesh);
    if (mesh.is_root()) write_param(file, lcpl, p, global, tmp);
  }
  if (mesh.is_root()) {
    H5Pclose(lcpl);
    errno = 0;
    check_write(H5Fflush(file, H5F_SCOPE_GLOBAL), tmp, "flush");
    check_write(H5Fclose(file), tmp, "close");
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      fatal(msg("cannot rename '", tmp, "' to '", path, "': ", io_error_reason(errno)), __FILE__, __LINE__);
  }
}

// Every rank reads only its own hyperslab of each dataset.
void load_weights(const std::string& path, ParamTable& table, const Mesh& mesh) {
  ReadingFile reading(path);
  const int64_t file_size = file_bytes(path, "weights file");
  QuietHdf5 quiet;
  GLAM_REQUIRE(H5Fis_hdf5(path.c_str()) > 0, "weights file '", path, "' is not an HDF5 file");
  H5 file{H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose};
  GLAM_REQUIRE(file.id >= 0, "weights file '", path, "' is not a readable HDF5 file (truncated or corrupt?)");
  const std::string format = read_format(file.id);
  GLAM_REQUIRE(format == kFormat, "weights file '", path, "' is not a glam weights file (format attribute '", format,
               "', expected '", kFormat, "')");
  int64_t version = 0;
  GLAM_REQUIRE(read_int_attr(file.id, "version", H5T_NATIVE_INT64, &version) && version >= 1 && version <= kWeightsVersion,
               "weights file '", path, "' has format version ", version, "; this glam reads 1 to ", kWeightsVersion);
  if (version < 2 && mesh.is_root())
    std::fprintf(stderr, "glam: warning: weights file '%s' is version %lld: it has no checksums to verify\n",
                 path.c_str(), static_cast<long long>(version));
  for (Param& p : table.params) read_param(file.id, path, file_size, version, p, mesh);
}

}  // namespace glam
