// Checks that keep reads of untrusted files bounded (include/glam/data/bounded_read.h).
// A dataset's declared shape is compared with the bytes its storage really holds
// and with the file's size before a reader allocates a buffer for it.
#include "glam/data/bounded_read.h"

#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <limits>

#include "glam/base/check.h"

namespace glam {

namespace {

int64_t env_bytes(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  if (!text || !*text) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text, &end, 10);
  GLAM_REQUIRE(errno == 0 && end && *end == '\0' && v > 0, "environment variable ", name, "='", text,
               "' must be a positive number of bytes");
  return v;
}

// The file and the storage behind one dataset: its layout and filters.
struct Storage {
  int64_t bytes = 0;    // bytes HDF5 allocated for the data
  bool filtered = false;  // compressed (chunks may be smaller than the data)
  bool external = false;  // data in files outside this one
};

Storage storage_of(hid_t dataset) {
  Storage s;
  s.bytes = static_cast<int64_t>(H5Dget_storage_size(dataset));
  const hid_t dcpl = H5Dget_create_plist(dataset);
  if (dcpl >= 0) {
    s.filtered = H5Pget_nfilters(dcpl) > 0;
    s.external = H5Pget_external_count(dcpl) > 0;
    H5Pclose(dcpl);
  }
  return s;
}

thread_local std::string g_reading;

}  // namespace

int64_t max_input_bytes() { return env_bytes("GLAM_MAX_INPUT_BYTES", int64_t{16} << 30); }
int64_t max_line_bytes() { return env_bytes("GLAM_MAX_LINE_BYTES", int64_t{64} << 20); }

int64_t file_bytes(const std::string& path, const char* what) {
  std::error_code ec;
  GLAM_REQUIRE(std::filesystem::exists(path, ec), what, " '", path, "' does not exist");
  GLAM_REQUIRE(std::filesystem::is_regular_file(path, ec), what, " '", path, "' is not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  GLAM_REQUIRE(!ec, "cannot read the size of ", what, " '", path, "': ", ec.message());
  return static_cast<int64_t>(size);
}

int64_t checked_mul(int64_t a, int64_t b) {
  if (a < 0 || b < 0) return -1;
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return -1;
  return a * b;
}

std::vector<int64_t> checked_dataset_shape(hid_t dataset, const std::string& what, const std::string& name,
                                           int64_t elem_bytes, int64_t file_size) {
  const hid_t space = H5Dget_space(dataset);
  GLAM_REQUIRE(space >= 0, what, ": dataset ", name, " has no readable dataspace");
  const int nd = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(nd, 0)));
  const bool dims_ok = nd >= 0 && nd <= H5S_MAX_RANK && H5Sget_simple_extent_dims(space, dims.data(), nullptr) >= 0;
  const bool null_space = H5Sget_simple_extent_type(space) == H5S_NULL;
  H5Sclose(space);
  GLAM_REQUIRE(dims_ok, what, ": dataset ", name, " has an unreadable shape");
  std::vector<int64_t> shape;
  int64_t count = null_space ? 0 : 1;
  for (hsize_t d : dims) {
    GLAM_REQUIRE(d <= static_cast<hsize_t>(std::numeric_limits<int64_t>::max()), what, ": dataset ", name,
                 " declares a dimension of ", d, " elements");
    shape.push_back(static_cast<int64_t>(d));
    count = checked_mul(count, static_cast<int64_t>(d));
    GLAM_REQUIRE(count >= 0, what, ": dataset ", name, " declares more elements than fit in 64 bits");
  }
  const int64_t bytes = checked_mul(count, elem_bytes);
  GLAM_REQUIRE(bytes >= 0, what, ": dataset ", name, " declares ", count, " elements, more bytes than fit in 64 bits");
  const Storage s = storage_of(dataset);
  GLAM_REQUIRE(!s.external, what, ": dataset ", name, " keeps its data in external files, which glam does not read");
  GLAM_REQUIRE(s.bytes <= file_size, what, ": dataset ", name, " claims ", s.bytes, " bytes of storage but the file has ",
               file_size, " bytes (truncated file?)");
  // Compressed chunks: deflate shrinks at most ~1032x; plain storage holds every byte.
  const int64_t held = s.filtered ? checked_mul(s.bytes, 1100) : s.bytes;
  GLAM_REQUIRE(held < 0 || bytes <= held, what, ": dataset ", name, " declares ", count, " elements (", bytes,
               " bytes) but stores only ", s.bytes, " bytes in a file of ", file_size,
               " bytes: its shape is damaged or its data was never written");
  return shape;
}

QuietHdf5::QuietHdf5() {
  H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

QuietHdf5::~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }

ReadingFile::ReadingFile(const std::string& path) : previous_(g_reading) { g_reading = path; }

ReadingFile::~ReadingFile() {
  if (std::uncaught_exceptions() == 0) g_reading = previous_;
}

std::string ReadingFile::current() { return g_reading; }

std::string write_room_problem(const std::string& dir, const std::string& file, int64_t bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  struct statvfs vfs {};
  if (ec || !std::filesystem::is_directory(dir))
    return msg("cannot create directory '", dir, "' for '", file, "'", ec ? ": " + ec.message() : "");
  if (::access(dir.c_str(), W_OK) != 0)
    return msg("cannot write '", file, "': directory '", dir, "' is not writable (", std::strerror(errno), ")");
  if (::statvfs(dir.c_str(), &vfs) == 0 && static_cast<double>(vfs.f_bavail) * vfs.f_frsize < static_cast<double>(bytes))
    return msg("no room for '", file, "': it needs about ", bytes, " bytes, the disk of '", dir, "' has ",
               static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize, " free (", std::strerror(ENOSPC), ")");
  return "";
}

std::string io_error_reason(int err) {
  if (err == 0) return "an I/O error (disk full, quota, or a read-only or removed directory?)";
  return std::strerror(err) + std::string(err == ENOSPC || err == EDQUOT ? " (the disk or quota is full)" : "");
}

}  // namespace glam
