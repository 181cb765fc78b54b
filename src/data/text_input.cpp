// Reading text sources (include/glam/data/text_input.h): gzip through zlib, JSON
// Lines through nlohmann::json, UTF-8 checked line by line so that an error can
// name the line.
#include "glam/data/text_input.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"

namespace glam {

namespace {

namespace fs = std::filesystem;

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Refuses decompressed output past the limits as it grows: a small gzip file
// can expand to far more than memory (a "gzip bomb").
class OutputLimits {
 public:
  explicit OutputLimits(const std::string& path)
      : path_(path), max_bytes_(max_input_bytes()), max_line_(max_line_bytes()) {}
  void check(const std::string& out, size_t appended) {
    GLAM_REQUIRE(static_cast<int64_t>(out.size()) <= max_bytes_, "input file '", path_, "' decompresses to more than ",
                 max_bytes_, " bytes (GLAM_MAX_INPUT_BYTES raises the limit)");
    const char* begin = out.data() + out.size() - appended;
    const void* nl = appended ? memrchr(begin, '\n', appended) : nullptr;
    run_ = nl ? static_cast<int64_t>(out.data() + out.size() - static_cast<const char*>(nl) - 1)
              : run_ + static_cast<int64_t>(appended);
    GLAM_REQUIRE(run_ <= max_line_, "input file '", path_, "' has a line longer than ", max_line_,
                 " bytes after decompression (GLAM_MAX_LINE_BYTES raises the limit)");
  }

 private:
  const std::string& path_;
  int64_t max_bytes_, max_line_, run_ = 0;
};

std::string gunzip(const std::string& path, const std::string& packed) {
  OutputLimits limits(path);
  z_stream z{};
  GLAM_REQUIRE(inflateInit2(&z, 15 + 32) == Z_OK, "zlib cannot start to read '", path, "'");
  std::string out;
  char buf[1 << 16];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(packed.data()));
  z.avail_in = static_cast<uInt>(packed.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&z);
      throw UserError(msg("input file '", path, "' is not a valid gzip file (",
                          rc == Z_BUF_ERROR ? "truncated" : "corrupt", ")"));
    }
    out.append(buf, sizeof buf - z.avail_out);
    try {
      limits.check(out, sizeof buf - z.avail_out);
    } catch (...) {
      inflateEnd(&z);
      throw;
    }
    // Several gzip members one after the other (as `cat a.gz b.gz`) make one file.
    if (rc == Z_STREAM_END && z.avail_in > 0) {
      GLAM_REQUIRE(inflateReset(&z) == Z_OK, "zlib cannot read '", path, "'");
      rc = Z_OK;
    }
  }
  inflateEnd(&z);
  return out;
}

// The number of the first line of a text that begins at byte `offset` of
// `path`. A part of a file (read_document_range) counts the lines before it only
// when an error needs the number, so it never reads the bytes before it otherwise.
class FirstLine {
 public:
  FirstLine(const std::string& path, int64_t offset) : path_(path), offset_(offset) {}
  int64_t operator()() const {
    int64_t line = 1, left = offset_;
    std::ifstream in(path_, std::ios::binary);
    char buf[1 << 16];
    while (left > 0 && in.read(buf, std::min<int64_t>(left, sizeof buf)).gcount() > 0) {
      line += std::count(buf, buf + in.gcount(), '\n');
      left -= in.gcount();
    }
    return line;
  }

 private:
  const std::string& path_;
  int64_t offset_;
};

