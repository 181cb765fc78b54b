// The one HDF5 layer of glam: owned handles, checked calls, scalar and string
// attributes, and the property lists of parallel (MPI-IO) access. The checkpoint,
// the weights file, the corpus file and glam-ckpt all go through it.
//
// Error policy (check.h): a call on a file glam writes that fails is fatal or a
// UserError as its caller decides, so the writers here return HDF5's status and
// the caller checks it:
//   GLAM_CHECK_H5(call)            (check.h) fatal, naming file, line and the call
//   GLAM_REQUIRE_H5(call, msg...)  a UserError with msg: input that is not glam's fault
//   h5::check_write(rc, file, what)  fatal naming the file being written and errno
// Readers of untrusted files never throw from here: they return nothing and, when
// asked, why ("is missing", "holds 3 values, expected one", ...). The bounded-read
// checks of a dataset's shape are in bounded_read.h.
#pragma once
#include <hdf5.h>
#include <mpi.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "glam/base/check.h"

// A call on input glam did not write (a file being read): a failure (negative
// status) is a UserError built from the message parts. Returns the call's value.
#define GLAM_REQUIRE_H5(call, ...)                                            \
  ([&]() {                                                                    \
    auto glam_rc_ = (call);                                                   \
    GLAM_REQUIRE(glam_rc_ >= 0, __VA_ARGS__);                                 \
    return glam_rc_;                                                          \
  }())

namespace glam::h5 {

// Owns one HDF5 identifier and releases it with Close (H5Fclose, H5Dclose, ...).
// An invalid handle (id < 0) owns nothing, so a failed H5*open can be held and
// tested with valid().
template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      close();
      id_ = o.id_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { close(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and returns HDF5's status (closing a file being written flushes it).
  herr_t close() {
    const herr_t rc = id_ >= 0 ? Close(id_) : 0;
    id_ = -1;
    return rc;
  }

 private:
  hid_t id_ = -1;
};

using File = Handle<H5Fclose>;
using Dataset = Handle<H5Dclose>;
using Space = Handle<H5Sclose>;
using Attr = Handle<H5Aclose>;
using Type = Handle<H5Tclose>;
using Plist = Handle<H5Pclose>;

// A failed write of `file` (doing `what`: a dataset's path, "flush", ...): prints
// the file and the cause (errno: ENOSPC, EROFS, ...) and ends the job (fatal()).
[[noreturn]] void write_failed(const std::string& file, const std::string& what, int err);

// rc when it is not negative, else write_failed with errno.
template <typename T>
T check_write(T rc, const std::string& file, const std::string& what) {
  if (rc < 0) write_failed(file, what, errno);
  return rc;
}

// ---- property lists and dataspaces ---------------------------------------------

// File access through MPI-IO over comm (collective opens and creates). HDF5 gets a
// plain (non-Cartesian) copy of comm: Open MPI 4.1's OMPIO collective writes
// (fcoll vulcan) corrupt data when handed a Cartesian one (seen on 2x2 meshes).
Plist mpio_file_access(MPI_Comm comm);
// Dataset transfer with collective MPI-IO.
Plist collective_transfer();
// Link creation that makes missing intermediate groups ("/params/layer_00/...").
Plist intermediate_groups();
// File creation or dataset creation without time stamps: the same data, the same bytes.
Plist untimed(hid_t plist_class);  // H5P_FILE_CREATE or H5P_DATASET_CREATE

std::vector<hsize_t> dims_of(const std::vector<int64_t>& shape);
// A simple dataspace of `shape` (a shape glam computed: failure is fatal).
Space simple_space(const std::vector<int64_t>& shape);
// The dims of a dataset's dataspace, as declared ({} when unreadable); for a
// file that is not trusted, use checked_dataset_shape (bounded_read.h).
std::vector<int64_t> dataset_dims(hid_t dataset);

// ---- attributes -----------------------------------------------------------------

// Writers: a scalar attribute `name` on obj (a file, group or dataset). Each returns
// a negative status when HDF5 fails, for the caller's policy (see above).
// Strings are fixed-length, NUL-terminated, in cset (ASCII: what h5py reads as bytes).
herr_t write_string_attr(hid_t obj, const char* name, const std::string& value,
                         H5T_cset_t cset = H5T_CSET_ASCII);
herr_t write_int_attr(hid_t obj, const char* name, int64_t value);    // int64 LE
herr_t write_u64_attr(hid_t obj, const char* name, uint64_t value);   // uint64 LE
herr_t write_int_array_attr(hid_t obj, const char* name, const std::vector<int64_t>& values);

// A config is a few KB; a longer string attribute is damaged.
constexpr size_t kMaxStringAttrBytes = 1 << 20;

// Readers of one value: nothing when the attribute is absent, holds another number
// of values, is of another class or cannot be read; then *why (when given) says
// which, worded to follow "attribute 'NAME' ".
// A string: fixed or variable length, at most max_bytes, up to its first NUL.
std::optional<std::string> read_string_attr(hid_t obj, const char* name, size_t max_bytes = kMaxStringAttrBytes,
                                            std::string* why = nullptr);
// An integer of any integer type, as the 64-bit pattern of its value: a signed
// type read as int64, an unsigned one as uint64.
std::optional<uint64_t> read_u64_attr(hid_t obj, const char* name, std::string* why = nullptr);
std::optional<int64_t> read_int_attr(hid_t obj, const char* name, std::string* why = nullptr);

// ---- files -----------------------------------------------------------------------

// Opens an existing file read-only for a reader, after the checks every reader
// makes: a UserError "WHAT 'PATH' does not exist" (is a directory, cannot be read,
// is not an HDF5 file, then `hint`). An invalid File when HDF5 cannot open it
// (truncated or damaged): the caller says so in its own words.
File open_for_reading(const std::string& path, const std::string& what, hid_t fapl = H5P_DEFAULT,
                      const std::string& hint = "");

}  // namespace glam::h5
