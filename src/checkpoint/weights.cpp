// HDF5 weights file (see weights.h and docs/CHECKPOINT.md). Version 2 gives every
// dataset the checkpoint's `checksum` attribute; version 1 files (no checksums)
// are still read, with a warning.
#include "glam/checkpoint/weights.h"

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"
#include "glam/checkpoint/checkpoint.h"
#include "glam/io/h5.h"

namespace glam {

namespace {

constexpr size_t kMaxFormatBytes = 256;  // "glam-weights"; a longer string is another file

using h5::check_write;  // a failed write names the file and the cause and ends the job (rank 0 writes alone)

// Sum of checksum_element over a whole tensor (flat row-major global index).
uint64_t checksum_global(const std::vector<float>& global) {
  uint64_t sum = 0;
  for (size_t i = 0; i < global.size(); i++) sum += checksum_element(i, global[i]);
  return sum;
}

void write_param(hid_t file, hid_t lcpl, const Param& p, const std::vector<float>& global, const std::string& tmp) {
  const std::string name = "/params/" + p.name;
  const h5::Space space = h5::simple_space(p.global_shape);
  const h5::Dataset ds(check_write(H5Dcreate2(file, name.c_str(), H5T_IEEE_F32LE, space.get(), lcpl, H5P_DEFAULT,
                                              H5P_DEFAULT), tmp, name));
  errno = 0;
  check_write(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, global.data()), tmp, name);
  check_write(h5::write_u64_attr(ds.get(), "checksum", checksum_global(global)), tmp, name);
}

// Reads this rank's hyperslab of one parameter and checks its checksum (version 2).
// Every rank agrees on failures (mesh.any) before anyone throws.
void read_param(hid_t file, const std::string& path, int64_t file_size, int64_t version, Param& p,
                const Mesh& mesh) {
  const std::string name = "/params/" + p.name, what = msg("weights file '", path, "'");
  const h5::Dataset ds(H5Lexists(file, name.c_str(), H5P_DEFAULT) > 0 ? H5Dopen2(file, name.c_str(), H5P_DEFAULT) : -1);
  GLAM_REQUIRE(ds.valid(), what, " has no dataset ", name, " (written for another model config?)");
  const h5::Type dtype(H5Dget_type(ds.get()));
  GLAM_REQUIRE(dtype.valid() && H5Tget_class(dtype.get()) == H5T_FLOAT && H5Tget_size(dtype.get()) == 4, what,
               ": dataset ", name, " is not float32 (a bf16 export? export with --dtype f32 to use it with glam)");
  const std::vector<int64_t> dims = checked_dataset_shape(ds.get(), what, name, 4, file_size);
  GLAM_REQUIRE(dims == p.global_shape, what, ": dataset ", name, " has another shape than the config implies");
  const std::optional<uint64_t> stored = h5::read_u64_attr(ds.get(), "checksum");
  GLAM_REQUIRE(version < 2 || stored, what, ": dataset ", name, " has no checksum attribute");
  const h5::Space space(H5Dget_space(ds.get()));
  const std::vector<hsize_t> off = h5::dims_of(p.shard_offset(mesh)), count = h5::dims_of(p.shape);
  const h5::Space mem = h5::simple_space(p.shape);
  const bool ok = space.valid() &&
                  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr) >= 0 &&
                  H5Dread(ds.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, p.w.data()) >= 0;
  // A mesh without a communicator (a test's or a tool's stand-in for one rank of
  // a larger mesh) reads its shard alone: it cannot sum the checksum over the mesh.
  const bool alone = mesh.is_stand_in();
  GLAM_REQUIRE(!(alone ? !ok : mesh.any(!ok)), what, ": dataset ", name, " cannot be read (truncated or corrupt file?)");
  if (version < 2 || alone) return;
  const uint64_t sum = mesh.sum_world(checksum_shard(p, p.w.data(), mesh));
  GLAM_REQUIRE(sum == *stored, what, ": dataset ", name, " is corrupt (checksum mismatch; glam-ckpt verify ", path,
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
  h5::File file;
  h5::Plist lcpl;
  if (mesh.is_root()) {
    errno = 0;
    file = h5::File(check_write(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), tmp, "create"));
    check_write(h5::write_string_attr(file.get(), "format", kWeightsFormat), tmp, "format");
    check_write(h5::write_int_attr(file.get(), "version", kWeightsVersion), tmp, "version");
    check_write(h5::write_string_attr(file.get(), "config", cfg.to_ini()), tmp, "config");
    lcpl = h5::intermediate_groups();
  }
  for (const Param& p : table.params) {
    const std::vector<float> global = gather_global(p, p.w, mesh);
    if (mesh.is_root()) write_param(file.get(), lcpl.get(), p, global, tmp);
  }
  if (mesh.is_root()) {
    errno = 0;
    check_write(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), tmp, "flush");
    check_write(file.close(), tmp, "close");
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      fatal(msg("cannot rename '", tmp, "' to '", path, "': ", io_error_reason(errno)), __FILE__, __LINE__);
  }
}

// Every rank reads only its own hyperslab of each dataset.
void load_weights(const std::string& path, ParamTable& table, const Mesh& mesh) {
  ReadingFile reading(path);
  const int64_t file_size = file_bytes(path, "weights file");
  QuietHdf5 quiet;
  const h5::File file = h5::open_for_reading(path, "weights file");
  GLAM_REQUIRE(file.valid(), "weights file '", path, "' is not a readable HDF5 file (truncated or corrupt?)");
  const std::string format = h5::read_string_attr(file.get(), "format", kMaxFormatBytes).value_or("");
  GLAM_REQUIRE(format == kWeightsFormat, "weights file '", path, "' is not a glam weights file (format attribute '",
               format, "', expected '", kWeightsFormat, "')");
  const int64_t version = h5::read_int_attr(file.get(), "version").value_or(0);
  GLAM_REQUIRE(version >= 1 && version <= kWeightsVersion, "weights file '", path, "' has format version ", version,
               "; this glam reads 1 to ", kWeightsVersion);
  if (version < 2 && mesh.is_root())
    std::fprintf(stderr, "glam: warning: weights file '%s' is version %lld: it has no checksums to verify\n",
                 path.c_str(), static_cast<long long>(version));
  for (Param& p : table.params) read_param(file.get(), path, file_size, version, p, mesh);
}

}  // namespace glam
