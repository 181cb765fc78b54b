// `glam_fuzz edit`: the hostile files of the cases made on purpose
// (hostile_cases.sh), through the HDF5 C API, since h5py may be missing:
//   glam_fuzz edit FILE int NAME VALUE        root attribute NAME := VALUE (int64)
//   glam_fuzz edit FILE declare DATASET N     DATASET redeclared with N elements (1-D), never written
//   glam_fuzz edit FILE config KEY VALUE      the line "KEY = ..." of the root attribute config
//   glam_fuzz edit FILE flip DATASET          the lowest mantissa bit of DATASET's first float
#include <hdf5.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz.h"

namespace fuzz {

namespace {

bool set_int(hid_t file, const char* name, long long v) {
  H5Adelete(file, name);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attr = H5Acreate2(file, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  const bool ok = attr >= 0 && H5Awrite(attr, H5T_NATIVE_LLONG, &v) >= 0;
  H5Aclose(attr);
  H5Sclose(space);
  return ok;
}

bool declare(hid_t file, const char* path, unsigned long long n) {
  const hid_t old = H5Dopen2(file, path, H5P_DEFAULT);
  if (old < 0) return false;
  const hid_t type = H5Dget_type(old);
  H5Dclose(old);
  H5Ldelete(file, path, H5P_DEFAULT);
  const hsize_t dims[1] = {n};
  const hid_t space = H5Screate_simple(1, dims, nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_LATE);
  const hid_t ds = H5Dcreate2(file, path, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  const bool ok = ds >= 0;
  H5Dclose(ds);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Tclose(type);
  return ok;
}

bool set_config(hid_t file, const std::string& key, const std::string& value) {
  const hid_t attr = H5Aopen(file, "config", H5P_DEFAULT);
  if (attr < 0) return false;
  const hid_t type = H5Aget_type(attr);
  std::string ini(H5Tget_size(type), '\0');
  H5Aread(attr, type, ini.data());
  H5Tclose(type);
  H5Aclose(attr);
  ini = ini.c_str();
  const size_t at = ini.find("\n" + key + " = ");
  if (at == std::string::npos) return false;
  const size_t end = ini.find('\n', at + 1);
  ini.replace(at + 1, end - at - 1, key + " = " + value);
  H5Adelete(file, "config");
  const hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, ini.size() + 1);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t out = H5Acreate2(file, "config", t, space, H5P_DEFAULT, H5P_DEFAULT);
  const bool ok = out >= 0 && H5Awrite(out, t, ini.c_str()) >= 0;
  H5Aclose(out);
  H5Sclose(space);
  H5Tclose(t);
  return ok;
}

bool flip(hid_t file, const char* path) {
  const hid_t ds = H5Dopen2(file, path, H5P_DEFAULT);
  if (ds < 0) return false;
  const hid_t space = H5Dget_space(ds);
  const int nd = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> start(static_cast<size_t>(nd), 0), count(static_cast<size_t>(nd), 1);
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  const hsize_t one = 1;
  const hid_t mem = H5Screate_simple(1, &one, nullptr);
  unsigned int bits = 0;
  H5Dread(ds, H5T_NATIVE_UINT32, mem, space, H5P_DEFAULT, &bits);
  float v = 0;
  H5Dread(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, &v);
  uint32_t raw;
  std::memcpy(&raw, &v, 4);
  raw ^= 1u;
  std::memcpy(&v, &raw, 4);
  const bool ok = H5Dwrite(ds, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, &v) >= 0;
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  return ok;
}

}  // namespace

int edit_main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: glam_fuzz edit FILE int|declare|config|flip ARGS (see h5_edit.cpp)\n");
    return 2;
  }
  const std::string path = argv[2], op = argv[3];
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return 1;
  bool ok = false;
  if (op == "int" && argc == 6) ok = set_int(file, argv[4], std::stoll(argv[5]));
  else if (op == "declare" && argc == 6) ok = declare(file, argv[4], std::stoull(argv[5]));
  else if (op == "config" && argc == 6) ok = set_config(file, argv[4], argv[5]);
  else if (op == "flip" && argc == 5) ok = flip(file, argv[4]);
  ok = H5Fclose(file) >= 0 && ok;
  if (!ok) std::fprintf(stderr, "glam_fuzz edit: %s %s failed on %s\n", op.c_str(), argv[4], path.c_str());
  return ok ? 0 : 1;
}

}  // namespace fuzz