// Calls f(k, line) for the k-th line (from 0; '\n' removed, and a '\r' before
// it), after checking its UTF-8. first() + k is its number in the file.
template <typename F>
void for_each_line(const std::string& path, const std::string& text, const FirstLine& first, F f) {
  const int64_t max_line = max_line_bytes();
  size_t start = 0;
  for (int64_t k = 0; start < text.size(); ++k) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    GLAM_REQUIRE(static_cast<int64_t>(line.size()) <= max_line, "input file '", path, "' line ", first() + k, " is ",
                 line.size(), " bytes long, more than ", max_line, " (GLAM_MAX_LINE_BYTES raises the limit)");
    const size_t bad = find_invalid_utf8(line);
    GLAM_REQUIRE(bad == std::string_view::npos, "input file '", path, "' line ", first() + k,
                 ": invalid UTF-8 at byte ", bad + 1, " of the line (convert it with iconv first)");
    f(k, line);
  }
}

std::vector<std::string> text_documents(const std::string& path, const std::string& text, const FirstLine& first,
                                        bool per_line) {
  std::vector<std::string> docs;
  std::string doc;
  auto finish = [&] {
    if (!doc.empty()) docs.push_back(std::move(doc));
    doc.clear();
  };
  for_each_line(path, text, first, [&](int64_t, std::string_view line) {
    if (is_blank(line)) return finish();
    if (!doc.empty()) doc += '\n';
    doc.append(line);
    if (per_line) finish();
  });
  finish();
  return docs;
}

std::vector<std::string> jsonl_documents(const std::string& path, const std::string& text, const FirstLine& first) {
  std::vector<std::string> docs;
  for_each_line(path, text, first, [&](int64_t k, std::string_view line) {
    if (is_blank(line)) return;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw UserError(msg("input file '", path, "' line ", first() + k, ": not valid JSON (", e.what(), ")"));
    }
    GLAM_REQUIRE(j.is_object() && j.contains("text") && j["text"].is_string(), "input file '", path,
                 "' line ", first() + k, ": expected a JSON object with a string field \"text\"");
    std::string doc = j["text"].get<std::string>();
    if (!is_blank(doc)) docs.push_back(std::move(doc));
  });
  return docs;
}

std::vector<std::string> documents(const std::string& path, const std::string& text, const FirstLine& first,
                                   const std::string& format, const InputOptions& opt) {
  return format == "jsonl" ? jsonl_documents(path, text, first)
                           : text_documents(path, text, first, opt.doc_split == "line");
}

// Bytes of a file by position, read in small blocks for the boundary searches
// and counted.
class FileBytes {
 public:
  explicit FileBytes(const std::string& path) : in_(path, std::ios::binary) {
    GLAM_REQUIRE(in_, "cannot read input file '", path, "'");
  }
  std::string read(int64_t begin, int64_t end) {
    std::string out(static_cast<size_t>(end - begin), '\0');
    in_.clear();
    in_.seekg(begin);
    in_.read(out.data(), end - begin);
    bytes_read_ += in_.gcount();
    out.resize(static_cast<size_t>(in_.gcount()));
    return out;
  }
  // The byte at pos (pos < the file's size).
  int at(int64_t pos) {
    if (pos < block_begin_ || pos >= block_begin_ + static_cast<int64_t>(block_.size())) {
      block_begin_ = pos;
      block_ = read(pos, pos + kBlock);
    }
    return static_cast<unsigned char>(block_[static_cast<size_t>(pos - block_begin_)]);
  }
  int64_t bytes_read() const { return bytes_read_; }

 private:
  static constexpr int64_t kBlock = 4096;
  std::ifstream in_;
  std::string block_;
  int64_t block_begin_ = 0, bytes_read_ = 0;
};

// The first start of a line at or after pos in a file of `size` bytes.
int64_t next_line_start(FileBytes& file, int64_t pos, int64_t size) {
  if (pos <= 0) return 0;
  for (int64_t p = pos - 1; p < size; ++p)
    if (file.at(p) == '\n') return p + 1;
  return size;
}

// The first start of a blank line at or after pos (or the end of the file).
int64_t next_blank_line_start(FileBytes& file, int64_t pos, int64_t size) {
  if (pos <= 0) return 0;
  for (int64_t p = next_line_start(file, pos, size); p < size;) {
    int64_t q = p;
    while (q < size && file.at(q) != '\n' && std::strchr(" \t\r\f\v", file.at(q))) ++q;
    if (q == size || file.at(q) == '\n') return p;
    p = next_line_start(file, q + 1, size);
  }
  return size;
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF)
      len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else
      return i;
    if (i + len > s.size()) return i;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return i;
    }
    i += len;
  }
  return std::string_view::npos;
}

