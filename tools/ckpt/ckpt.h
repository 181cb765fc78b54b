// glam-ckpt's shared pieces (tools/ckpt/*.cpp): the file being read and the
// datasets its stored config implies, tensors read in slabs, checksums of slabs,
// and the command-line and output-file helpers every command uses.
// Every failure is a glam::UserError (main prints it, exit 2); HDF5 goes through
// glam's HDF5 layer (glam/io/h5.h).
#pragma once
#include <boost/program_options.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "glam/checkpoint/checkpoint.h"
#include "glam/model/config.h"
#include "glam/io/h5.h"
#include "glam/mesh/mesh.h"

namespace glam::ckpt {

namespace po = boost::program_options;

// ---- commands (one file each) ---------------------------------------------------

int inspect(const std::vector<std::string>& args);
int verify(const std::vector<std::string>& args);
int export_weights(const std::vector<std::string>& args);
int reshard(const std::vector<std::string>& args);
int convert(const std::vector<std::string>& args);

// ---- the file and what its config implies (checkpoint_file.cpp) --------------------

// A config is a few KB; a longer string attribute is damaged.
constexpr size_t kMaxConfigBytes = 16u << 20;

// An open checkpoint, or (where a command allows it) a glam weights file.
struct Checkpoint {
  std::string path;
  h5::File file;
  std::string format;
  int64_t version = 0;
  std::string config_ini;
  Config cfg;
  bool weights = false;  // a glam weights file (weights.h): parameters only
  int64_t file_size = 0;
  // "checkpoint" or "weights file", for messages.
  const char* kind() const { return weights ? "weights file" : "checkpoint"; }
};

// Opens a checkpoint (or, with allow_weights, a glam weights file) and checks its
// format and version; with parse, also its config against the file's size.
Checkpoint open_checkpoint(const std::string& path, bool parse = true, bool allow_weights = false);

// Every dataset of a checkpoint of cfg (checkpoint_layout), sharded for `mesh`
// (only its sizes and ranks are used): all /params, then all /optimizer.
std::vector<CheckpointDataset> expected_tensors(const Config& cfg, const Mesh& mesh);
// The tensors of the parameters alone (/params), as a weights file holds them.
std::vector<CheckpointDataset> expected_params(const Config& cfg);

// One dataset found in a file.
struct DatasetInfo {
  std::string path;
  std::vector<int64_t> shape;
  std::string dtype;
  int64_t bytes = 0;
};
// Every dataset in a file, params first, then optimizer, then the rest.
std::vector<DatasetInfo> list_datasets(hid_t file, const std::string& path);

// ---- tensors (tensors.cpp) --------------------------------------------------------

int64_t product(const std::vector<int64_t>& v);
std::string shape_str(const std::vector<int64_t>& s);  // "[4, 32, 64]"
// "float32", "uint16", ... (with "-be" for big-endian storage).
std::string type_name(hid_t type);
bool is_float32_le(hid_t dataset);

// Opens dataset t.path of c for reading as a tensor of its layout: a UserError
// naming c (`then` after it) when it is missing, has another shape or is not float32.
h5::Dataset open_tensor(const Checkpoint& c, const CheckpointDataset& t, const std::string& then = "");

// f(first slice, slices, data [slices, count[1:]...]) for each slab.
using SlabFn = std::function<void(int64_t, int64_t, const float*)>;
// Reads the region [offset, offset + count) of a float32 dataset in slabs of whole
// slices of the region's leading dim, at most chunk_bytes each (at least one slice).
void read_region(hid_t ds, const std::vector<int64_t>& offset, const std::vector<int64_t>& count,
                 int64_t chunk_bytes, const std::string& what, const SlabFn& f);
// Writes slices [first, first + n) of the leading dim of `dst` (dataspace `space`
// of dims `dims`) from `data` in mem_type.
void write_slices(hid_t dst, hid_t space, const std::vector<int64_t>& dims, int64_t first, int64_t n,
                  hid_t mem_type, const void* data, const std::string& what);

// Sum of checksum_element over a slab of a region of a tensor of global shape `dims`:
// the region starts at `offset`; the slab holds its slices [first, first + n) of the
// leading dim, row-major.
uint64_t checksum_slab(const std::vector<int64_t>& dims, const std::vector<int64_t>& offset,
                       const std::vector<int64_t>& count, int64_t first, int64_t n, const float* data);

// Copies every attribute of `from` onto `to` (same file type, any class), except `skip`.
void copy_attrs(hid_t from, hid_t to, const std::vector<std::string>& skip);

// ---- export (export.cpp, safetensors.cpp) ---------------------------------------------

// Streams parameter t of c (ds: its open dataset) in slabs to sink, then checks
// the stored checksum where the file has checksums (a weights file of version 1
// has none); returns the sum over its values, the checksum of what was streamed.
uint64_t stream_param(const Checkpoint& c, const CheckpointDataset& t, hid_t ds, int64_t chunk, const SlabFn& sink);
// Writes the parameters as safetensors to `out` (f32, or bf16); returns the tensor bytes.
int64_t write_safetensors(const Checkpoint& c, const std::vector<CheckpointDataset>& params, bool bf16,
                          int64_t chunk, const std::string& out);
// The model config as JSON, for loaders outside glam (step: when the file has one).
std::string config_json(const Config& cfg, const std::optional<int64_t>& step);

// ---- options and output files (options.cpp) ------------------------------------------

// The options every command has: --help and the file it reads ("checkpoint", positional).
void add_command_options(po::options_description& opt, const char* file_help = "the checkpoint file (positional)");
// Parses the options of one command, the file positional. Returns false when --help was printed.
bool parse_options(const std::vector<std::string>& args, const std::string& command, const std::string& synopsis,
                   const po::options_description& options, po::variables_map& vm);
void add_chunk_option(po::options_description& opt);
int64_t chunk_bytes(const po::variables_map& vm);

// An output path that may be written: absent (or overwrite) and in an existing directory.
void require_output(const std::string& path, bool overwrite);

// Removes a temporary file unless it was committed (renamed into place).
struct TmpFile {
  std::string path;
  bool committed = false;
  explicit TmpFile(std::string p) : path(std::move(p)) {}
  ~TmpFile();
  TmpFile(const TmpFile&) = delete;
  TmpFile& operator=(const TmpFile&) = delete;
  void commit(const std::string& to);
};

// Writes text to path through a temporary file (require_output first).
void write_text_file(const std::string& path, const std::string& text, bool overwrite);

std::string mb(int64_t bytes);  // "1.234" (megabytes, 10^6)

// The status of a writer of glam/io/h5.h on output file `file`: a failure is a
// UserError naming the attribute and the file.
void attr_written(herr_t rc, const char* name, const std::string& file);

}  // namespace glam::ckpt
