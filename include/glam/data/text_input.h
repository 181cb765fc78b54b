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
//
// Under mpirun, `encode --output-dir` has each rank read a part of each
// uncompressed file (read_document_range); a gzip file is read whole by one rank.
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

// True when the file starts with the gzip magic bytes (reads two bytes).
bool is_gzip_file(const std::string& path);

// One part of an uncompressed input file, as read_document_range returns it.
struct InputPart {
  std::vector<std::string> docs;  // the documents that start in the part, in file order
  int64_t text_bytes = 0;         // bytes of the part (the parts of a file sum to its size)
  int64_t bytes_read = 0;         // bytes read from the file, boundary searches included
};

// Part `part` of `parts` of an uncompressed file of `size` bytes. The part holds
// the documents that start in bytes [size*part/parts, size*(part+1)/parts): it
// begins at the first document boundary at or after its first byte and reads
// past its last byte to the end of its last document. A boundary is the start of
// a line for JSON Lines and --doc-split line, the start of a blank line for
// --doc-split blank. The parts 0..parts-1 hold, in order, exactly the documents
// of read_documents; an error names the file and line as read_documents does.
InputPart read_document_range(const std::string& path, const InputOptions& opt, int part, int parts);

}  // namespace glam
