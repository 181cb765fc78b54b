// glam-ckpt: tensors read and written in slabs of whole leading-dim slices, so a
// tensor larger than memory can be verified, exported and resharded; checksums of
// slabs; attributes copied from file to file.
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

void read_region(hid_t ds, const std::vector<int64_t>& offset, const std::vector<int64_t>& count,
                 int64_t chunk_bytes, const std::string& what, const SlabFn& f) {
  const size_t nd = count.size();
  if (nd == 0) {  // a scalar dataset: one element
    float v = 0.0f;
    GLAM_REQUIRE_H5(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v), what);
    f(0, 1, &v);
    return;
  }
  const int64_t inner = product(count) / std::max<int64_t>(count[0], 1);
  const int64_t per = std::max<int64_t>(1, chunk_bytes / std::max<int64_t>(1, inner * 4));
  std::vector<float> buf(static_cast<size_t>(std::min(per, count[0]) * inner));
  const h5::Space fspace(GLAM_REQUIRE_H5(H5Dget_space(ds), what));
  for (int64_t r = 0; r < count[0]; r += per) {
    const int64_t n = std::min(per, count[0] - r);
    std::vector<hsize_t> off = h5::dims_of(offset), cnt = h5::dims_of(count);
    off[0] += static_cast<hsize_t>(r);
    cnt[0] = static_cast<hsize_t>(n);
    GLAM_REQUIRE_H5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr), what);
    const h5::Space mspace(GLAM_REQUIRE_H5(H5Screate_simple(static_cast<int>(nd), cnt.data(), nullptr), what));
    GLAM_REQUIRE_H5(H5Dread(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, buf.data()), what);
    f(r, n, buf.data());
  }
}

void write_slices(hid_t dst, hid_t space, const std::vector<int64_t>& dims, int64_t first, int64_t n,
                  hid_t mem_type, const void* data, const std::string& what) {
  std::vector<hsize_t> off(dims.size(), 0), cnt = h5::dims_of(dims);
  off[0] = static_cast<hsize_t>(first);
  cnt[0] = static_cast<hsize_t>(n);
  GLAM_REQUIRE_H5(H5Sselect_hyperslab(space, H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr), what);
  const h5::Space mem(GLAM_REQUIRE_H5(H5Screate_simple(static_cast<int>(cnt.size()), cnt.data(), nullptr), what));
  GLAM_REQUIRE_H5(H5Dwrite(dst, mem_type, mem.get(), space, H5P_DEFAULT, data), what);
}

// Walks contiguous runs of the last dim.
uint64_t checksum_slab(const std::vector<int64_t>& dims, const std::vector<int64_t>& offset,
                       const std::vector<int64_t>& count, int64_t first, int64_t n, const float* data) {
  const size_t nd = dims.size();
  if (nd == 0) return checksum_element(0, data[0]);
  if (nd == 1) {
    uint64_t sum = 0;
    for (int64_t j = 0; j < n; j++) sum += checksum_element(static_cast<uint64_t>(offset[0] + first + j), data[j]);
    return sum;
  }
  const int64_t run = count[nd - 1];
  const int64_t runs = n * (product(count) / std::max<int64_t>(count[0], 1)) / std::max<int64_t>(run, 1);
  std::vector<int64_t> idx(nd, 0);  // multi-index within the region, last dim always 0
  idx[0] = first;
  uint64_t sum = 0;
  for (int64_t k = 0; k < runs; k++) {
    uint64_t base = 0;
    for (size_t d = 0; d < nd; d++) base = base * static_cast<uint64_t>(dims[d]) + static_cast<uint64_t>(idx[d] + offset[d]);
    const float* p = data + k * run;
    for (int64_t j = 0; j < run; j++) sum += checksum_element(base + static_cast<uint64_t>(j), p[j]);
    for (int64_t d = static_cast<int64_t>(nd) - 2; d >= 0; d--) {
      if (++idx[d] < (d == 0 ? first + n : count[d])) break;
      if (d > 0) idx[d] = 0;
    }
  }
  return sum;
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
