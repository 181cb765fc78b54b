// glam-ckpt: tensors' shapes and types, checksums of blocks, output datasets whose
// bytes any rank writes at a file offset, and attributes copied from file to file.
#include <algorithm>

#include "ckpt.h"

namespace glam::ckpt {

int64_t product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t d : v) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string type_name(hid_t type) {
  const size_t bits = H5Tget_size(type) * 8;
  std::string name;
  switch (H5Tget_class(type)) {
    case H5T_FLOAT: name = "float" + std::to_string(bits); break;
    case H5T_INTEGER:
      name = (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
      break;
    case H5T_STRING: return "string";
    default: return "other";
  }
  if (H5Tget_order(type) == H5T_ORDER_BE) name += "-be";
  return name;
}

bool is_float32_le(hid_t dataset) {
  const h5::Type type(H5Dget_type(dataset));
  return type.valid() && H5Tequal(type.get(), H5T_IEEE_F32LE) > 0;
}

h5::Dataset open_tensor(const Checkpoint& c, const CheckpointDataset& t, const std::string& then) {
  h5::Dataset ds(H5Dopen2(c.file.get(), t.path.c_str(), H5P_DEFAULT));
  GLAM_REQUIRE(ds.valid(), c.kind(), " '", c.path, "' has no dataset ", t.path, then);
  const auto shape = h5::dataset_dims(ds.get());
  GLAM_REQUIRE(shape == t.desc.global_shape, c.kind(), " '", c.path, "': dataset ", t.path, " is ", shape_str(shape),
               ", the config implies ", shape_str(t.desc.global_shape));
  GLAM_REQUIRE(is_float32_le(ds.get()), c.kind(), " '", c.path, "': dataset ", t.path, " is not float32");
  return ds;
}

// Walks the block in runs of its last dim.
uint64_t checksum_block(const std::vector<int64_t>& dims, const std::vector<int64_t>& offset,
                        const std::vector<int64_t>& count, const float* data) {
  const size_t nd = dims.size();
  if (nd == 0) return checksum_element(0, data[0]);
  const int64_t run = count[nd - 1], total = product(count);
  if (total == 0) return 0;
  std::vector<int64_t> idx(nd, 0);  // multi-index within the block, last dim always 0
  uint64_t sum = 0;
  for (int64_t k = 0; k < total / run; k++) {
    uint64_t base = 0;
    for (size_t d = 0; d < nd; d++)
      base = base * static_cast<uint64_t>(dims[d]) + static_cast<uint64_t>(idx[d] + offset[d]);
    const float* p = data + k * run;
    for (int64_t j = 0; j < run; j++) sum += checksum_element(base + static_cast<uint64_t>(j), p[j]);
    for (int64_t d = static_cast<int64_t>(nd) - 2; d >= 0; d--) {
      if (++idx[d] < count[d]) break;
      idx[d] = 0;
    }
  }
  return sum;
}

h5::File create_untimed_file(const std::string& path) {
  const h5::Plist fcpl = h5::untimed(H5P_FILE_CREATE);
  h5::File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT));
  GLAM_REQUIRE(file.valid(), "cannot create '", path, "'");
  return file;
}

h5::Dataset create_raw_dataset(hid_t file, const std::string& path, hid_t type, const std::vector<int64_t>& shape,
                               const std::string& what) {
  const h5::Plist gcpl = h5::untimed(H5P_GROUP_CREATE);
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    const std::string group = path.substr(0, slash);
    if (GLAM_REQUIRE_H5(H5Lexists(file, group.c_str(), H5P_DEFAULT), what) > 0) continue;
    const hid_t g = GLAM_REQUIRE_H5(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), what);
    GLAM_REQUIRE_H5(H5Gclose(g), what);
  }
  const h5::Plist dcpl = h5::untimed(H5P_DATASET_CREATE);
  GLAM_REQUIRE_H5(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS), what);
  GLAM_REQUIRE_H5(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), what);
  GLAM_REQUIRE_H5(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), what);
  const h5::Space space = h5::simple_space(shape);
  return h5::Dataset(
      GLAM_REQUIRE_H5(H5Dcreate2(file, path.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), what));
}

int64_t raw_offset(hid_t dataset, const std::string& what) {
  if (product(h5::dataset_dims(dataset)) == 0) return 0;
  const haddr_t at = H5Dget_offset(dataset);
  GLAM_REQUIRE(at != HADDR_UNDEF, what, ": no file offset for its data");
  return static_cast<int64_t>(at);
}

namespace {

// Copies attribute `attr` (named `name`) onto `to` in its own file type.
void copy_attr(hid_t attr, hid_t to, const std::string& name) {
  const std::string what = msg("cannot copy attribute ", name);
  const h5::Type ftype(GLAM_REQUIRE_H5(H5Aget_type(attr), what));
  const h5::Type mtype(GLAM_REQUIRE_H5(H5Tget_native_type(ftype.get(), H5T_DIR_DEFAULT), what));
  const h5::Space space(GLAM_REQUIRE_H5(H5Aget_space(attr), what));
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  // Attributes live in object headers (64 KB each, dense storage aside): a larger one is damaged.
  GLAM_REQUIRE(n >= 0 && static_cast<uint64_t>(n) * H5Tget_size(mtype.get()) <= (64u << 20), what, ": too large");
  std::vector<unsigned char> buf(static_cast<size_t>(std::max<hssize_t>(n, 1)) * H5Tget_size(mtype.get()));
  GLAM_REQUIRE_H5(H5Aread(attr, mtype.get(), buf.data()), what);
  const h5::Attr out(
      GLAM_REQUIRE_H5(H5Acreate2(to, name.c_str(), ftype.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what));
  GLAM_REQUIRE_H5(H5Awrite(out.get(), mtype.get(), buf.data()), what);
  if (H5Tdetect_class(mtype.get(), H5T_VLEN) > 0 || H5Tis_variable_str(mtype.get()) > 0)
    H5Dvlen_reclaim(mtype.get(), space.get(), H5P_DEFAULT, buf.data());
}

}  // namespace

void copy_attrs(hid_t from, hid_t to, const std::vector<std::string>& skip) {
  H5O_info_t info;
  GLAM_REQUIRE_H5(H5Oget_info(from, &info), "cannot list attributes");
  for (hsize_t i = 0; i < info.num_attrs; i++) {
    const hid_t id = H5Aopen_by_idx(from, ".", H5_INDEX_NAME, H5_ITER_INC, i, H5P_DEFAULT, H5P_DEFAULT);
    const h5::Attr attr(GLAM_REQUIRE_H5(id, "cannot open an attribute"));
    const ssize_t len = H5Aget_name(attr.get(), 0, nullptr);
    std::string name(static_cast<size_t>(std::max<ssize_t>(len, 0)), '\0');
    H5Aget_name(attr.get(), name.size() + 1, name.data());
    if (std::find(skip.begin(), skip.end(), name) == skip.end()) copy_attr(attr.get(), to, name);
  }
}

}  // namespace glam::ckpt
