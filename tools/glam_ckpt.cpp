// glam-ckpt: looks after glam checkpoints (schema: docs/CHECKPOINT.md).
//   inspect  prints the training state, the config and every dataset of a checkpoint
//   verify   recomputes every checksum and checks the shapes against the stored config
//   export   writes the weights alone as a glam weights file (HDF5) or as safetensors
//   reshard  splits a checkpoint into one file per rank of a DxM mesh
//   convert  converts a checkpoint to another format version
// Every subcommand takes --help. Bad input is a glam::UserError: main prints
// "glam-ckpt: error: <message>" on stderr and exits with status 2 (verify also
// exits 2 after naming each bad dataset). The tool is serial: MPI is initialised
// only because libhdf5 is the MPI build; under mpirun rank 0 does the work.
// Tensors are read in slabs of whole leading-dim slices (--chunk-bytes), so a
// tensor larger than memory can be verified, exported and resharded.
#include <hdf5.h>
#include <mpi.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "glam/bounded_read.h"
#include "glam/checkpoint.h"
#include "glam/check.h"
#include "glam/config.h"
#include "glam/gemm.h"
#include "glam/mesh.h"
#include "glam/params.h"
#include "glam/weights.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "glam-ckpt writes safetensors and bfloat16 from memory and assumes a little-endian host"
#endif

namespace po = boost::program_options;
namespace fs = std::filesystem;
using glam::msg;
using glam::Param;
using glam::UserError;

namespace {

constexpr const char* kUsage =
    "usage: glam-ckpt <command> [options]\n"
    "commands:\n"
    "  inspect  print the training state, config and datasets of a checkpoint\n"
    "  verify   recompute every checksum and check shapes against the stored config\n"
    "  export   write the weights alone (glam HDF5 weights file or safetensors, f32 or bf16)\n"
    "  reshard  write one file per rank of a DxM mesh holding that rank's shards\n"
    "  convert  convert a checkpoint to another format version\n"
    "'glam-ckpt <command> --help' lists the options of a command.\n";

constexpr int64_t kDefaultChunkBytes = 64 << 20;

// ---- HDF5 handles and attributes --------------------------------------------

// Owns one HDF5 identifier and closes it with the call its kind needs.
class H5 {
 public:
  H5() = default;
  explicit H5(hid_t id) : id_(id) {}
  H5(H5&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  H5& operator=(H5&& o) noexcept {
    if (this != &o) { reset(); id_ = o.id_; o.id_ = -1; }
    return *this;
  }
  H5(const H5&) = delete;
  H5& operator=(const H5&) = delete;
  ~H5() { reset(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports failure (for files being written: the close flushes).
  bool close() {
    herr_t rc = 0;
    if (id_ >= 0) {
      switch (H5Iget_type(id_)) {
        case H5I_FILE: rc = H5Fclose(id_); break;
        case H5I_GROUP: rc = H5Gclose(id_); break;
        case H5I_DATASET: rc = H5Dclose(id_); break;
        case H5I_DATASPACE: rc = H5Sclose(id_); break;
        case H5I_DATATYPE: rc = H5Tclose(id_); break;
        case H5I_ATTR: rc = H5Aclose(id_); break;
        case H5I_GENPROP_LST: rc = H5Pclose(id_); break;
        default: rc = H5Idec_ref(id_) < 0 ? -1 : 0; break;
      }
    }
    id_ = -1;
    return rc >= 0;
  }
  void reset() { close(); }

 private:
  hid_t id_ = -1;
};

// An HDF5 call that must succeed; `what` says what was being done, for the message.
template <typename T>
T h5(T rc, const std::string& what) {
  if (rc < 0) throw UserError(what);
  return rc;
}

bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }

// A string attribute (fixed or variable length), or nothing when absent or not a string.
std::optional<std::string> read_string_attr(hid_t obj, const char* name) {
  if (!has_attr(obj, name)) return std::nullopt;
  H5 attr(H5Aopen(obj, name, H5P_DEFAULT));
  if (!attr.valid()) return std::nullopt;
  H5 ftype(H5Aget_type(attr.get()));
  if (!ftype.valid() || H5Tget_class(ftype.get()) != H5T_STRING) return std::nullopt;
  H5 space(H5Aget_space(attr.get()));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) return std::nullopt;
  H5 mtype(H5Tcopy(H5T_C_S1));
  H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get()));
  if (H5Tis_variable_str(ftype.get()) > 0) {
    H5Tset_size(mtype.get(), H5T_VARIABLE);
    char* s = nullptr;
    if (H5Aread(attr.get(), mtype.get(), &s) < 0) return std::nullopt;
    std::string out = s ? s : "";
    H5Dvlen_reclaim(mtype.get(), space.get(), H5P_DEFAULT, &s);
    return out;
  }
  const size_t n = H5Tget_size(ftype.get());
  if (n > (16u << 20)) return std::nullopt;  // a config is a few KB; a damaged size is no string
  std::vector<char> buf(n + 1, '\0');
  H5Tset_size(mtype.get(), n + 1);
  H5Tset_strpad(mtype.get(), H5T_STR_NULLTERM);
  if (H5Aread(attr.get(), mtype.get(), buf.data()) < 0) return std::nullopt;
  return std::string(buf.data());
}

// An integer attribute as its 64-bit pattern (signed or unsigned), or nothing.
std::optional<uint64_t> read_u64_attr(hid_t obj, const char* name) {
  if (!has_attr(obj, name)) return std::nullopt;
  H5 attr(H5Aopen(obj, name, H5P_DEFAULT));
  if (!attr.valid()) return std::nullopt;
  H5 ftype(H5Aget_type(attr.get()));
  if (!ftype.valid() || H5Tget_class(ftype.get()) != H5T_INTEGER) return std::nullopt;
  H5 space(H5Aget_space(attr.get()));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) return std::nullopt;
  if (H5Tget_sign(ftype.get()) == H5T_SGN_NONE) {
    uint64_t v = 0;
    if (H5Aread(attr.get(), H5T_NATIVE_UINT64, &v) < 0) return std::nullopt;
    return v;
  }
  int64_t v = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0) return std::nullopt;
  return static_cast<uint64_t>(v);
}

std::optional<int64_t> read_int_attr(hid_t obj, const char* name) {
  auto v = read_u64_attr(obj, name);
  if (!v) return std::nullopt;
  return static_cast<int64_t>(*v);
}

void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  const std::string what = msg("cannot write attribute ", name);
  H5 type(h5(H5Tcopy(H5T_C_S1), what));
  h5(H5Tset_size(type.get(), value.size() + 1), what);
  H5 space(h5(H5Screate(H5S_SCALAR), what));
  H5 attr(h5(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what));
  h5(H5Awrite(attr.get(), type.get(), value.c_str()), what);
}

void write_scalar_attr(hid_t obj, const char* name, hid_t file_type, hid_t mem_type, const void* value) {
  const std::string what = msg("cannot write attribute ", name);
  H5 space(h5(H5Screate(H5S_SCALAR), what));
  H5 attr(h5(H5Acreate2(obj, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), what));
  h5(H5Awrite(attr.get(), mem_type, value), what);
}

