// The tokenized corpus file (layout in include/glam/corpus.h) over the plain
// HDF5 C API, serial file access.
//  - write_corpus writes `path + ".tmp"`, flushes and closes it, then renames it
//    over `path`: a reader never sees a half-written corpus. HDF5 failures while
//    writing are fatal (I/O this rank sees); bad arguments are UserErrors.
//  - Corpus validates everything it reads and throws a UserError that names the
//    file and what is wrong. HDF5's own error-stack printing is silenced while
//    probing, so the user sees only that message.
//  - Corpus::rows packs the endless token stream into training rows; document
//    boundaries come from /doc_offsets, never from the eod id value.
#include "glam/corpus.h"

#include <hdf5.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "glam/bounded_read.h"
#include "glam/check.h"

namespace glam {

namespace {

constexpr const char* kFormat = "glam-corpus";
constexpr int64_t kVersion = 1;
constexpr size_t kMaxStringBytes = 1 << 16;  // source names and hashes are short

// Owns one HDF5 identifier and releases it with the matching H5*close.
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*closer)(hid_t)) : id_(id), close_(closer) {}
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether HDF5 succeeded (needed before a rename).
  herr_t close() {
    herr_t rc = id_ >= 0 ? close_(id_) : 0;
    id_ = -1;
    return rc;
  }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// ---- writing ------------------------------------------------------------

void write_string_attr(hid_t loc, const char* name, const std::string& value) {
  H5Id type(GLAM_CHECK_H5(H5Tcopy(H5T_C_S1)), H5Tclose);
  GLAM_CHECK_H5(H5Tset_size(type.get(), value.size() + 1));
  GLAM_CHECK_H5(H5Tset_strpad(type.get(), H5T_STR_NULLTERM));
  GLAM_CHECK_H5(H5Tset_cset(type.get(), H5T_CSET_UTF8));
  H5Id space(GLAM_CHECK_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  H5Id attr(GLAM_CHECK_H5(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT)),
            H5Aclose);
  GLAM_CHECK_H5(H5Awrite(attr.get(), type.get(), value.c_str()));
}

void write_int_attr(hid_t loc, const char* name, int64_t value) {
  H5Id space(GLAM_CHECK_H5(H5Screate(H5S_SCALAR)), H5Sclose);
  H5Id attr(
      GLAM_CHECK_H5(H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT)),
      H5Aclose);
  GLAM_CHECK_H5(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value));
}

template <typename T>
void write_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type,
                   const std::vector<T>& data) {
  const hsize_t dims[1] = {static_cast<hsize_t>(data.size())};
  H5Id space(GLAM_CHECK_H5(H5Screate_simple(1, dims, nullptr)), H5Sclose);
  H5Id dcpl(GLAM_CHECK_H5(H5Pcreate(H5P_DATASET_CREATE)), H5Pclose);
  GLAM_CHECK_H5(H5Pset_obj_track_times(dcpl.get(), false));  // same input, same bytes
  H5Id dset(GLAM_CHECK_H5(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(),
                                     H5P_DEFAULT)),
            H5Dclose);
  GLAM_CHECK_H5(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()));
}

void check_documents(const std::string& path, const std::vector<std::vector<int32_t>>& docs,
                     const CorpusInfo& info) {
  GLAM_REQUIRE(!docs.empty(), "refusing to write corpus '", path, "' with no documents");
  GLAM_REQUIRE(info.vocab_size > 0 && info.vocab_size <= std::numeric_limits<int32_t>::max(),
               "corpus '", path, "': vocab_size ", info.vocab_size, " is out of range");
  GLAM_REQUIRE(info.eod_id >= 0 && info.eod_id < info.vocab_size, "corpus '", path, "': eod_id ",
               info.eod_id, " is outside the vocabulary [0, ", info.vocab_size, ")");
  for (size_t d = 0; d < docs.size(); ++d)
    for (int32_t id : docs[d])
      GLAM_REQUIRE(id >= 0 && id < info.vocab_size, "corpus '", path, "': document ", d,
                   " holds token id ", id, " outside the vocabulary [0, ", info.vocab_size, ")");
}

