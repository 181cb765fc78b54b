// HDF5 weights file (see weights.h).
#include "glam/weights.h"

#include <hdf5.h>

#include <cstdio>
#include <filesystem>

#include "glam/check.h"

namespace glam {

namespace {

constexpr const char* kFormat = "glam-weights";
constexpr int64_t kVersion = 1;

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  hid_t type = GLAM_CHECK_H5(H5Tcopy(H5T_C_S1));
  GLAM_CHECK_H5(H5Tset_size(type, value.size() + 1));
  hid_t space = GLAM_CHECK_H5(H5Screate(H5S_SCALAR));
  hid_t attr = GLAM_CHECK_H5(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
  GLAM_CHECK_H5(H5Awrite(attr, type, value.c_str()));
  H5Aclose(attr); H5Sclose(space); H5Tclose(type);
}

void write_int_attr(hid_t obj, const char* name, int64_t value) {
  hid_t space = GLAM_CHECK_H5(H5Screate(H5S_SCALAR));
  hid_t attr = GLAM_CHECK_H5(H5Acreate2(obj, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT));
  GLAM_CHECK_H5(H5Awrite(attr, H5T_NATIVE_INT64, &value));
  H5Aclose(attr); H5Sclose(space);
}

}  // namespace

// Collective: every shard is gathered to its global shape and rank 0 writes.
// (Parallel HDF5 with per-rank hyperslabs replaces the gather with the checkpoint issue.)
void save_weights(const std::string& path, const ParamTable& table, const Config& cfg, const Mesh& mesh) {
  const std::string tmp = path + ".tmp";
  hid_t file = -1, lcpl = -1;
  if (mesh.is_root()) {
    file = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) fatal("cannot create weights file '" + tmp + "'", __FILE__, __LINE__);
    write_string_attr(file, "format", kFormat);
    write_int_attr(file, "version", kVersion);
    write_string_attr(file, "config", cfg.to_ini());
    lcpl = GLAM_CHECK_H5(H5Pcreate(H5P_LINK_CREATE));
    GLAM_CHECK_H5(H5Pset_create_intermediate_group(lcpl, 1));
  }
  for (const Param& p : table.params) {
    const std::vector<float> global = gather_global(p, p.w, mesh);
    if (!mesh.is_root()) continue;
    std::vector<hsize_t> dims(p.global_shape.begin(), p.global_shape.end());
    hid_t space = GLAM_CHECK_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
    const std::string name = "/params/" + p.name;
    hid_t ds = GLAM_CHECK_H5(H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT));
    GLAM_CHECK_H5(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, global.data()));
    H5Dclose(ds); H5Sclose(space);
  }
  if (mesh.is_root()) {
    H5Pclose(lcpl);
    GLAM_CHECK_H5(H5Fflush(file, H5F_SCOPE_GLOBAL));
    GLAM_CHECK_H5(H5Fclose(file));
    std::filesystem::rename(tmp, path);
  }
}

// Every rank reads only its own hyperslab of each dataset.
void load_weights(const std::string& path, ParamTable& table, const Mesh& mesh) {
  GLAM_REQUIRE(std::filesystem::exists(path), "weights file '", path, "' does not exist");
  H5E_auto2_t old_func; void* old_data;
  H5Eget_auto2(H5E_DEFAULT, &old_func, &old_data);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  GLAM_REQUIRE(file >= 0, "weights file '", path, "' is not a readable HDF5 file");
  for (Param& p : table.params) {
    const std::string name = "/params/" + p.name;
    hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
    if (ds < 0) { H5Fclose(file); throw UserError(msg("weights file '", path, "' has no dataset ", name)); }
    hid_t space = H5Dget_space(ds);
    std::vector<hsize_t> dims(H5Sget_simple_extent_ndims(space));
    H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    const std::vector<hsize_t> want(p.global_shape.begin(), p.global_shape.end());
    hid_t dtype = H5Dget_type(ds);
    const bool is_f32 = H5Tget_class(dtype) == H5T_FLOAT && H5Tget_size(dtype) == 4;
    H5Tclose(dtype);
    if (!is_f32) {
      H5Sclose(space); H5Dclose(ds); H5Fclose(file);
      throw UserError(msg("weights file '", path, "': dataset ", name, " is not float32 (a bf16 export? "
                          "export with --dtype f32 to use it with glam)"));
    }
    bool ok = dims == want;
    if (ok) {
      const std::vector<int64_t> off64 = p.shard_offset(mesh);
      const std::vector<hsize_t> off(off64.begin(), off64.end()), count(p.shape.begin(), p.shape.end());
      hid_t mem = H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr);
      ok = H5Sselect_hyperslab(space, H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr) >= 0 &&
           H5Dread(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, p.w.data()) >= 0;
      H5Sclose(mem);
    }
    H5Sclose(space); H5Dclose(ds);
    if (!ok) { H5Fclose(file); throw UserError(msg("weights file '", path, "': dataset ", name,
                                                   " has another shape than the config implies or is unreadable")); }
  }
  H5Fclose(file);
  H5Eset_auto2(H5E_DEFAULT, old_func, old_data);
}

}  // namespace glam