void write_int_attr(hid_t obj, const char* name, int64_t v) {
  write_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

void write_u64_attr(hid_t obj, const char* name, uint64_t v) {
  write_scalar_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
}

void write_int_array_attr(hid_t obj, const char* name, const std::vector<int64_t>& v) {
  const std::string what = msg("cannot write attribute ", name);
  const hsize_t n = v.size();
  H5 space(h5(H5Screate_simple(1, &n, nullptr), what));
  H5 attr(h5(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), what));
  h5(H5Awrite(attr.get(), H5T_NATIVE_INT64, v.data()), what);
}

// Copies every attribute of `from` onto `to` (same file type, any class), except `skip`.
void copy_attrs(hid_t from, hid_t to, const std::vector<std::string>& skip) {
  H5O_info_t info;
  h5(H5Oget_info(from, &info), "cannot list attributes");
  for (hsize_t i = 0; i < info.num_attrs; i++) {
    H5 attr(h5(H5Aopen_by_idx(from, ".", H5_INDEX_NAME, H5_ITER_INC, i, H5P_DEFAULT, H5P_DEFAULT),
               "cannot open an attribute"));
    const ssize_t len = H5Aget_name(attr.get(), 0, nullptr);
    std::string name(static_cast<size_t>(std::max<ssize_t>(len, 0)), '\0');
    H5Aget_name(attr.get(), name.size() + 1, name.data());
    if (std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
    const std::string what = msg("cannot copy attribute ", name);
    H5 ftype(h5(H5Aget_type(attr.get()), what));
    H5 mtype(h5(H5Tget_native_type(ftype.get(), H5T_DIR_DEFAULT), what));
    H5 space(h5(H5Aget_space(attr.get()), what));
    const hssize_t n = H5Sget_simple_extent_npoints(space.get());
    // Attributes live in object headers (64 KB each, dense storage aside): a larger one is damaged.
    if (n < 0 || static_cast<uint64_t>(n) * H5Tget_size(mtype.get()) > (64u << 20)) throw UserError(what + ": too large");
    std::vector<unsigned char> buf(static_cast<size_t>(std::max<hssize_t>(n, 1)) * H5Tget_size(mtype.get()));
    h5(H5Aread(attr.get(), mtype.get(), buf.data()), what);
    H5 out(h5(H5Acreate2(to, name.c_str(), ftype.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what));
    h5(H5Awrite(out.get(), mtype.get(), buf.data()), what);
    if (H5Tdetect_class(mtype.get(), H5T_VLEN) > 0 || H5Tis_variable_str(mtype.get()) > 0)
      H5Dvlen_reclaim(mtype.get(), space.get(), H5P_DEFAULT, buf.data());
  }
}

// ---- datasets ----------------------------------------------------------------

std::vector<int64_t> dataset_shape(hid_t ds) {
  H5 space(H5Dget_space(ds));
  const int nd = H5Sget_simple_extent_ndims(space.get());
  if (nd < 0) return {};
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

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

// "float32", "uint16", ... (with "-be" for big-endian storage).
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

bool is_float32_le(hid_t ds) {
  H5 type(H5Dget_type(ds));
  return type.valid() && H5Tequal(type.get(), H5T_IEEE_F32LE) > 0;
}

// Reads the region [offset, offset + count) of a float32 dataset in slabs of whole
// slices of the region's leading dim, at most chunk_bytes each (at least one slice):
// f(first slice, slices, data [slices, count[1:]...]).
void read_region(hid_t ds, const std::vector<int64_t>& offset, const std::vector<int64_t>& count,
                 int64_t chunk_bytes, const std::string& what,
                 const std::function<void(int64_t, int64_t, const float*)>& f) {
  const size_t nd = count.size();
  if (nd == 0) {  // a scalar dataset: one element
    float v = 0.0f;
    h5(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v), what);
    f(0, 1, &v);
    return;
  }
  const int64_t inner = product(count) / std::max<int64_t>(count[0], 1);
  const int64_t per = std::max<int64_t>(1, chunk_bytes / std::max<int64_t>(1, inner * 4));
  std::vector<float> buf(static_cast<size_t>(std::min(per, count[0]) * inner));
  H5 fspace(h5(H5Dget_space(ds), what));
  for (int64_t r = 0; r < count[0]; r += per) {
    const int64_t n = std::min(per, count[0] - r);
    std::vector<hsize_t> off(offset.begin(), offset.end()), cnt(count.begin(), count.end());
    off[0] += static_cast<hsize_t>(r);
    cnt[0] = static_cast<hsize_t>(n);
    h5(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr), what);
    H5 mspace(h5(H5Screate_simple(static_cast<int>(nd), cnt.data(), nullptr), what));
    h5(H5Dread(ds, H5T_NATIVE_FLOAT, mspace.get(), fspace.get(), H5P_DEFAULT, buf.data()), what);
    f(r, n, buf.data());
  }
}

// ---- checksums -----------------------------------------------------------------

using glam::checksum_element;  // docs/CHECKPOINT.md: mix(i * golden + bits)

// Sum of checksum_element over a slab of a region of a tensor of global shape `dims`:
// the region starts at `offset`; the slab holds its slices [first, first + n) of the
// leading dim, row-major. Walks contiguous runs of the last dim.
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

// ---- the checkpoint and what the config implies ----------------------------------

// One dataset the stored config implies: a parameter or a piece of its Adafactor state,
// with its sharding (global_shape, shape for the mesh, axes) in `desc`.
struct Tensor {
  std::string path;   // "/params/layer_00/attn/wq", "/optimizer/layer_00/attn/wq/vr"
  bool param = true;  // under /params (else /optimizer)
  Param desc;
};

// A parameter with dim `dim` removed: the descriptor of a factored statistic.
Param drop_dim(const Param& p, int dim) {
  Param q;
  q.name = p.name;
  q.global_shape = p.global_shape;
  q.shape = p.shape;
  q.global_shape.erase(q.global_shape.begin() + dim);
  q.shape.erase(q.shape.begin() + dim);
  auto axis = [dim](int a) { return a == dim ? -1 : a > dim ? a - 1 : a; };
  q.model_axis = axis(p.model_axis);
  q.data_axis = axis(p.data_axis);
  q.data_replicas = q.data_axis >= 0 ? p.data_replicas : 1;
  return q;
}

// Every dataset of a checkpoint of cfg, sharded for `mesh` (a plain struct: only its
// sizes and ranks are used), in table order: all /params, then all /optimizer.
std::vector<Tensor> expected_tensors(const glam::Config& cfg, const glam::Mesh& mesh) {
  glam::ParamTable table = glam::describe_params(cfg.model, mesh);  // shapes only: nothing allocated
  std::vector<Tensor> params, opt;
  for (Param& p : table.params) {
    Param d = p;
    params.push_back({"/params/" + p.name, true, d});
    const size_t nd = p.global_shape.size();
    const int64_t min_dim = cfg.train.factored_min_dim;
    const bool factored = nd >= 2 && p.global_shape[nd - 1] >= min_dim && p.global_shape[nd - 2] >= min_dim;
    const std::string base = "/optimizer/" + p.name;
    if (factored) {
      opt.push_back({base + "/vr", false, drop_dim(d, static_cast<int>(nd) - 1)});
      opt.push_back({base + "/vc", false, drop_dim(d, static_cast<int>(nd) - 2)});
    } else {
      opt.push_back({base + "/v", false, d});
    }
  }
  params.insert(params.end(), opt.begin(), opt.end());
  return params;
}

glam::Mesh fake_mesh(int data_size, int model_size, int rank) {
  glam::Mesh m;
  m.data_size = data_size;
  m.model_size = model_size;
  m.data_rank = rank / model_size;
  m.model_rank = rank % model_size;
  m.world_rank = rank;
  m.world_size = data_size * model_size;
  return m;
}

// Parses a config (INI text, as stored in the `config` attribute).
glam::Config parse_config(const std::string& ini, const std::string& path) {
  std::string tmpl = (fs::temp_directory_path() / "glam-ckpt-config-XXXXXX").string();
  const int fd = mkstemp(tmpl.data());
  GLAM_REQUIRE(fd >= 0, "cannot create a temporary file in ", fs::temp_directory_path().string());
  close(fd);
  {
    std::ofstream out(tmpl, std::ios::binary);
    out << ini;
  }
  try {
    glam::Config cfg = glam::load_config_file(tmpl);
    fs::remove(tmpl);
    return cfg;
  } catch (const std::exception& e) {
    fs::remove(tmpl);
    throw UserError(msg("checkpoint '", path, "': its config attribute does not parse: ", e.what()));
  }
}

struct Checkpoint {
  std::string path;
  H5 file;
  std::string format;
  int64_t version = 0;
  std::string config_ini;
  glam::Config cfg;
  bool weights = false;  // a glam weights file (weights.h): parameters only
  int64_t file_size = 0;
};

// The bytes of the parameters a config implies, from its sizes alone (no table is
// built: n_layers 2^40 would take hours), or -1 beyond int64.
int64_t param_bytes(const glam::ModelConfig& m) {
  using glam::checked_mul;
  auto add = [](int64_t a, int64_t b) { return a < 0 || b < 0 || a > INT64_MAX - b ? -1 : a + b; };
  const int64_t M = m.d_model, A = checked_mul(m.n_heads, m.d_head), H = m.d_ff, E = m.n_experts;
  const int64_t moe_layers = m.n_moe_layers(), dense_layers = m.n_layers - moe_layers;
  int64_t layer = add(checked_mul(4, checked_mul(M, A)), add(checked_mul(2, M), checked_mul(m.n_heads, 32)));
  int64_t n = add(checked_mul(m.vocab_size, M), add(checked_mul(m.n_layers, layer), M));
  n = add(n, checked_mul(moe_layers, add(checked_mul(M, E), checked_mul(2, checked_mul(E, checked_mul(M, H))))));
  n = add(n, checked_mul(dense_layers, checked_mul(3, checked_mul(M, H))));
  return checked_mul(n, 4);
}

// The stored config must describe tensors the file can hold before any table of
// them is built: a config saying vocab_size 2^40 in a 1 MB file is refused here.
void require_config_fits(const Checkpoint& c) {
  const int64_t bytes = param_bytes(c.cfg.model);
  GLAM_REQUIRE(bytes >= 0 && bytes <= c.file_size, "checkpoint file '", c.path, "': its config attribute implies ",
               bytes < 0 ? std::string("more than 2^63") : std::to_string(bytes),
               " bytes of parameters (model.vocab_size ", c.cfg.model.vocab_size, ", d_model ", c.cfg.model.d_model,
               ", n_layers ", c.cfg.model.n_layers, ", d_ff ", c.cfg.model.d_ff, ", n_experts ", c.cfg.model.n_experts,
               ") but the file has ", c.file_size, " bytes: the config is damaged");
}

H5 open_hdf5(const std::string& path, const char* what) {
  GLAM_REQUIRE(fs::exists(path), what, " '", path, "' does not exist");
  GLAM_REQUIRE(!fs::is_directory(path), what, " '", path, "' is a directory");
  // For the out-of-memory message in main(): the name stays set after we return.
  // Never destroyed at exit: the thread-local name it restores is gone by then.
  static glam::ReadingFile* reading = nullptr;
  delete reading;
  reading = new glam::ReadingFile(path);
  const htri_t is = H5Fis_hdf5(path.c_str());
  GLAM_REQUIRE(is >= 0, what, " '", path, "' cannot be read");
  GLAM_REQUIRE(is > 0, what, " '", path, "' is not an HDF5 file");
  H5 file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  GLAM_REQUIRE(file.valid(), what, " '", path, "' is truncated or damaged: HDF5 cannot open it");
  return file;
}

// Opens a checkpoint (or, with allow_weights, a glam weights file) and checks its
// format and version; with parse, also its config against the file's size.
Checkpoint open_checkpoint(const std::string& path, bool parse = true, bool allow_weights = false) {
  Checkpoint c;
  c.path = path;
  c.file = open_hdf5(path, "checkpoint file");
  c.file_size = static_cast<int64_t>(fs::file_size(path));
  const hid_t f = c.file.get();
  auto format = read_string_attr(f, "format");
  GLAM_REQUIRE(format, "checkpoint file '", path, "' has no format attribute: not a glam checkpoint");
  c.weights = allow_weights && *format == "glam-weights";
  GLAM_REQUIRE(*format == glam::kCheckpointFormat || c.weights, "checkpoint file '", path,
               "' is not a glam checkpoint (format '", *format, "', expected '", glam::kCheckpointFormat, "'",
               allow_weights ? " or 'glam-weights'" : "", ")");
  auto version = read_int_attr(f, "version");
  GLAM_REQUIRE(version, "checkpoint file '", path, "' has no integer version attribute");
  const int64_t newest = c.weights ? glam::kWeightsVersion : glam::kCheckpointVersion;
  GLAM_REQUIRE(*version == newest || (c.weights && *version == 1), "checkpoint file '", path, "' has format version ",
               *version, ", this glam-ckpt reads version ", newest);
  auto ini = read_string_attr(f, "config");
  GLAM_REQUIRE(ini, "checkpoint file '", path, "' has no config attribute");
  c.format = *format;
  c.version = *version;
  c.config_ini = *ini;
  if (parse) {
    c.cfg = parse_config(*ini, path);
    require_config_fits(c);
  }
  return c;
}

// Every dataset in a file: path -> (shape, dtype name), params first then optimizer.
struct DatasetInfo {
  std::string path;
  std::vector<int64_t> shape;
  std::string dtype;
  int64_t bytes = 0;
};

std::vector<DatasetInfo> list_datasets(hid_t file, const std::string& path) {
  std::vector<DatasetInfo> out;
  auto visit = [](hid_t obj, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type != H5O_TYPE_DATASET) return 0;
    auto* list = static_cast<std::vector<DatasetInfo>*>(data);
    H5 ds(H5Dopen2(obj, name, H5P_DEFAULT));
    DatasetInfo d;
    d.path = std::string("/") + name;
    if (ds.valid()) {
      d.shape = dataset_shape(ds.get());
      H5 type(H5Dget_type(ds.get()));
      d.dtype = type.valid() ? type_name(type.get()) : "?";
      d.bytes = product(d.shape) * static_cast<int64_t>(type.valid() ? H5Tget_size(type.get()) : 0);
    }
    list->push_back(d);
    return 0;
  };
  h5(H5Ovisit(file, H5_INDEX_NAME, H5_ITER_INC, visit, &out),
     msg("checkpoint file '", path, "': cannot list its datasets (damaged HDF5 structure)"));
  auto group = [](const std::string& p) { return p.rfind("/params/", 0) == 0 ? 0 : p.rfind("/optimizer/", 0) == 0 ? 1 : 2; };
  std::stable_sort(out.begin(), out.end(),
                   [&](const DatasetInfo& a, const DatasetInfo& b) { return group(a.path) < group(b.path); });
  return out;
}