void write_file(const std::string& file_path, const std::vector<uint32_t>& tokens,
                const std::vector<uint64_t>& offsets, const CorpusInfo& info) {
  hid_t raw = -1;
  {
    QuietHdf5 quiet;
    H5Id fcpl(GLAM_CHECK_H5(H5Pcreate(H5P_FILE_CREATE)), H5Pclose);
    GLAM_CHECK_H5(H5Pset_obj_track_times(fcpl.get(), false));
    raw = H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT);
  }
  GLAM_REQUIRE(raw >= 0, "cannot create '", file_path,
               "' (does its directory exist and is it writable?)");
  H5Id file(raw, H5Fclose);
  write_dataset(file.get(), "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, tokens);
  write_dataset(file.get(), "doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets);
  write_string_attr(file.get(), "format", kFormat);
  write_int_attr(file.get(), "version", kVersion);
  write_string_attr(file.get(), "source", info.source);
  write_string_attr(file.get(), "tokenizer_hash", info.tokenizer_hash);
  write_int_attr(file.get(), "vocab_size", info.vocab_size);
  write_int_attr(file.get(), "eod_id", info.eod_id);
  write_int_attr(file.get(), "n_docs", static_cast<int64_t>(offsets.size() - 1));
  write_int_attr(file.get(), "n_tokens", static_cast<int64_t>(tokens.size()));
  GLAM_CHECK_H5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL));
  GLAM_CHECK_H5(file.close());
}

// ---- reading ------------------------------------------------------------

// Reads the pieces of one open corpus file; every failure names the file.
class Reader {
 public:
  Reader(const std::string& path, hid_t file, int64_t file_size)
      : path_(path), file_(file), file_size_(file_size) {}

  std::string string_attr(const char* name) const {
    H5Id attr(open_attr(name), H5Aclose);
    H5Id type(H5Aget_type(attr.get()), H5Tclose);
    require(type.valid() && H5Tget_class(type.get()) == H5T_STRING, "attribute '", name,
            "' is not a string");
    // Read in the file's own string type (same character set: no conversion).
    return H5Tis_variable_str(type.get()) > 0 ? read_vlen_string(attr.get(), type.get(), name)
                                              : read_fixed_string(attr.get(), type.get(), name);
  }

  int64_t int_attr(const char* name) const {
    H5Id attr(open_attr(name), H5Aclose);
    H5Id type(H5Aget_type(attr.get()), H5Tclose);
    require(type.valid() && H5Tget_class(type.get()) == H5T_INTEGER, "attribute '", name,
            "' is not an integer");
    int64_t value = 0;
    require(H5Aread(attr.get(), H5T_NATIVE_INT64, &value) >= 0, "cannot read attribute '", name,
            "'");
    return value;
  }

  template <typename T>
  std::vector<T> dataset(const char* name, hid_t mem_type) const {
    require(H5Lexists(file_, name, H5P_DEFAULT) > 0, "dataset /", name, " is missing");
    H5Id dset(H5Dopen2(file_, name, H5P_DEFAULT), H5Dclose);
    require(dset.valid(), "cannot open dataset /", name);
    H5Id type(H5Dget_type(dset.get()), H5Tclose);
    require(type.valid() && H5Tget_class(type.get()) == H5T_INTEGER, "dataset /", name,
            " does not hold integers");
    // The shape is checked against the bytes the file holds before allocating.
    const std::vector<int64_t> shape = checked_dataset_shape(
        dset.get(), msg("corpus file '", path_, "'"), msg("/", name), sizeof(T), file_size_);
    require(shape.size() == 1, "dataset /", name, " is not one-dimensional");
    const size_t n = static_cast<size_t>(shape[0]);
    std::vector<T> data(n);
    if (n > 0)
      require(H5Dread(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) >= 0,
              "cannot read dataset /", name, " (truncated or corrupt file?)");
    return data;
  }

  template <typename... A>
  void require(bool cond, const A&... what) const {
    GLAM_REQUIRE(cond, "corpus file '", path_, "': ", what...);
  }

