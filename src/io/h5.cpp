// The HDF5 layer (include/glam/io/h5.h).
#include "glam/io/h5.h"

#include <filesystem>

#include "glam/data/bounded_read.h"

namespace glam::h5 {

void write_failed(const std::string& file, const std::string& what, int err) {
  fatal(msg("cannot write '", file, "' (", what, "): ", io_error_reason(err)), __FILE__, __LINE__);
}

// ---- property lists and dataspaces ---------------------------------------------

Plist mpio_file_access(MPI_Comm comm) {
  int rank = 0;
  GLAM_CHECK_MPI(MPI_Comm_rank(comm, &rank));
  MPI_Comm plain;
  GLAM_CHECK_MPI(MPI_Comm_split(comm, 0, rank, &plain));
  Plist fapl(GLAM_CHECK_H5(H5Pcreate(H5P_FILE_ACCESS)));
  GLAM_CHECK_H5(H5Pset_fapl_mpio(fapl.get(), plain, MPI_INFO_NULL));
  GLAM_CHECK_MPI(MPI_Comm_free(&plain));  // HDF5 keeps its own duplicate
  return fapl;
}

Plist collective_transfer() {
  Plist dxpl(GLAM_CHECK_H5(H5Pcreate(H5P_DATASET_XFER)));
  GLAM_CHECK_H5(H5Pset_dxpl_mpio(dxpl.get(), H5FD_MPIO_COLLECTIVE));
  return dxpl;
}

Plist intermediate_groups() {
  Plist lcpl(GLAM_CHECK_H5(H5Pcreate(H5P_LINK_CREATE)));
  GLAM_CHECK_H5(H5Pset_create_intermediate_group(lcpl.get(), 1));
  return lcpl;
}

Plist untimed(hid_t plist_class) {
  Plist p(GLAM_CHECK_H5(H5Pcreate(plist_class)));
  GLAM_CHECK_H5(H5Pset_obj_track_times(p.get(), false));
  return p;
}

std::vector<hsize_t> dims_of(const std::vector<int64_t>& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

Space simple_space(const std::vector<int64_t>& shape) {
  const std::vector<hsize_t> dims = dims_of(shape);
  return Space(GLAM_CHECK_H5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr)));
}

std::vector<int64_t> dataset_dims(hid_t dataset) {
  Space space(H5Dget_space(dataset));
  const int nd = space.valid() ? H5Sget_simple_extent_ndims(space.get()) : -1;
  if (nd < 0 || nd > H5S_MAX_RANK) return {};
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  if (H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) return {};
  return std::vector<int64_t>(dims.begin(), dims.end());
}

// ---- attributes -----------------------------------------------------------------

namespace {

herr_t write_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, hid_t space, const void* value) {
  if (space < 0) return -1;
  Attr attr(H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT));
  if (!attr.valid() || H5Awrite(attr.get(), mem_type, value) < 0) return -1;
  return attr.close();
}

herr_t write_scalar_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value) {
  Space space(H5Screate(H5S_SCALAR));
  return write_attr(obj, name, file_type, mem_type, space.get(), value);
}

// Sets *why (when asked) and returns nothing.
template <typename T>
std::optional<T> none(std::string* why, std::string reason) {
  if (why) *why = std::move(reason);
  return std::nullopt;
}

// Opens attribute `name` when it exists and holds exactly one value of class `cls`
// (its type in *type); else an invalid Attr and the reason in *why.
Attr open_single(hid_t obj, const char* name, H5T_class_t cls, const char* kind, Type* type, std::string* why) {
  auto fail = [why](std::string reason) {
    if (why) *why = std::move(reason);
    return Attr();
  };
  if (H5Aexists(obj, name) <= 0) return fail("is missing");
  Attr attr(H5Aopen(obj, name, H5P_DEFAULT));
  if (!attr.valid()) return fail("cannot be opened");
  // One value: reading an array attribute into one would overrun the buffer.
  Space space(H5Aget_space(attr.get()));
  const hssize_t points = space.valid() ? H5Sget_simple_extent_npoints(space.get()) : -1;
  if (points != 1) return fail(msg("holds ", points, " values, expected one"));
  *type = Type(H5Aget_type(attr.get()));
  if (!type->valid() || H5Tget_class(type->get()) != cls) return fail(msg("is not ", kind));
  return attr;
}

}  // namespace