// ---- options --------------------------------------------------------------------

// Parses the options of one subcommand. Returns false when --help was printed.
bool parse_options(const std::vector<std::string>& args, const std::string& command, const std::string& synopsis,
                   const po::options_description& options, const po::positional_options_description& positional,
                   po::variables_map& vm) {
  po::store(po::command_line_parser(args).options(options).positional(positional).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: glam-ckpt " << command << " " << synopsis << "\n" << options;
    return false;
  }
  po::notify(vm);
  return true;
}

int64_t chunk_bytes(const po::variables_map& vm) {
  const int64_t b = vm["chunk-bytes"].as<int64_t>();
  GLAM_REQUIRE(b > 0, "--chunk-bytes must be positive, got ", b);
  return b;
}

void add_chunk_option(po::options_description& opt) {
  opt.add_options()("chunk-bytes", po::value<int64_t>()->default_value(kDefaultChunkBytes),
                    "read tensors in slabs of at most this many bytes (whole leading-dim slices)");
}

// An output path that may be written: absent (or --overwrite) and in an existing directory.
void require_output(const std::string& path, bool overwrite) {
  GLAM_REQUIRE(!fs::exists(path) || overwrite, "output file '", path, "' already exists (use --overwrite)");
  GLAM_REQUIRE(!fs::is_directory(path), "output '", path, "' is a directory");
  const fs::path parent = fs::path(path).parent_path();
  GLAM_REQUIRE(parent.empty() || fs::is_directory(parent), "directory '", parent.string(), "' for the output '",
               path, "' does not exist");
}