 private:
  hid_t open_attr(const char* name) const {
    require(H5Aexists(file_, name) > 0, "attribute '", name, "' is missing");
    hid_t attr = H5Aopen(file_, name, H5P_DEFAULT);
    require(attr >= 0, "cannot open attribute '", name, "'");
    // One value: reading an array attribute into one would overrun the buffer.
    const hid_t space = H5Aget_space(attr);
    const hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (space >= 0) H5Sclose(space);
    if (points != 1) H5Aclose(attr);
    require(points == 1, "attribute '", name, "' holds ", points, " values, expected one");
    return attr;
  }

  std::string read_vlen_string(hid_t attr, hid_t file_type, const char* name) const {
    char* raw = nullptr;
    require(H5Aread(attr, file_type, &raw) >= 0, "cannot read attribute '", name, "'");
    std::string value = raw ? raw : "";
    H5free_memory(raw);
    return value;
  }

  std::string read_fixed_string(hid_t attr, hid_t file_type, const char* name) const {
    const size_t size = H5Tget_size(file_type);
    require(size > 0 && size <= kMaxStringBytes, "attribute '", name, "' is a string of ", size,
            " bytes (at most ", kMaxStringBytes, " expected)");
    std::vector<char> buf(size + 1, '\0');
    require(H5Aread(attr, file_type, buf.data()) >= 0, "cannot read attribute '", name, "'");
    return std::string(buf.data(), strnlen(buf.data(), size));
  }

  const std::string& path_;
  hid_t file_;
  int64_t file_size_;
};

hid_t open_corpus_file(const std::string& path) {
  GLAM_REQUIRE(std::filesystem::exists(path), "corpus file '", path, "' does not exist");
  GLAM_REQUIRE(!std::filesystem::is_directory(path), "corpus file '", path, "' is a directory");
  GLAM_REQUIRE(H5Fis_hdf5(path.c_str()) > 0, "corpus file '", path,
               "' is not an HDF5 file (expected the output of glam-tokenize encode)");
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  GLAM_REQUIRE(file >= 0, "cannot open corpus file '", path, "' (truncated or corrupt HDF5 file?)");
  return file;
}

CorpusInfo read_info(const Reader& in) {
  const std::string format = in.string_attr("format");
  in.require(format == kFormat, "format is '", format, "', expected '", kFormat, "'");
  const int64_t version = in.int_attr("version");
  in.require(version == kVersion, "format version ", version,
             " is not supported (this glam reads version ", kVersion, ")");
  CorpusInfo info;
  info.source = in.string_attr("source");
  info.tokenizer_hash = in.string_attr("tokenizer_hash");
  info.vocab_size = in.int_attr("vocab_size");
  info.eod_id = in.int_attr("eod_id");
  info.n_docs = in.int_attr("n_docs");
  info.n_tokens = in.int_attr("n_tokens");
  in.require(info.vocab_size > 0 && info.vocab_size <= std::numeric_limits<int32_t>::max(),
             "vocab_size ", info.vocab_size, " is out of range");
  in.require(info.eod_id >= 0 && info.eod_id < info.vocab_size, "eod_id ", info.eod_id,
             " is outside the vocabulary [0, ", info.vocab_size, ")");
  return info;
}

void check_offsets(const Reader& in, const std::vector<uint64_t>& offsets, uint64_t n_tokens) {
  in.require(offsets.size() >= 2, "/doc_offsets holds no document");
  in.require(offsets.front() == 0, "/doc_offsets does not start at 0");
  for (size_t d = 0; d + 1 < offsets.size(); ++d)
    in.require(offsets[d] < offsets[d + 1], "/doc_offsets is not strictly increasing at document ",
               d, " (", offsets[d], " then ", offsets[d + 1], ")");
  in.require(offsets.back() == n_tokens, "/doc_offsets ends at ", offsets.back(),
             " but /tokens holds ", n_tokens, " tokens");
}

