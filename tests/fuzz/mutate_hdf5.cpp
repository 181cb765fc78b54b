// HDF5 mutations through the C API (fuzz.h): the values a damaged or hostile file
// can declare that byte flips rarely reach, such as a dataset claiming 2^40
// elements with no storage, or a `step` of 2^62.
#include <hdf5.h>

#include <string>
#include <vector>

#include "fuzz.h"

namespace fuzz {

namespace {

struct Object {
  std::string path;  // "/" or a dataset's path
  bool dataset = false;
};

std::vector<Object> objects_of(hid_t file) {
  std::vector<Object> out{{"/", false}};
  auto visit = [](hid_t, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type == H5O_TYPE_DATASET) static_cast<std::vector<Object>*>(data)->push_back({std::string("/") + name, true});
    return 0;
  };
  H5Ovisit(file, H5_INDEX_NAME, H5_ITER_INC, visit, &out);
  return out;
}

std::vector<std::string> attrs_of(hid_t obj) {
  std::vector<std::string> out;
  auto visit = [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->push_back(name);
    return 0;
  };
  hsize_t idx = 0;
  H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx, visit, &out);
  return out;
}

void put_int_attr(hid_t obj, const std::string& name, int64_t v, hsize_t n = 0) {
  H5Adelete(obj, name.c_str());
  const hid_t space = n ? H5Screate_simple(1, &n, nullptr) : H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  std::vector<int64_t> values(n ? n : 1, v);
  H5Awrite(attr, H5T_NATIVE_INT64, values.data());
  H5Aclose(attr);
  H5Sclose(space);
}

void put_string_attr(hid_t obj, const std::string& name, const std::string& v) {
  H5Adelete(obj, name.c_str());
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, v.size() + 1);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, type, v.c_str());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

std::string get_string_attr(hid_t obj, const std::string& name) {
  const hid_t attr = H5Aopen(obj, name.c_str(), H5P_DEFAULT);
  const hid_t type = H5Aget_type(attr);
  std::string out;
  if (H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) <= 0) {
    out.assign(H5Tget_size(type), '\0');
    H5Aread(attr, type, out.data());
    out = out.c_str();
  }
  H5Tclose(type);
  H5Aclose(attr);
  return out;
}

bool is_string_attr(hid_t obj, const std::string& name) {
  const hid_t attr = H5Aopen(obj, name.c_str(), H5P_DEFAULT);
  const hid_t type = H5Aget_type(attr);
  const bool s = H5Tget_class(type) == H5T_STRING;
  H5Tclose(type);
  H5Aclose(attr);
  return s;
}

// A hostile value for one attribute: numbers in a string (the stored config) or the integer itself.
std::string edit_attr(hid_t obj, const std::string& name, Rng& rng) {
  switch (rng() % 5) {
    case 0: H5Adelete(obj, name.c_str()); return "delete attribute " + name;
    case 1: put_int_attr(obj, name, hostile_int(rng), 3); return "array attribute " + name;
    case 2: put_string_attr(obj, name, hostile_number(rng)); return "string attribute " + name;
    default:
      if (is_string_attr(obj, name)) {
        std::string text = get_string_attr(obj, name);
        const std::string what = mutate_text(text, rng);
        put_string_attr(obj, name, text);
        return "attribute " + name + ": " + what;
      }
      put_int_attr(obj, name, hostile_int(rng));
      return "integer attribute " + name;
  }
}

std::vector<hsize_t> dims_of(hid_t ds) {
  const hid_t space = H5Dget_space(ds);
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(0, H5Sget_simple_extent_ndims(space))));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  H5Sclose(space);
  return dims;
}

// Replaces a dataset by one of a hostile shape that is declared but never written.
std::string redeclare(hid_t file, const std::string& path, Rng& rng) {
  const hid_t ds = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
  std::vector<hsize_t> dims = dims_of(ds);
  const hid_t type = H5Dget_type(ds);
  H5Dclose(ds);
  if (dims.empty()) dims.push_back(1);
  static const hsize_t sizes[] = {hsize_t{1} << 40, hsize_t{1} << 31, 0, 1, hsize_t{1} << 20};
  dims[rng() % dims.size()] = sizes[rng() % 5];
  H5Ldelete(file, path.c_str(), H5P_DEFAULT);
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_LATE);
  H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
  const hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  const hid_t out = H5Dcreate2(file, path.c_str(), type, space, lcpl, dcpl, H5P_DEFAULT);
  put_int_attr(out, "checksum", 0);
  H5Dclose(out);
  H5Pclose(lcpl);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Tclose(type);
  return "redeclare " + path + " with no storage";
}

// Rewrites a dataset's values: one flipped bit of one element, or all as another type.
std::string rewrite(hid_t file, const std::string& path, Rng& rng) {
  const hid_t ds = H5Dopen2(file, path.c_str(), H5P_DEFAULT);
  const std::vector<hsize_t> dims = dims_of(ds);
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  if (n == 0 || n > (hsize_t{1} << 24)) { H5Dclose(ds); return ""; }
  std::vector<double> values(n);
  H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
  if (rng() % 2) {
    const hid_t type = H5Dget_type(ds);
    std::vector<unsigned char> raw(n * H5Tget_size(type));
    H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data());
    raw[rng() % raw.size()] ^= static_cast<unsigned char>(1u << (rng() % 8));
    H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data());
    H5Tclose(type);
    H5Dclose(ds);
    return "flip a bit of " + path;
  }
  H5Dclose(ds);
  H5Ldelete(file, path.c_str(), H5P_DEFAULT);
  static const hid_t* types[] = {&H5T_STD_I32LE_g, &H5T_IEEE_F64LE_g, &H5T_STD_U64BE_g, &H5T_IEEE_F32BE_g};
  const hid_t type = *types[rng() % 4];
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t out = H5Dcreate2(file, path.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(out, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
  H5Dclose(out);
  H5Sclose(space);
  return "retype " + path;
}

std::string edit(hid_t file, Rng& rng) {
  const std::vector<Object> objects = objects_of(file);
  const Object& o = objects[rng() % objects.size()];
  const int op = static_cast<int>(rng() % 6);
  if (o.dataset && op == 0) {
    H5Ldelete(file, o.path.c_str(), H5P_DEFAULT);
    return "delete " + o.path;
  }
  if (o.dataset && op == 1) return redeclare(file, o.path, rng);
  if (o.dataset && op == 2) {
    const std::string what = rewrite(file, o.path, rng);
    if (!what.empty()) return what;
  }
  const hid_t obj = H5Oopen(file, o.path.c_str(), H5P_DEFAULT);
  const std::vector<std::string> attrs = attrs_of(obj);
  std::string what = "no attribute on " + o.path;
  if (!attrs.empty()) what = edit_attr(obj, attrs[rng() % attrs.size()], rng);
  H5Oclose(obj);
  return o.path + ": " + what;
}

}  // namespace

std::string mutate_hdf5(const std::string& path, Rng& rng) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return "";
  const std::string what = edit(file, rng);
  H5Fclose(file);
  return what;
}

}  // namespace fuzz
