// glam-ckpt's shared pieces (tools/ckpt/*.cpp): the file being read and the
// datasets its stored config implies, checksums of blocks, the ranks of mpirun
// that share verify, export and reshard (Team) and the pieces they split the
// tensors into (a memory limit per rank), and the command-line and output-file
// helpers every command uses.
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

// Sum of checksum_element over a block of a tensor of global shape `dims`: the
// block starts at `offset` (global coordinates) and holds `count` elements per
// dim, row-major.
uint64_t checksum_block(const std::vector<int64_t>& dims, const std::vector<int64_t>& offset,
                        const std::vector<int64_t>& count, const float* data);

// An output HDF5 file without time stamps (the same tensors, the same bytes).
h5::File create_untimed_file(const std::string& path);
// A dataset whose bytes any rank writes at a file offset (raw_offset) after this
// process closed the file: contiguous, allocated when created, never filled, no
// time stamps, its missing groups created untimed as well.
h5::Dataset create_raw_dataset(hid_t file, const std::string& path, hid_t type, const std::vector<int64_t>& shape,
                               const std::string& what);
// The file offset of a raw dataset's first byte (0 for a dataset of no elements).
int64_t raw_offset(hid_t dataset, const std::string& what);

// Copies every attribute of `from` onto `to` (same file type, any class), except `skip`.
void copy_attrs(hid_t from, hid_t to, const std::vector<std::string>& skip);

// ---- the ranks that share a command (team.cpp: every MPI call of glam-ckpt) ----------

// The message of the exception being handled (call it in a catch block).
std::string current_error_text();

// MPI_COMM_WORLD, as the ranks sharing the work see it. Collective calls must be
// made by every rank in the same order.
class Team {
 public:
  static const Team& world();
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }
  // Runs `step` here, then tells every rank whether it failed on any: if so, every
  // rank throws the UserError of the lowest failing rank (naming that rank when it
  // is not 0). Collective.
  void agree(const std::function<void()>& step) const;
  // Element-wise sums modulo 2^64 over the ranks, in place on every rank. Collective.
  void sum(std::vector<uint64_t>& values) const;
  int64_t max(int64_t value) const;  // collective

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

// ---- pieces: the reads and writes of a command split over the ranks (pieces.cpp) -------

// A region of a checkpoint dataset that a command reads: all of it (verify,
// export) or one rank's shard (reshard); where its bytes go, when they go anywhere.
struct Region {
  std::string path;                    // the dataset
  std::vector<int64_t> global;         // its shape: checksums index its elements in it
  std::vector<int64_t> offset, count;  // the region within the dataset
  int file = -1;                       // the output file it is written to (PieceJob::outputs), -1: none
  int64_t at = 0;                      // byte offset there of its first element (row-major after it)
};

// A block of a region: one range along dim `dim`, whole dims after it, single
// indices before it, so its elements are consecutive in the region's row-major order.
struct Block {
  size_t region = 0;
  std::vector<int64_t> offset, count;  // within the region
  int64_t first = 0;                   // flat index in the region of its first element
  int64_t elements() const;
};

// The blocks of a region of `count`, in order, of at most max_elements (>= 1)
// each: runs of whole slices of the outermost dim whose one slice fits (as many
// as make about `preferred` elements, at least one), finer ones only when a slice
// does not fit.
std::vector<Block> split_region(size_t region, const std::vector<int64_t>& count, int64_t max_elements,
                                int64_t preferred);
// Each block's rank: largest first, each to the rank with the fewest elements so
// far (the lowest on a tie). Depends on the blocks and `ranks` alone.
std::vector<int> assign_blocks(const std::vector<Block>& blocks, int ranks);

// The work of one command, the same on every rank.
struct PieceJob {
  const Checkpoint* c = nullptr;
  std::vector<Region> regions;
  std::vector<std::string> outputs;  // the files the regions go to; they exist at full size
  bool bf16 = false;                 // the outputs hold bfloat16 bits, else float32
  bool keep_going = false;           // verify: a block that cannot be read marks its region
  int64_t memory_limit = 0;          // bytes of tensor data a rank holds at once
  int64_t chunk = 0;                 // preferred bytes of float32 per read
};
struct PieceResult {
  std::vector<uint64_t> sums;        // per region: the checksum terms of its elements
  std::vector<uint64_t> unreadable;  // per region: blocks that could not be read (keep_going)
  int64_t peak_buffer = 0;           // the most bytes of tensor data any rank held at once
};
// Reads, checks and writes this rank's blocks, then sums the results over the
// team. A failure on any rank is a UserError on every rank. Collective.
PieceResult run_pieces(const Team& team, const PieceJob& job);

// Prints (rank 0) the largest tensor buffer of any rank against the limit and the
// largest peak resident memory (VmHWM) of any rank. Collective.
void report_memory(const Team& team, int64_t peak_buffer, int64_t memory_limit);

// ---- export (export.cpp, safetensors.cpp) ---------------------------------------------

// The safetensors layout of the parameters: its header bytes and, per parameter
// (in params order), its byte offset in the file; the order they are stored in.
struct SafetensorsLayout {
  std::string head;           // the u64 length and the padded JSON
  std::vector<int64_t> at;    // per parameter
  std::vector<size_t> order;  // indices into params, sorted by name
  int64_t bytes = 0;          // tensor bytes
};
SafetensorsLayout safetensors_layout(const Checkpoint& c, const std::vector<CheckpointDataset>& params, bool bf16);
// Creates `out` holding the header, at its full size.
void create_safetensors(const SafetensorsLayout& layout, const std::string& out);
// The model config as JSON, for loaders outside glam (step: when the file has one).
std::string config_json(const Config& cfg, const std::optional<int64_t>& step);

// ---- options and output files (options.cpp) ------------------------------------------

// The options every command has: --help and the file it reads ("checkpoint", positional).
void add_command_options(po::options_description& opt, const char* file_help = "the checkpoint file (positional)");
// Parses the options of one command, the file positional. Returns false when --help was printed.
bool parse_options(const std::vector<std::string>& args, const std::string& command, const std::string& synopsis,
                   const po::options_description& options, po::variables_map& vm);

// --memory-limit and --chunk-bytes, and their values.
constexpr int64_t kDefaultMemoryLimit = int64_t(1) << 30;
constexpr int64_t kMinMemoryLimit = 4096;
void add_memory_options(po::options_description& opt);
struct MemoryOptions {
  int64_t limit = kDefaultMemoryLimit;  // bytes of tensor data a rank holds at once
  int64_t chunk = 0;                    // preferred bytes per read
};
MemoryOptions memory_options(const po::variables_map& vm);
// A size as users write it: bytes ("1048576"), or a number with a unit: KiB, MiB,
// GiB, TiB (or K, M, G, T: powers of 1024), kB, MB, GB, TB (powers of 1000), B.
// A UserError naming `flag` for anything else.
int64_t parse_size(const std::string& text, const std::string& flag);

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
// Reopens the finished output `file` and writes sums[i] as the uint64 attribute
// `name` of datasets[i] (the checksums, once every rank has written its blocks).
void write_checksum_attrs(const std::vector<CheckpointDataset>& datasets, const uint64_t* sums, const char* name,
                          const std::string& file);

}  // namespace glam::ckpt
