// The corpus file format (layout in include/glam/data/corpus.h) over the HDF5 layer
// (io/h5.h), serial file access.
//  - write_corpus writes `path + ".tmp"`, flushes and closes it, then renames it
//    over `path`: a reader never sees a half-written corpus. HDF5 failures while
//    writing are fatal (I/O this rank sees); bad arguments are UserErrors.
//  - read_corpus_file validates everything it reads and throws a UserError that
//    names the file and what is wrong. HDF5's own error-stack printing is
//    silenced while probing, so the user sees only that message.
// Packing the token stream into rows is corpus.cpp's.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"
#include "glam/data/corpus.h"
#include "glam/io/h5.h"

namespace glam {

namespace {

constexpr const char* kFormat = "glam-corpus";
constexpr int64_t kVersion = 1;
constexpr size_t kMaxStringBytes = 1 << 16;  // source names and hashes are short

// ---- writing ------------------------------------------------------------

template <typename T>
void write_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const std::vector<T>& data) {
  const h5::Space space = h5::simple_space({static_cast<int64_t>(data.size())});
  const h5::Plist dcpl = h5::untimed(H5P_DATASET_CREATE);  // same input, same bytes
  const h5::Dataset dset(
      GLAM_CHECK_H5(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT)));
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
  h5::File file;
  {
    QuietHdf5 quiet;
    const h5::Plist fcpl = h5::untimed(H5P_FILE_CREATE);
    file = h5::File(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT));
  }
  GLAM_REQUIRE(file.valid(), "cannot create '", file_path, "' (does its directory exist and is it writable?)");
  const hid_t f = file.get();
  write_dataset(f, "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, tokens);
  write_dataset(f, "doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets);
  GLAM_CHECK_H5(h5::write_string_attr(f, "format", kFormat, H5T_CSET_UTF8));
  GLAM_CHECK_H5(h5::write_int_attr(f, "version", kVersion));
  GLAM_CHECK_H5(h5::write_string_attr(f, "source", info.source, H5T_CSET_UTF8));
  GLAM_CHECK_H5(h5::write_string_attr(f, "tokenizer_hash", info.tokenizer_hash, H5T_CSET_UTF8));
  GLAM_CHECK_H5(h5::write_int_attr(f, "vocab_size", info.vocab_size));
  GLAM_CHECK_H5(h5::write_int_attr(f, "eod_id", info.eod_id));
  GLAM_CHECK_H5(h5::write_int_attr(f, "n_docs", static_cast<int64_t>(offsets.size() - 1)));
  GLAM_CHECK_H5(h5::write_int_attr(f, "n_tokens", static_cast<int64_t>(tokens.size())));
  GLAM_CHECK_H5(H5Fflush(f, H5F_SCOPE_GLOBAL));
  GLAM_CHECK_H5(file.close());
}

// ---- reading ------------------------------------------------------------

// Reads the pieces of one open corpus file; every failure names the file.
class Reader {
 public:
  Reader(const std::string& path, hid_t file, int64_t file_size)
      : path_(path), file_(file), file_size_(file_size) {}

  std::string string_attr(const char* name) const {
    std::string why;
    const auto value = h5::read_string_attr(file_, name, kMaxStringBytes, &why);
    require(value.has_value(), "attribute '", name, "' ", why);
    return *value;
  }

  int64_t int_attr(const char* name) const {
    std::string why;
    const auto value = h5::read_int_attr(file_, name, &why);
    require(value.has_value(), "attribute '", name, "' ", why);
    return *value;
  }

  template <typename T>
  std::vector<T> dataset(const char* name, hid_t mem_type) const {
    require(H5Lexists(file_, name, H5P_DEFAULT) > 0, "dataset /", name, " is missing");
    const h5::Dataset dset(H5Dopen2(file_, name, H5P_DEFAULT));
    require(dset.valid(), "cannot open dataset /", name);
    const h5::Type type(H5Dget_type(dset.get()));
    require(type.valid() && H5Tget_class(type.get()) == H5T_INTEGER, "dataset /", name, " does not hold integers");
    // The shape is checked against the bytes the file holds before allocating.
    const std::vector<int64_t> shape = checked_dataset_shape(
        dset.get(), msg("corpus file '", path_, "'"), msg("/", name), sizeof(T), file_size_);
    require(shape.size() == 1, "dataset /", name, " is not one-dimensional");
    std::vector<T> data(static_cast<size_t>(shape[0]));
    if (!data.empty())
      require(H5Dread(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) >= 0,
              "cannot read dataset /", name, " (truncated or corrupt file?)");
    return data;
  }

  template <typename... A>
  void require(bool cond, const A&... what) const {
    GLAM_REQUIRE(cond, "corpus file '", path_, "': ", what...);
  }

 private:
  const std::string& path_;
  hid_t file_;
  int64_t file_size_;
};

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

CorpusFile read_corpus_file(const std::string& path, int64_t expected_vocab) {
  ReadingFile reading(path);
  QuietHdf5 quiet;
  const int64_t size = file_bytes(path, "corpus file");
  const h5::File file =
      h5::open_for_reading(path, "corpus file", H5P_DEFAULT, " (expected the output of glam-tokenize encode)");
  GLAM_REQUIRE(file.valid(), "cannot open corpus file '", path, "' (truncated or corrupt HDF5 file?)");
  const Reader in(path, file.get(), size);
  CorpusFile out;
  out.info = read_info(in);
  out.tokens = in.dataset<uint32_t>("tokens", H5T_NATIVE_UINT32);
  out.doc_offsets = in.dataset<uint64_t>("doc_offsets", H5T_NATIVE_UINT64);
  in.require(!out.tokens.empty(), "/tokens is empty");
  in.require(static_cast<uint64_t>(out.info.n_tokens) == out.tokens.size(), "attribute n_tokens = ",
             out.info.n_tokens, " but /tokens holds ", out.tokens.size());
  in.require(static_cast<uint64_t>(out.info.n_docs) + 1 == out.doc_offsets.size(), "attribute n_docs = ",
             out.info.n_docs, " but /doc_offsets holds ", out.doc_offsets.size(), " entries");
  check_offsets(in, out.doc_offsets, out.tokens.size());
  check_ids(in, out.tokens, out.info.vocab_size, "the file's vocab_size");
  if (expected_vocab > 0) check_ids(in, out.tokens, expected_vocab, "the expected vocabulary size");
  out.info.checksum = content_checksum(out.tokens, out.doc_offsets);
  return out;
}

}  // namespace glam
