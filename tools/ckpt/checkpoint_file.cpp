// glam-ckpt: opening a checkpoint (or weights file), its stored config, and the
// datasets that config implies (glam::checkpoint_layout, the list save_checkpoint writes).
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>

#include "ckpt.h"
#include "glam/model/adafactor.h"
#include "glam/data/bounded_read.h"
#include "glam/model/params.h"
#include "glam/checkpoint/weights.h"

namespace fs = std::filesystem;

namespace glam::ckpt {

namespace {

// Parses a config (INI text, as stored in the `config` attribute).
Config parse_config(const std::string& ini, const std::string& path) {
  std::string tmpl = (fs::temp_directory_path() / "glam-ckpt-config-XXXXXX").string();
  const int fd = mkstemp(tmpl.data());
  GLAM_REQUIRE(fd >= 0, "cannot create a temporary file in ", fs::temp_directory_path().string());
  close(fd);
  {
    std::ofstream out(tmpl, std::ios::binary);
    out << ini;
  }
  try {
    Config cfg = load_config_file(tmpl);
    fs::remove(tmpl);
    return cfg;
  } catch (const std::exception& e) {
    fs::remove(tmpl);
    throw UserError(msg("checkpoint '", path, "': its config attribute does not parse: ", e.what()));
  }
}

// The bytes of the parameters a config implies, from its sizes alone (no table is
// built: n_layers 2^40 would take hours), or -1 beyond int64.
int64_t param_bytes(const ModelConfig& m) {
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

h5::File open_hdf5(const std::string& path, const char* what) {
  // For the out-of-memory message in main(): the name stays set after we return.
  // Never destroyed at exit: the thread-local name it restores is gone by then.
  static ReadingFile* reading = nullptr;
  delete reading;
  reading = new ReadingFile(path);
  h5::File file = h5::open_for_reading(path, what);
  GLAM_REQUIRE(file.valid(), what, " '", path, "' is truncated or damaged: HDF5 cannot open it");
  return file;
}

}  // namespace

Checkpoint open_checkpoint(const std::string& path, bool parse, bool allow_weights) {
  Checkpoint c;
  c.path = path;
  c.file = open_hdf5(path, "checkpoint file");
  c.file_size = static_cast<int64_t>(fs::file_size(path));
  const hid_t f = c.file.get();
  const auto format = h5::read_string_attr(f, "format", kMaxConfigBytes);
  GLAM_REQUIRE(format, "checkpoint file '", path, "' has no format attribute: not a glam checkpoint");
  c.weights = allow_weights && *format == kWeightsFormat;
  GLAM_REQUIRE(*format == kCheckpointFormat || c.weights, "checkpoint file '", path,
               "' is not a glam checkpoint (format '", *format, "', expected '", kCheckpointFormat, "'",
               allow_weights ? msg(" or '", kWeightsFormat, "'") : "", ")");
  const auto version = h5::read_int_attr(f, "version");
  GLAM_REQUIRE(version, "checkpoint file '", path, "' has no integer version attribute");
  const int64_t newest = c.weights ? kWeightsVersion : kCheckpointVersion;
  GLAM_REQUIRE(*version == newest || (c.weights && *version == 1), "checkpoint file '", path, "' has format version ",
               *version, ", this glam-ckpt reads version ", newest);
  const auto ini = h5::read_string_attr(f, "config", kMaxConfigBytes);
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

std::vector<CheckpointDataset> expected_tensors(const Config& cfg, const Mesh& mesh) {
  const ParamTable table = describe_params(cfg.model, mesh);  // shapes only: nothing allocated
  std::vector<CheckpointDataset> all = checkpoint_layout(table, AdafactorOptions::from(cfg.train));
  std::stable_partition(all.begin(), all.end(), [](const CheckpointDataset& t) { return t.is_param(); });
  return all;
}

std::vector<CheckpointDataset> expected_params(const Config& cfg) {
  std::vector<CheckpointDataset> params = expected_tensors(cfg, Mesh{});
  params.erase(std::remove_if(params.begin(), params.end(), [](const CheckpointDataset& t) { return !t.is_param(); }),
               params.end());
  return params;
}

std::vector<DatasetInfo> list_datasets(hid_t file, const std::string& path) {
  std::vector<DatasetInfo> out;
  auto visit = [](hid_t obj, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type != H5O_TYPE_DATASET) return 0;
    const h5::Dataset ds(H5Dopen2(obj, name, H5P_DEFAULT));
    DatasetInfo d;
    d.path = std::string("/") + name;
    if (ds.valid()) {
      d.shape = h5::dataset_dims(ds.get());
      const h5::Type type(H5Dget_type(ds.get()));
      d.dtype = type.valid() ? type_name(type.get()) : "?";
      d.bytes = product(d.shape) * static_cast<int64_t>(type.valid() ? H5Tget_size(type.get()) : 0);
    }
    static_cast<std::vector<DatasetInfo>*>(data)->push_back(d);
    return 0;
  };
  GLAM_REQUIRE_H5(H5Ovisit(file, H5_INDEX_NAME, H5_ITER_INC, visit, &out), "checkpoint file '", path,
                  "': cannot list its datasets (damaged HDF5 structure)");
  auto group = [](const std::string& p) { return p.rfind("/params/", 0) == 0 ? 0 : p.rfind("/optimizer/", 0) == 0 ? 1 : 2; };
  std::stable_sort(out.begin(), out.end(),
                   [&](const DatasetInfo& a, const DatasetInfo& b) { return group(a.path) < group(b.path); });
  return out;
}

}  // namespace glam::ckpt
