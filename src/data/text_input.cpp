// Reading text sources (include/glam/text_input.h): gzip through zlib, JSON
// Lines through nlohmann::json, UTF-8 checked line by line so that an error can
// name the line.
#include "glam/text_input.h"

#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "glam/bounded_read.h"
#include "glam/check.h"

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

// Calls f(line_no, line) for each line ('\n' removed, and a '\r' before it),
// after checking its UTF-8.
template <typename F>
void for_each_line(const std::string& path, const std::string& text, F f) {
  const int64_t max_line = max_line_bytes();
  size_t start = 0;
  for (int64_t line_no = 1; start < text.size(); ++line_no) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    GLAM_REQUIRE(static_cast<int64_t>(line.size()) <= max_line, "input file '", path, "' line ", line_no, " is ",
                 line.size(), " bytes long, more than ", max_line, " (GLAM_MAX_LINE_BYTES raises the limit)");
    const size_t bad = find_invalid_utf8(line);
    GLAM_REQUIRE(bad == std::string_view::npos, "input file '", path, "' line ", line_no,
                 ": invalid UTF-8 at byte ", bad + 1, " of the line (convert it with iconv first)");
    f(line_no, line);
  }
}

std::vector<std::string> text_documents(const std::string& path, const std::string& text,
                                        bool per_line) {
  std::vector<std::string> docs;
  std::string doc;
  auto finish = [&] {
    if (!doc.empty()) docs.push_back(std::move(doc));
    doc.clear();
  };
  for_each_line(path, text, [&](int64_t, std::string_view line) {
    if (is_blank(line)) return finish();
    if (!doc.empty()) doc += '\n';
    doc.append(line);
    if (per_line) finish();
  });
  finish();
  return docs;
}

std::vector<std::string> jsonl_documents(const std::string& path, const std::string& text) {
  std::vector<std::string> docs;
  for_each_line(path, text, [&](int64_t line_no, std::string_view line) {
    if (is_blank(line)) return;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw UserError(msg("input file '", path, "' line ", line_no, ": not valid JSON (", e.what(), ")"));
    }
    GLAM_REQUIRE(j.is_object() && j.contains("text") && j["text"].is_string(), "input file '", path,
                 "' line ", line_no, ": expected a JSON object with a string field \"text\"");
    std::string doc = j["text"].get<std::string>();
    if (!is_blank(doc)) docs.push_back(std::move(doc));
  });
  return docs;
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
  return format == "jsonl" ? jsonl_documents(path, text)
                           : text_documents(path, text, opt.doc_split == "line");
}

}  // namespace glam