herr_t write_string_attr(hid_t obj, const char* name, const std::string& value, H5T_cset_t cset) {
  Type type(H5Tcopy(H5T_C_S1));
  if (!type.valid() || H5Tset_size(type.get(), value.size() + 1) < 0 ||
      H5Tset_strpad(type.get(), H5T_STR_NULLTERM) < 0 || H5Tset_cset(type.get(), cset) < 0)
    return -1;
  return write_scalar_attr(obj, name, type.get(), type.get(), value.c_str());
}

herr_t write_int_attr(hid_t obj, const char* name, int64_t value) {
  return write_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

herr_t write_u64_attr(hid_t obj, const char* name, uint64_t value) {
  return write_scalar_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

herr_t write_int_array_attr(hid_t obj, const char* name, const std::vector<int64_t>& values) {
  const hsize_t n = values.size();
  Space space(H5Screate_simple(1, &n, nullptr));
  return write_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, space.get(), values.data());
}

std::optional<std::string> read_string_attr(hid_t obj, const char* name, size_t max_bytes, std::string* why) {
  Type ftype;
  Attr attr = open_single(obj, name, H5T_STRING, "a string", &ftype, why);
  if (!attr.valid()) return std::nullopt;
  Type mtype(H5Tcopy(H5T_C_S1));
  if (!mtype.valid() || H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get())) < 0)
    return none<std::string>(why, "cannot be read");
  if (H5Tis_variable_str(ftype.get()) > 0) {
    char* s = nullptr;
    if (H5Tset_size(mtype.get(), H5T_VARIABLE) < 0 || H5Aread(attr.get(), mtype.get(), &s) < 0)
      return none<std::string>(why, "cannot be read");
    std::string out = s ? s : "";
    H5free_memory(s);
    if (out.size() > max_bytes)
      return none<std::string>(why, msg("is a string of ", out.size(), " bytes (at most ", max_bytes, " expected)"));
    return out;
  }
  const size_t size = H5Tget_size(ftype.get());
  if (size == 0 || size > max_bytes)
    return none<std::string>(why, msg("is a string of ", size, " bytes (at most ", max_bytes, " expected)"));
  // Read as NUL-terminated (the file's padding, NULL or space, converted away).
  std::vector<char> buf(size + 1, '\0');
  if (H5Tset_size(mtype.get(), size + 1) < 0 || H5Tset_strpad(mtype.get(), H5T_STR_NULLTERM) < 0 ||
      H5Aread(attr.get(), mtype.get(), buf.data()) < 0)
    return none<std::string>(why, "cannot be read");
  return std::string(buf.data());
}

std::optional<uint64_t> read_u64_attr(hid_t obj, const char* name, std::string* why) {
  Type type;
  Attr attr = open_single(obj, name, H5T_INTEGER, "an integer", &type, why);
  if (!attr.valid()) return std::nullopt;
  if (H5Tget_sign(type.get()) == H5T_SGN_NONE) {
    uint64_t v = 0;
    if (H5Aread(attr.get(), H5T_NATIVE_UINT64, &v) < 0) return none<uint64_t>(why, "cannot be read");
    return v;
  }
  int64_t v = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0) return none<uint64_t>(why, "cannot be read");
  return static_cast<uint64_t>(v);
}

std::optional<int64_t> read_int_attr(hid_t obj, const char* name, std::string* why) {
  const std::optional<uint64_t> v = read_u64_attr(obj, name, why);
  if (!v) return std::nullopt;
  return static_cast<int64_t>(*v);
}

// ---- files -----------------------------------------------------------------------

File open_for_reading(const std::string& path, const std::string& what, hid_t fapl, const std::string& hint) {
  std::error_code ec;
  GLAM_REQUIRE(std::filesystem::exists(path, ec), what, " '", path, "' does not exist");
  GLAM_REQUIRE(!std::filesystem::is_directory(path, ec), what, " '", path, "' is a directory");
  const htri_t is = H5Fis_hdf5(path.c_str());
  GLAM_REQUIRE(is >= 0, what, " '", path, "' cannot be read");
  GLAM_REQUIRE(is > 0, what, " '", path, "' is not an HDF5 file", hint);
  return File(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl));
}

}  // namespace glam::h5