void check_ids(const Reader& in, const std::vector<uint32_t>& tokens, int64_t vocab,
               const char* what) {
  const auto bad = std::find_if(tokens.begin(), tokens.end(),
                                [vocab](uint32_t id) { return static_cast<int64_t>(id) >= vocab; });
  in.require(bad == tokens.end(), "token id ", bad == tokens.end() ? 0 : *bad, " at position ",
             bad - tokens.begin(), " is >= ", what, " ", vocab);
}

}  // namespace

// ---- public API ---------------------------------------------------------

uint64_t content_checksum(const std::vector<uint32_t>& tokens, const std::vector<uint64_t>& offsets) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](uint64_t v, int bytes) {
    for (int b = 0; b < bytes; ++b) {
      h ^= (v >> (8 * b)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  };
  for (uint32_t t : tokens) mix(t, 4);
  for (uint64_t o : offsets) mix(o, 8);
  return h;
}

CorpusInfo write_corpus(const std::string& path, const std::vector<std::vector<int32_t>>& docs,
                        const CorpusInfo& info, bool overwrite) {
  GLAM_REQUIRE(overwrite || !std::filesystem::exists(path), "corpus file '", path,
               "' already exists; refusing to overwrite it");
  check_documents(path, docs, info);
  std::vector<uint64_t> offsets{0};
  offsets.reserve(docs.size() + 1);
  size_t total = docs.size();
  for (const auto& doc : docs) total += doc.size();
  std::vector<uint32_t> tokens;
  tokens.reserve(total);
  for (const auto& doc : docs) {
    tokens.insert(tokens.end(), doc.begin(), doc.end());
    tokens.push_back(static_cast<uint32_t>(info.eod_id));
    offsets.push_back(tokens.size());
  }
  const std::string tmp = path + ".tmp";
  try {
    write_file(tmp, tokens, offsets, info);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw UserError(msg("cannot rename '", tmp, "' to '", path, "': ", std::strerror(err)));
  }
  CorpusInfo written = info;
  written.n_docs = static_cast<int64_t>(offsets.size()) - 1;
  written.n_tokens = static_cast<int64_t>(tokens.size());
  written.checksum = content_checksum(tokens, offsets);
  return written;
}

Corpus::Corpus(const std::string& path, int64_t expected_vocab) : path_(path) {
  append_shard(path, expected_vocab);
  info_ = shards_.front();
}

Corpus::Corpus(const std::vector<std::string>& shard_paths, int64_t expected_vocab) {
  GLAM_REQUIRE(!shard_paths.empty(), "a corpus needs at least one shard file");
  path_ = shard_paths.front();
  for (const auto& p : shard_paths) {
    append_shard(p, expected_vocab);
    const CorpusInfo& first = shards_.front();
    const CorpusInfo& s = shards_.back();
    GLAM_REQUIRE(s.tokenizer_hash == first.tokenizer_hash, "corpus shard '", p,
                 "' was tokenized with another model (tokenizer_hash ", s.tokenizer_hash,
                 ") than '", path_, "' (", first.tokenizer_hash, ")");
    GLAM_REQUIRE(s.vocab_size == first.vocab_size && s.eod_id == first.eod_id, "corpus shard '", p,
                 "' has vocab_size ", s.vocab_size, " and eod_id ", s.eod_id, " but '", path_,
                 "' has ", first.vocab_size, " and ", first.eod_id);
  }
  info_ = shards_.front();
  info_.n_docs = static_cast<int64_t>(doc_offsets_.size()) - 1;
  info_.n_tokens = static_cast<int64_t>(tokens_.size());
}

void Corpus::append_shard(const std::string& path, int64_t expected_vocab) {
  ReadingFile reading(path);
  QuietHdf5 quiet;
  const int64_t size = file_bytes(path, "corpus file");
  H5Id file(open_corpus_file(path), H5Fclose);
  Reader in(path, file.get(), size);
  CorpusInfo info = read_info(in);
  const auto tokens = in.dataset<uint32_t>("tokens", H5T_NATIVE_UINT32);
  const auto offsets = in.dataset<uint64_t>("doc_offsets", H5T_NATIVE_UINT64);
  in.require(!tokens.empty(), "/tokens is empty");
  in.require(static_cast<uint64_t>(info.n_tokens) == tokens.size(),
             "attribute n_tokens = ", info.n_tokens, " but /tokens holds ", tokens.size());
  in.require(static_cast<uint64_t>(info.n_docs) + 1 == offsets.size(),
             "attribute n_docs = ", info.n_docs, " but /doc_offsets holds ", offsets.size(),
             " entries");
  check_offsets(in, offsets, tokens.size());
  check_ids(in, tokens, info.vocab_size, "the file's vocab_size");
  if (expected_vocab > 0) check_ids(in, tokens, expected_vocab, "the expected vocabulary size");
  info.checksum = content_checksum(tokens, offsets);
  shards_.push_back(info);
  const uint64_t base = tokens_.size();
  if (doc_offsets_.empty()) doc_offsets_.push_back(0);
  for (size_t d = 1; d < offsets.size(); ++d) doc_offsets_.push_back(base + offsets[d]);
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
}

Batch Corpus::rows(int64_t first_row, int64_t n_rows, int64_t seq_len) const {
  GLAM_REQUIRE(first_row >= 0 && n_rows >= 0 && seq_len > 0,
               "Corpus::rows: bad arguments first_row=", first_row, " n_rows=", n_rows,
               " seq_len=", seq_len);
  GLAM_REQUIRE(first_row + n_rows <= std::numeric_limits<int64_t>::max() / seq_len,
               "Corpus::rows: row ", first_row + n_rows, " of length ", seq_len,
               " overflows the stream position");
  Batch b;
  b.rows = n_rows;
  b.seq_len = seq_len;
  b.ids.resize(n_rows * seq_len);
  b.targets.resize(n_rows * seq_len);
  b.segments.resize(n_rows * seq_len);
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t k = r * seq_len;
    pack_row(first_row + r, seq_len, &b.ids[k], &b.targets[k], &b.segments[k]);
  }
  return b;
}