// Removes a temporary file unless it was committed (renamed into place).
struct TmpFile {
  std::string path;
  bool committed = false;
  explicit TmpFile(std::string p) : path(std::move(p)) {}
  ~TmpFile() {
    std::error_code ec;
    if (!committed) fs::remove(path, ec);
  }
  void commit(const std::string& to) {
    fs::rename(path, to);
    committed = true;
  }
};

std::string mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", static_cast<double>(bytes) / 1e6);
  return buf;
}

// ---- inspect --------------------------------------------------------------------

int inspect(const std::vector<std::string>& args) {
  po::options_description opt("inspect options");
  opt.add_options()("help,h", "show this help")("checkpoint", po::value<std::string>()->required(),
                                                 "the checkpoint file (positional)");
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  if (!parse_options(args, "inspect", "CKPT", opt, pos, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>();
  Checkpoint c = open_checkpoint(path, false);
  const hid_t f = c.file.get();
  auto i64 = [&](const char* name) {
    auto v = read_int_attr(f, name);
    return v ? std::to_string(*v) : std::string("(missing)");
  };
  auto seed = read_u64_attr(f, "seed");
  auto mesh = read_string_attr(f, "mesh");
  std::printf("checkpoint     %s\n", path.c_str());
  std::printf("format         %s, version %" PRId64 "\n", c.format.c_str(), c.version);
  std::printf("step           %s\n", i64("step").c_str());
  std::printf("updates        %s\n", i64("updates").c_str());
  std::printf("skipped        %s\n", i64("skipped_total").c_str());
  std::printf("data_next_row  %s\n", i64("data_next_row").c_str());
  std::printf("seed           %s\n", seed ? std::to_string(*seed).c_str() : "(missing)");
  std::printf("mesh           %s (written on; any mesh can read it)\n", mesh ? mesh->c_str() : "(missing)");
  std::printf("file size      %s MB\n", mb(static_cast<int64_t>(fs::file_size(path))).c_str());
  std::printf("\nconfig:\n");
  std::istringstream ini(c.config_ini);
  for (std::string line; std::getline(ini, line);) std::printf("%s%s\n", line.empty() ? "" : "  ", line.c_str());

  const auto list = list_datasets(f, path);
  size_t width = 4;
  for (const auto& d : list) width = std::max(width, d.path.size());
  std::printf("\ndatasets:\n  %-*s  %-16s  %-8s  %10s\n", static_cast<int>(width), "path", "shape", "dtype", "MB");
  int64_t n_params = 0, n_opt = 0, bytes = 0, ds_params = 0, ds_opt = 0;
  for (const auto& d : list) {
    std::printf("  %-*s  %-16s  %-8s  %10s\n", static_cast<int>(width), d.path.c_str(), shape_str(d.shape).c_str(),
                d.dtype.c_str(), mb(d.bytes).c_str());
    if (d.path.rfind("/params/", 0) == 0) { n_params += product(d.shape); ds_params++; }
    if (d.path.rfind("/optimizer/", 0) == 0) { n_opt += product(d.shape); ds_opt++; }
    bytes += d.bytes;
  }
  std::printf("\ntotals: %" PRId64 " parameters in %" PRId64 " datasets, %" PRId64
              " optimizer-state values in %" PRId64 " datasets, %zu datasets, %s MB of tensor data\n",
              n_params, ds_params, n_opt, ds_opt, list.size(), mb(bytes).c_str());
  return 0;
}

// ---- verify ---------------------------------------------------------------------

// The root attributes of the training state, present and consistent with the
// stored config (glam::train_state_problem): a step of 2^62 or -1 is a problem.
std::vector<std::string> train_state_problems(const Checkpoint& c) {
  const hid_t f = c.file.get();
  std::vector<std::string> problems;
  for (const char* name : {"step", "updates", "skipped_total", "data_next_row", "seed"})
    if (!read_u64_attr(f, name)) problems.push_back(msg("MISSING: root attribute ", name, " (integer)"));
  if (!read_string_attr(f, "mesh")) problems.push_back("MISSING: root attribute mesh (string)");
  if (!problems.empty()) return problems;
  glam::TrainState st;
  st.step = *read_int_attr(f, "step");
  st.updates = *read_int_attr(f, "updates");
  st.skipped_total = *read_int_attr(f, "skipped_total");
  st.data_next_row = *read_int_attr(f, "data_next_row");
  const std::string p = glam::train_state_problem(st, c.cfg.train.steps, c.cfg.train.batch_rows);
  if (!p.empty()) problems.push_back("STATE: " + p);
  return problems;
}

int verify(const std::vector<std::string>& args) {
  po::options_description opt("verify options");
  opt.add_options()("help,h", "show this help")("checkpoint", po::value<std::string>()->required(),
                                                 "the checkpoint file (positional)");
  add_chunk_option(opt);
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  if (!parse_options(args, "verify", "CKPT [--chunk-bytes N]", opt, pos, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>();
  const int64_t chunk = chunk_bytes(vm);
  Checkpoint c = open_checkpoint(path, true, true);
  const hid_t f = c.file.get();
  std::vector<std::string> problems = c.weights ? std::vector<std::string>{} : train_state_problems(c);
  auto tensors = expected_tensors(c.cfg, glam::Mesh{});
  if (c.weights) tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [](const Tensor& t) { return !t.param; }),
                               tensors.end());
  const bool checksums = !c.weights || c.version >= 2;
  if (!checksums) std::printf("note: weights file version %" PRId64 " has no checksums: shapes checked only\n", c.version);
  int64_t ok = 0;
  for (const Tensor& t : tensors) {
    if (H5Lexists(f, t.path.c_str(), H5P_DEFAULT) <= 0 ||
        H5Oexists_by_name(f, t.path.c_str(), H5P_DEFAULT) <= 0) {
      problems.push_back(msg("MISSING: ", t.path, " (", shape_str(t.desc.global_shape), " float32)"));
      continue;
    }
    H5 ds(H5Dopen2(f, t.path.c_str(), H5P_DEFAULT));
    if (!ds.valid()) {
      problems.push_back(msg("MISSING: ", t.path, " (not a dataset)"));
      continue;
    }
    const auto shape = dataset_shape(ds.get());
    if (shape != t.desc.global_shape) {
      problems.push_back(msg("SHAPE: ", t.path, " is ", shape_str(shape), ", the config implies ",
                             shape_str(t.desc.global_shape)));
      continue;
    }
    if (!is_float32_le(ds.get())) {
      H5 type(H5Dget_type(ds.get()));
      problems.push_back(msg("TYPE: ", t.path, " is ", type.valid() ? type_name(type.get()) : "?",
                             ", expected float32 little endian"));
      continue;
    }
    try {
      glam::checked_dataset_shape(ds.get(), msg("'", path, "'"), t.path, 4, c.file_size);
    } catch (const UserError& e) {
      problems.push_back(msg("CORRUPT: ", t.path, " (", e.what(), ")"));
      continue;
    }
    auto stored = read_u64_attr(ds.get(), "checksum");
    if (!stored && checksums) {
      problems.push_back(msg("CORRUPT: ", t.path, " (no checksum attribute)"));
      continue;
    }
    if (!checksums) {
      ok++;
      continue;
    }
    uint64_t sum = 0;
    const std::vector<int64_t> zero(shape.size(), 0);
    try {
      read_region(ds.get(), zero, shape, chunk, "read", [&](int64_t first, int64_t n, const float* data) {
        sum += checksum_slab(shape, zero, shape, first, n, data);
      });
    } catch (const UserError&) {
      problems.push_back(msg("CORRUPT: ", t.path, " (unreadable)"));
      continue;
    }
    if (sum != *stored) {
      problems.push_back(msg("CORRUPT: ", t.path, " (checksum mismatch)"));
      continue;
    }
    ok++;
  }
  // Datasets the config does not imply: a version-1 checkpoint has none.
  for (const auto& d : list_datasets(f, path)) {
    const bool known = std::any_of(tensors.begin(), tensors.end(), [&](const Tensor& t) { return t.path == d.path; });
    if (!known) problems.push_back(msg("EXTRA: ", d.path, " (not implied by the stored config)"));
  }
  for (const auto& p : problems) std::printf("%s\n", p.c_str());
  if (!problems.empty()) {
    std::fflush(stdout);
    std::fprintf(stderr, "glam-ckpt: error: %s '%s' failed verification: %zu problem%s, %" PRId64
                 " of %zu datasets verified\n", c.weights ? "weights file" : "checkpoint", path.c_str(),
                 problems.size(), problems.size() == 1 ? "" : "s", ok, tensors.size());
    return 2;
  }
  std::printf("OK: %" PRId64 " datasets verified\n", ok);
  return 0;
}

// ---- export ---------------------------------------------------------------------

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

std::string json_number(double d) {
  char buf[32];  // the shortest text that reads back as d
  for (int prec = 1; prec <= 17; prec++) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// The model config as JSON, for loaders outside glam.
std::string config_json(const glam::Config& cfg, int64_t step) {
  const glam::ModelConfig& m = cfg.model;
  std::ostringstream os;
  os << "{\n"
     << "  \"format\": \"glam\",\n"
     << "  \"vocab_size\": " << m.vocab_size << ",\n"
     << "  \"d_model\": " << m.d_model << ",\n"
     << "  \"n_layers\": " << m.n_layers << ",\n"
     << "  \"n_heads\": " << m.n_heads << ",\n"
     << "  \"d_head\": " << m.d_head << ",\n"
     << "  \"d_ff\": " << m.d_ff << ",\n"
     << "  \"n_experts\": " << m.n_experts << ",\n"
     << "  \"expert_act\": " << json_string(m.expert_act) << ",\n"
     << "  \"second_policy\": " << json_string(m.second_policy) << ",\n"
     << "  \"group_size\": " << m.group_size << ",\n"
     << "  \"capacity_factor\": " << json_number(m.capacity_factor) << ",\n"
     << "  \"seq_len\": " << m.seq_len << ",\n"
     << "  \"moe_layers\": [";
  bool first = true;
  for (int64_t l = 0; l < m.n_layers; l++)
    if (m.is_moe_layer(l)) { os << (first ? "" : ", ") << l; first = false; }
  os << "],\n"
     << "  \"step\": " << step << ",\n"
     << "  \"tensor_layout\": "
     << json_string("weights are [in, out] (y = x @ W; torch.nn.Linear stores the transpose); "
                    "moe/wi [E, d_model, d_ff] and moe/wo [E, d_ff, d_model] are per expert; "
                    "embedding [vocab_size, d_model] is tied with the output layer; "
                    "attn/rel_bias [n_heads, 32] holds T5 relative-position buckets")
     << "\n}\n";
  return os.str();
}

void write_text_file(const std::string& path, const std::string& text, bool overwrite) {
  require_output(path, overwrite);
  TmpFile tmp(path + ".tmp");
  {
    std::ofstream out(tmp.path, std::ios::binary | std::ios::trunc);
    GLAM_REQUIRE(out, "cannot create '", tmp.path, "'");
    out << text;
    out.flush();
    GLAM_REQUIRE(out, "cannot write '", tmp.path, "'");
  }
  tmp.commit(path);
}

int export_weights(const std::vector<std::string>& args) {
  po::options_description opt("export options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("checkpoint", po::value<std::string>()->required(), "the checkpoint file (positional)")
      ("output", po::value<std::string>()->required(), "the file to write")
      ("format", po::value<std::string>()->default_value("hdf5"),
       "hdf5 (a glam weights file, usable as RUN_DIR/weights.h5 when f32) or safetensors")
      ("dtype", po::value<std::string>()->default_value("f32"),
       "f32, or bf16 (round to nearest even; in HDF5: uint16 datasets with attribute dtype=bfloat16)")
      ("config-json", po::value<std::string>(), "safetensors: where to write the model config as JSON "
       "(default OUTPUT.json)")
      ("overwrite", po::bool_switch(), "replace existing output files");
  // clang-format on
  add_chunk_option(opt);
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  const char* synopsis = "CKPT --output OUT [--format hdf5|safetensors] [--dtype f32|bf16] [options]";
  if (!parse_options(args, "export", synopsis, opt, pos, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>(), out = vm["output"].as<std::string>();
  const std::string format = vm["format"].as<std::string>(), dtype = vm["dtype"].as<std::string>();
  const bool overwrite = vm["overwrite"].as<bool>();
  const int64_t chunk = chunk_bytes(vm);
  GLAM_REQUIRE(format == "hdf5" || format == "safetensors", "--format must be hdf5 or safetensors, not '", format,
               "'");
  GLAM_REQUIRE(dtype == "f32" || dtype == "bf16", "--dtype must be f32 or bf16, not '", dtype, "'");
  GLAM_REQUIRE(format == "safetensors" || !vm.count("config-json"), "--config-json goes with --format safetensors");
  const bool bf16 = dtype == "bf16";
  const std::string json_path = vm.count("config-json") ? vm["config-json"].as<std::string>() : out + ".json";
  require_output(out, overwrite);
  if (format == "safetensors") require_output(json_path, overwrite);

  Checkpoint c = open_checkpoint(path);
  const hid_t f = c.file.get();
  const int64_t step = read_int_attr(f, "step").value_or(-1);
  std::vector<Tensor> params;
  for (Tensor& t : expected_tensors(c.cfg, glam::Mesh{}))
    if (t.param) params.push_back(std::move(t));

  // Opens a parameter, checks its shape and type; the checksum is checked while copying.
  auto open_param = [&](const Tensor& t) {
    H5 ds(H5Dopen2(f, t.path.c_str(), H5P_DEFAULT));
    GLAM_REQUIRE(ds.valid(), "checkpoint '", path, "' has no dataset ", t.path);
    const auto shape = dataset_shape(ds.get());
    GLAM_REQUIRE(shape == t.desc.global_shape, "checkpoint '", path, "': dataset ", t.path, " is ",
                 shape_str(shape), ", the config implies ", shape_str(t.desc.global_shape));
    GLAM_REQUIRE(is_float32_le(ds.get()), "checkpoint '", path, "': dataset ", t.path, " is not float32");
    return ds;
  };
  // Streams a parameter: f(data, n) per slab; then checks the checksum.
  auto copy_param = [&](const Tensor& t, hid_t ds, const std::function<void(const float*, int64_t, int64_t)>& sink) {
    const auto& shape = t.desc.global_shape;
    const std::vector<int64_t> zero(shape.size(), 0);
    uint64_t sum = 0;
    read_region(ds, zero, shape, chunk, msg("checkpoint '", path, "': cannot read dataset ", t.path),
                [&](int64_t first, int64_t n, const float* data) {
                  sum += checksum_slab(shape, zero, shape, first, n, data);
                  sink(data, first, n);
                });
    auto stored = read_u64_attr(ds, "checksum");
    GLAM_REQUIRE(stored && *stored == sum, "checkpoint '", path, "': dataset ", t.path,
                 stored ? " fails its checksum" : " has no checksum", " (run glam-ckpt verify); nothing exported");
  };

  TmpFile tmp(out + ".tmp");
  int64_t bytes = 0;
  if (format == "hdf5") {
    H5 file(H5Fcreate(tmp.path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    GLAM_REQUIRE(file.valid(), "cannot create '", tmp.path, "'");
    write_string_attr(file.get(), "format", "glam-weights");
    write_int_attr(file.get(), "version", glam::kWeightsVersion);
    write_string_attr(file.get(), "config", c.config_ini);
    write_int_attr(file.get(), "step", step);
    H5 lcpl(h5(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate"));
    h5(H5Pset_create_intermediate_group(lcpl.get(), 1), "H5Pset_create_intermediate_group");
    for (const Tensor& t : params) {
      H5 src = open_param(t);
      const std::string what = msg("cannot write dataset ", t.path, " to '", tmp.path, "'");
      const auto& shape = t.desc.global_shape;
      const std::vector<hsize_t> dims(shape.begin(), shape.end());
      H5 space(h5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what));
      H5 dst(h5(H5Dcreate2(file.get(), t.path.c_str(), bf16 ? H5T_STD_U16LE : H5T_IEEE_F32LE, space.get(),
                           lcpl.get(), H5P_DEFAULT, H5P_DEFAULT), what));
      if (bf16) write_string_attr(dst.get(), "dtype", "bfloat16");
      const int64_t inner = product(shape) / std::max<int64_t>(shape[0], 1);
      std::vector<uint16_t> half;
      copy_param(t, src.get(), [&](const float* data, int64_t first, int64_t n) {
        std::vector<hsize_t> off(dims.size(), 0), cnt = dims;
        off[0] = static_cast<hsize_t>(first);
        cnt[0] = static_cast<hsize_t>(n);
        h5(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr), what);
        H5 mem(h5(H5Screate_simple(static_cast<int>(cnt.size()), cnt.data(), nullptr), what));
        if (bf16) {
          half.resize(static_cast<size_t>(n * inner));
          glam::cpu::to_bf16(half.data(), data, n * inner);  // nearest even; NaN stays NaN
          h5(H5Dwrite(dst.get(), H5T_NATIVE_UINT16, mem.get(), space.get(), H5P_DEFAULT, half.data()), what);
        } else {
          h5(H5Dwrite(dst.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, data), what);
        }
      });
      // The same sum over the same float32 values: a checksummed weights file (bf16: other tools only).
      if (!bf16) write_u64_attr(dst.get(), "checksum", *read_u64_attr(src.get(), "checksum"));
      bytes += product(shape) * (bf16 ? 2 : 4);
    }
    lcpl.close();
    GLAM_REQUIRE(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0 && file.close(), "cannot write '", tmp.path, "'");
  } else {
    // safetensors: u64 LE header length N, N bytes of JSON (space-padded to a multiple
    // of 8), then the tensors' bytes in sorted-name order.
    struct Entry { std::string name; const Tensor* t; int64_t begin, end; };
    std::vector<Entry> entries;
    for (const Tensor& t : params) {
      std::string name = t.desc.name;
      std::replace(name.begin(), name.end(), '/', '.');
      entries.push_back({name, &t, 0, 0});
    }
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.name < b.name; });
    int64_t at = 0;
    for (Entry& e : entries) {
      e.begin = at;
      at += product(e.t->desc.global_shape) * (bf16 ? 2 : 4);
      e.end = at;
    }
    std::string header = "{\"__metadata__\":{\"format\":\"pt\",\"glam_config\":" + json_string(c.config_ini) + "}";
    for (const Entry& e : entries) {
      header += "," + json_string(e.name) + ":{\"dtype\":\"" + (bf16 ? "BF16" : "F32") + "\",\"shape\":[";
      const auto& s = e.t->desc.global_shape;
      for (size_t i = 0; i < s.size(); i++) header += (i ? "," : "") + std::to_string(s[i]);
      header += "],\"data_offsets\":[" + std::to_string(e.begin) + "," + std::to_string(e.end) + "]}";
    }
    header += "}";
    header.append((8 - header.size() % 8) % 8, ' ');
    std::ofstream os(tmp.path, std::ios::binary | std::ios::trunc);
    GLAM_REQUIRE(os, "cannot create '", tmp.path, "'");
    const uint64_t n = header.size();
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = static_cast<unsigned char>(n >> (8 * i));
    os.write(reinterpret_cast<const char*>(len), 8);
    os.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::vector<uint16_t> half;
    for (const Entry& e : entries) {
      H5 src = open_param(*e.t);
      const int64_t inner = product(e.t->desc.global_shape) / std::max<int64_t>(e.t->desc.global_shape[0], 1);
      copy_param(*e.t, src.get(), [&](const float* data, int64_t, int64_t rows) {
        const size_t count = static_cast<size_t>(rows * inner);
        if (bf16) {
          half.resize(count);
          glam::cpu::to_bf16(half.data(), data, static_cast<int64_t>(count));
          os.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(count * 2));
        } else {
          os.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * 4));
        }
      });
    }
    os.flush();
    GLAM_REQUIRE(os, "cannot write '", tmp.path, "'");
    os.close();
    bytes = at;
  }
  tmp.commit(out);
  std::printf("exported %zu tensors (%s MB, %s) of step %" PRId64 " from '%s' to '%s' (%s)\n", params.size(),
              mb(bytes).c_str(), bf16 ? "bf16" : "f32", step, path.c_str(), out.c_str(), format.c_str());
  if (format == "safetensors") {
    write_text_file(json_path, config_json(c.cfg, step), overwrite);
    std::printf("model config: '%s'\n", json_path.c_str());
  }
  if (format == "hdf5" && bf16)
    std::printf("note: glam reads f32 weights only; this bf16 file is for other tools\n");
  return 0;
}

// ---- reshard --------------------------------------------------------------------

// At most this many rank files: far more ranks than a checkpoint's tensors split
// over is a typo, not a mesh (100000x1 would write for minutes).
constexpr int kMaxReshardRanks = 4096;

void parse_mesh(const std::string& s, int* d, int* m) {
  const size_t x = s.find('x');
  auto number = [&](const std::string& t) {
    GLAM_REQUIRE(!t.empty() && t.size() <= 9 && t.find_first_not_of("0123456789") == std::string::npos,
                 "--mesh must be DxM with positive D and M (e.g. 2x2), not '", s, "'");
    return std::stoi(t);
  };
  GLAM_REQUIRE(x != std::string::npos, "--mesh must be DxM with positive D and M (e.g. 2x2), not '", s, "'");
  *d = number(s.substr(0, x));
  *m = number(s.substr(x + 1));
  GLAM_REQUIRE(*d > 0 && *m > 0, "--mesh must be DxM with positive D and M (e.g. 2x2), not '", s, "'");
  GLAM_REQUIRE(static_cast<int64_t>(*d) * *m <= kMaxReshardRanks, "--mesh ", s, " has ",
               static_cast<int64_t>(*d) * *m, " ranks; glam-ckpt reshard writes at most ", kMaxReshardRanks,
               " rank files");
}

// The mesh must split the model as training would (params.cpp: the model-split
// dims over M, experts over D): checked on one rank's shards before any other work.
void require_mesh_fits(const Checkpoint& c, int D, int M, const std::string& mesh_name) {
  try {
    expected_tensors(c.cfg, fake_mesh(D, M, 0));
  } catch (const UserError& e) {
    throw UserError(msg("cannot reshard '", c.path, "' to mesh ", mesh_name, ": ", e.what()));
  }
}

int reshard(const std::vector<std::string>& args) {
  po::options_description opt("reshard options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("checkpoint", po::value<std::string>()->required(), "the checkpoint file (positional)")
      ("mesh", po::value<std::string>()->required(), "the mesh DxM (data x model ranks)")
      ("output-dir", po::value<std::string>()->required(),
       "writes DIR/rank_R.h5 for R = data_rank * M + model_rank (created when missing)")
      ("overwrite", po::bool_switch(), "replace existing rank files");
  // clang-format on
  add_chunk_option(opt);
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  if (!parse_options(args, "reshard", "CKPT --mesh DxM --output-dir DIR [options]", opt, pos, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>(), dir = vm["output-dir"].as<std::string>();
  const std::string mesh_str = vm["mesh"].as<std::string>();
  const bool overwrite = vm["overwrite"].as<bool>();
  const int64_t chunk = chunk_bytes(vm);
  int D = 0, M = 0;
  parse_mesh(mesh_str, &D, &M);
  Checkpoint c = open_checkpoint(path);
  const hid_t f = c.file.get();
  const std::string mesh_name = msg(D, "x", M);
  require_mesh_fits(c, D, M, mesh_name);

  // Every rank's shards first: a mesh the model cannot be split on fails before any write.
  std::vector<std::vector<Tensor>> ranks;
  for (int r = 0; r < D * M; r++) {
    try {
      ranks.push_back(expected_tensors(c.cfg, fake_mesh(D, M, r)));
    } catch (const UserError& e) {
      throw UserError(msg("cannot reshard '", path, "' to mesh ", mesh_name, ": ", e.what()));
    }
  }
  const auto global = expected_tensors(c.cfg, glam::Mesh{});
  for (const Tensor& t : global) {
    H5 ds(H5Dopen2(f, t.path.c_str(), H5P_DEFAULT));
    GLAM_REQUIRE(ds.valid(), "checkpoint '", path, "' has no dataset ", t.path, " (run glam-ckpt verify)");
    const auto shape = dataset_shape(ds.get());
    GLAM_REQUIRE(shape == t.desc.global_shape, "checkpoint '", path, "': dataset ", t.path, " is ",
                 shape_str(shape), ", the config implies ", shape_str(t.desc.global_shape));
    GLAM_REQUIRE(is_float32_le(ds.get()), "checkpoint '", path, "': dataset ", t.path, " is not float32");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  GLAM_REQUIRE(fs::is_directory(dir), "cannot create output directory '", dir, "'");
  std::vector<std::string> outs;
  for (int r = 0; r < D * M; r++) {
    outs.push_back((fs::path(dir) / msg("rank_", r, ".h5")).string());
    require_output(outs.back(), overwrite);
  }

  std::vector<uint64_t> sums(global.size(), 0);  // over the primary copy of each shard
  std::vector<std::unique_ptr<TmpFile>> tmps;
  for (int r = 0; r < D * M; r++) {
    const glam::Mesh mesh = fake_mesh(D, M, r);
    tmps.push_back(std::make_unique<TmpFile>(outs[r] + ".tmp"));
    const std::string& tpath = tmps.back()->path;
    H5 file(H5Fcreate(tpath.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    GLAM_REQUIRE(file.valid(), "cannot create '", tpath, "'");
    H5 root(h5(H5Gopen2(f, "/", H5P_DEFAULT), "H5Gopen2"));
    try {
      copy_attrs(root.get(), file.get(), {"mesh", "rank"});
    } catch (const UserError& e) {
      throw UserError(msg("checkpoint '", path, "': ", e.what()));
    }
    write_string_attr(file.get(), "mesh", mesh_name);
    write_int_attr(file.get(), "rank", r);
    H5 lcpl(h5(H5Pcreate(H5P_LINK_CREATE), "H5Pcreate"));
    h5(H5Pset_create_intermediate_group(lcpl.get(), 1), "H5Pset_create_intermediate_group");
    for (size_t i = 0; i < ranks[r].size(); i++) {
      const Tensor& t = ranks[r][i];
      const auto offset = t.desc.shard_offset(mesh);
      const auto& count = t.desc.shape;
      const std::string what = msg("cannot write dataset ", t.path, " to '", tpath, "'");
      H5 src(h5(H5Dopen2(f, t.path.c_str(), H5P_DEFAULT), what));
      const std::vector<hsize_t> dims(count.begin(), count.end());
      H5 space(h5(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what));
      H5 dst(h5(H5Dcreate2(file.get(), t.path.c_str(), H5T_IEEE_F32LE, space.get(), lcpl.get(), H5P_DEFAULT,
                           H5P_DEFAULT), what));
      write_int_array_attr(dst.get(), "global_shape", t.desc.global_shape);
      write_int_array_attr(dst.get(), "offset", offset);
      uint64_t sum = 0;
      read_region(src.get(), offset, count, chunk, msg("checkpoint '", path, "': cannot read dataset ", t.path),
                  [&](int64_t first, int64_t n, const float* data) {
                    sum += checksum_slab(t.desc.global_shape, offset, count, first, n, data);
                    std::vector<hsize_t> off(dims.size(), 0), cnt = dims;
                    off[0] = static_cast<hsize_t>(first);
                    cnt[0] = static_cast<hsize_t>(n);
                    h5(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, off.data(), nullptr, cnt.data(), nullptr),
                       what);
                    H5 mem(h5(H5Screate_simple(static_cast<int>(cnt.size()), cnt.data(), nullptr), what));
                    h5(H5Dwrite(dst.get(), H5T_NATIVE_FLOAT, mem.get(), space.get(), H5P_DEFAULT, data), what);
                  });
      // The shard's part of the dataset checksum (sum over global indices of its elements).
      write_u64_attr(dst.get(), "shard_checksum", sum);
      if (glam::is_primary(t.desc, mesh)) sums[i] += sum;
    }
    lcpl.close();
    GLAM_REQUIRE(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0 && file.close(), "cannot write '", tpath, "'");
  }
  // The primary shards cover each tensor once: their sums are the stored checksums.
  for (size_t i = 0; i < global.size(); i++) {
    H5 ds(H5Dopen2(f, global[i].path.c_str(), H5P_DEFAULT));
    auto stored = read_u64_attr(ds.get(), "checksum");
    GLAM_REQUIRE(stored && *stored == sums[i], "checkpoint '", path, "': dataset ", global[i].path,
                 stored ? " fails its checksum" : " has no checksum", " (run glam-ckpt verify); no rank file written");
  }
  for (int r = 0; r < D * M; r++) tmps[r]->commit(outs[r]);
  std::printf("resharded '%s' to mesh %s: %d files rank_0.h5 .. rank_%d.h5 in '%s', %zu datasets each\n",
              path.c_str(), mesh_name.c_str(), D * M, D * M - 1, dir.c_str(), global.size());
  return 0;
}

// ---- convert --------------------------------------------------------------------

int convert(const std::vector<std::string>& args) {
  po::options_description opt("convert options");
  // clang-format off
  opt.add_options()
      ("help,h", "show this help")
      ("checkpoint", po::value<std::string>()->required(), "the checkpoint file (positional)")
      ("to-version", po::value<int64_t>()->required(), "the format version to write (only 1 exists)")
      ("output", po::value<std::string>()->required(), "the file to write")
      ("overwrite", po::bool_switch(), "replace an existing output file");
  // clang-format on
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  po::variables_map vm;
  if (!parse_options(args, "convert", "CKPT --to-version V --output OUT [--overwrite]", opt, pos, vm)) return 0;
  const std::string path = vm["checkpoint"].as<std::string>(), out = vm["output"].as<std::string>();
  const int64_t to = vm["to-version"].as<int64_t>();
  Checkpoint c = open_checkpoint(path, false);
  GLAM_REQUIRE(to == c.version, "no converter from version ", c.version, " to ", to, " (known versions: ",
               glam::kCheckpointVersion, ")");
  require_output(out, vm["overwrite"].as<bool>());
  c.file.close();
  TmpFile tmp(out + ".tmp");
  std::error_code ec;
  fs::copy_file(path, tmp.path, fs::copy_options::overwrite_existing, ec);
  GLAM_REQUIRE(!ec, "cannot copy '", path, "' to '", tmp.path, "': ", ec.message());
  tmp.commit(out);
  std::printf("'%s' is version %" PRId64 " already (the current version): copied unchanged to '%s'\n", path.c_str(),
              c.version, out.c_str());
  return 0;
}

// ---- main -----------------------------------------------------------------------

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "%s", kUsage);
    throw UserError("no command given");
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "--help" || command == "-h" || command == "help") {
    std::printf("%s", kUsage);
    return 0;
  }
  if (command == "inspect") return inspect(args);
  if (command == "verify") return verify(args);
  if (command == "export") return export_weights(args);
  if (command == "reshard") return reshard(args);
  if (command == "convert") return convert(args);
  std::fprintf(stderr, "%s", kUsage);
  throw UserError(msg("unknown command '", command, "'"));
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(nullptr, nullptr);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // failures become messages naming the file
  int rc = 0;
  if (rank == 0) {
    try {
      rc = run(argc, argv);
    } catch (const UserError& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "glam-ckpt: error: %s\n", e.what());
      rc = 2;
    } catch (const po::error& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "glam-ckpt: error: %s (see 'glam-ckpt %s --help')\n", e.what(), argc > 1 ? argv[1] : "");
      rc = 2;
    } catch (const fs::filesystem_error& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "glam-ckpt: error: %s\n", e.what());
      rc = 2;
    } catch (const std::bad_alloc&) {
      std::fflush(stdout);
      const std::string file = glam::ReadingFile::current();
      std::fprintf(stderr, "glam-ckpt: error: out of memory while reading '%s' (a damaged size in the file?)\n",
                   file.empty() ? "the input" : file.c_str());
      rc = 2;
    }
  }
  MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}