std::string read_input_file(const std::string& path) {
  GLAM_REQUIRE(fs::exists(path), "input file '", path, "' does not exist");
  GLAM_REQUIRE(fs::is_regular_file(path), "input '", path, "' is not a regular file");
  ReadingFile reading(path);
  const int64_t size = file_bytes(path, "input file");
  GLAM_REQUIRE(size <= max_input_bytes(), "input file '", path, "' has ", size, " bytes, more than ",
               max_input_bytes(), " (GLAM_MAX_INPUT_BYTES raises the limit)");
  std::ifstream in(path, std::ios::binary);
  GLAM_REQUIRE(in, "cannot read input file '", path, "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  GLAM_REQUIRE(!in.bad(), "error while reading input file '", path, "'");
  GLAM_REQUIRE(!bytes.empty(), "input file '", path, "' is empty");
  const bool gzipped = bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
                       static_cast<unsigned char>(bytes[1]) == 0x8b;
  return gzipped ? gunzip(path, bytes) : bytes;
}

std::string input_format(const std::string& path, const InputOptions& opt) {
  GLAM_REQUIRE(opt.format == "auto" || opt.format == "text" || opt.format == "jsonl",
               "--format must be auto, text or jsonl, not '", opt.format, "'");
  GLAM_REQUIRE(opt.doc_split == "blank" || opt.doc_split == "line",
               "--doc-split must be blank or line, not '", opt.doc_split, "'");
  if (opt.format != "auto") return opt.format;
  return ends_with(path, ".jsonl") || ends_with(path, ".jsonl.gz") ? "jsonl" : "text";
}

std::vector<std::string> read_documents(const std::string& path, const InputOptions& opt,
                                        int64_t* bytes) {
  const std::string format = input_format(path, opt);
  const std::string text = read_input_file(path);
  if (bytes) *bytes = static_cast<int64_t>(text.size());
  return documents(path, text, FirstLine(path, 0), format, opt);
}

bool is_gzip_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  GLAM_REQUIRE(in, "cannot read input file '", path, "'");
  char magic[2] = {0, 0};
  in.read(magic, 2);
  return static_cast<unsigned char>(magic[0]) == 0x1f && static_cast<unsigned char>(magic[1]) == 0x8b;
}

InputPart read_document_range(const std::string& path, const InputOptions& opt, int part, int parts) {
  GLAM_ASSERT(parts >= 1 && part >= 0 && part < parts);
  const std::string format = input_format(path, opt);
  const int64_t size = file_bytes(path, "input file");
  GLAM_REQUIRE(size <= max_input_bytes(), "input file '", path, "' has ", size, " bytes, more than ",
               max_input_bytes(), " (GLAM_MAX_INPUT_BYTES raises the limit)");
  GLAM_REQUIRE(size > 0, "input file '", path, "' is empty");
  ReadingFile reading(path);
  FileBytes file(path);
  const bool by_blank_line = format == "text" && opt.doc_split == "blank";
  auto boundary = [&](int64_t pos) {
    return by_blank_line ? next_blank_line_start(file, pos, size) : next_line_start(file, pos, size);
  };
  const int64_t begin = boundary(size * part / parts), end = boundary(size * (part + 1) / parts);
  InputPart out;
  const std::string text = file.read(begin, end);
  GLAM_REQUIRE(static_cast<int64_t>(text.size()) == end - begin, "error while reading input file '", path, "'");
  out.docs = documents(path, text, FirstLine(path, begin), format, opt);
  out.text_bytes = end - begin;
  out.bytes_read = file.bytes_read();
  return out;
}

}  // namespace glam
