// Text sources for `glam-tokenize`: files of documents in one of the input
// formats, optionally gzip-compressed (detected by the gzip magic bytes, not the
// name):
//   text   documents separated by blank lines (doc_split "blank") or one per line
//          (doc_split "line"); a trailing '\r' is removed, blank documents skipped
//   jsonl  one JSON object per line whose "text" field (a string) is the document;
//          blank lines skipped, documents whose text is blank skipped
// Every byte must be valid UTF-8: the first bad sequence is a UserError naming
// the file, the line and the byte. A missing, unreadable or empty file (no
// bytes at all) is a UserError naming it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace glam {

struct InputOptions {
  std::string format = "auto";    // auto (jsonl for *.jsonl and *.jsonl.gz, else text) | text | jsonl
  std::string doc_split = "blank";  // text only: blank | line
};

// Byte offset of the first invalid UTF-8 sequence in s, or npos. Rejects
// overlong forms, surrogates and code points above U+10FFFF.
size_t find_invalid_utf8(std::string_view s);

// The whole file, gunzipped when it starts with the gzip magic bytes.
std::string read_input_file(const std::string& path);

// The format `opt` selects for `path` ("text" or "jsonl").
std::string input_format(const std::string& path, const InputOptions& opt);

// The documents of one file, in order. *bytes (if given) gets the file's
// uncompressed size.
std::vector<std::string> read_documents(const std::string& path, const InputOptions& opt,
                                        int64_t* bytes = nullptr);

}  // namespace glam