std::vector<int32_t> Corpus::document(int64_t d) const {
  GLAM_REQUIRE(d >= 0 && d < info_.n_docs, "document ", d, " is outside [0, ", info_.n_docs, ")");
  return std::vector<int32_t>(tokens_.begin() + doc_offsets_[d], tokens_.begin() + doc_offsets_[d + 1] - 1);
}

void Corpus::pack_row(int64_t row, int64_t seq_len, int32_t* ids, int32_t* targets,
                      int32_t* segments) const {
  GLAM_REQUIRE(row >= 0 && seq_len > 0, "Corpus::pack_row: bad arguments row=", row,
               " seq_len=", seq_len);
  GLAM_REQUIRE(row < std::numeric_limits<int64_t>::max() / seq_len, "Corpus::rows: row ", row + 1,
               " of length ", seq_len, " overflows the stream position");
  const int64_t n = static_cast<int64_t>(tokens_.size());
  const int64_t last_doc = static_cast<int64_t>(doc_offsets_.size()) - 2;
  int64_t pos = (row * seq_len) % n;
  // The document holding pos: the last offset <= pos.
  int64_t doc =
      std::upper_bound(doc_offsets_.begin(), doc_offsets_.end(), static_cast<uint64_t>(pos)) -
      doc_offsets_.begin() - 1;
  int32_t segment = 0;
  for (int64_t j = 0; j < seq_len; ++j) {
    if (j > 0 && static_cast<uint64_t>(pos) == doc_offsets_[doc]) ++segment;
    const bool doc_end = static_cast<uint64_t>(pos + 1) == doc_offsets_[doc + 1];
    const int64_t next = pos + 1 == n ? 0 : pos + 1;
    ids[j] = static_cast<int32_t>(tokens_[pos]);
    targets[j] = doc_end ? -1 : static_cast<int32_t>(tokens_[next]);
    segments[j] = segment;
    if (doc_end) doc = doc == last_doc ? 0 : doc + 1;
    pos = next;
  }
}

}  // namespace glam
