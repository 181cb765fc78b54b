// read_document_range (include/glam/data/text_input.h) against read_documents: for
// 1 to 7 parts, the parts' documents, one part after another, are exactly the
// documents of the whole file, and their text bytes sum to the file's size.
// Inputs whose documents straddle the part boundaries, a last line without a
// newline, CRLF line ends, a file smaller than the number of parts, blank-line
// runs at a boundary; each in the three formats that can be split (text with
// --doc-split blank and line, JSON Lines). Errors name the same line as a whole
// read. Runs in the data test directory.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "glam/base/check.h"
#include "glam/data/text_input.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

glam::InputOptions options(const std::string& format, const std::string& split) {
  glam::InputOptions in;
  in.format = format;
  in.doc_split = split;
  return in;
}

// Every split of `text` into 1..7 parts gives the documents of the whole file.
void check_parts(const std::string& text, const glam::InputOptions& in) {
  const std::string path = "range/input.txt";
  write_text(path, text);
  const auto whole = glam::read_documents(path, in);
  for (int parts = 1; parts <= 7; ++parts) {
    std::vector<std::string> joined;
    int64_t bytes = 0, read = 0;
    for (int p = 0; p < parts; ++p) {
      auto part = glam::read_document_range(path, in, p, parts);
      for (auto& d : part.docs) joined.push_back(d);
      bytes += part.text_bytes;
      read += part.bytes_read;
    }
    INFO("format " << in.format << " split " << in.doc_split << ", " << parts << " parts of " << text.size()
                   << " bytes");
    CHECK(joined == whole);
    CHECK(bytes == static_cast<int64_t>(text.size()));
    CHECK(read >= bytes);
  }
}

const char* kLines =
    "The first document is a rather long line that straddles a boundary.\n"
    "short\n"
    "\n"
    "  \n"
    "Another line, \xc3\xa9\xe2\x98\x83 in UTF-8.\r\n"
    "x\n"
    "y\n"
    "\n\n\n"
    "The last line has no newline";

const char* kBlocks =
    "A block of\ntwo lines.\n\n"
    "Another block,\nwith three\nlines.\n"
    "\n \n\t\n"
    "One line.\r\n\r\n"
    "A long block whose lines go on and on\nso that several parts\nbegin inside it.\n\n"
    "The end, without newline";

std::string jsonl() {
  return "{\"text\": \"one\"}\n"
         "\n"
         "{\"id\": 2, \"text\": \"two, a longer document with\\nan escaped line break\"}\r\n"
         "{\"text\": \"   \"}\n"
         "{\"text\": \"four\"}\n"
         "{\"text\": \"five, the last, no newline\"}";
}

}  // namespace

TEST_CASE("the parts of a file hold its documents, in order", "[text_input]") {
  fs::create_directories("range");
  for (const char* split : {"blank", "line"}) {
    check_parts(kLines, options("text", split));
    check_parts(kBlocks, options("text", split));
    check_parts(std::string(kLines) + "\n", options("text", split));
  }
  check_parts(jsonl(), options("jsonl", "blank"));
  check_parts(jsonl() + "\n", options("jsonl", "blank"));
}

TEST_CASE("a file smaller than the number of parts", "[text_input]") {
  fs::create_directories("range");
  for (const char* text : {"a", "a\n", "ab\ncd", "\n", "\n\nz"}) {
    check_parts(text, options("text", "line"));
    check_parts(text, options("text", "blank"));
  }
  check_parts("{\"text\":\"a\"}", options("jsonl", "blank"));
}

TEST_CASE("a part refuses an empty file and names the line of bad input", "[text_input]") {
  fs::create_directories("range");
  write_text("range/empty.txt", "");
  REQUIRE_THROWS_WITH(glam::read_document_range("range/empty.txt", options("text", "line"), 1, 3),
                      Contains("input file 'range/empty.txt' is empty"));
  // Line 9 is bad; it lies in the last of 3 parts.
  std::string text;
  for (int i = 1; i <= 8; ++i) text += "line " + std::to_string(i) + " is fine\n";
  text += "line 9 is \xff broken\n";
  write_text("range/bad.txt", text);
  REQUIRE_THROWS_WITH(glam::read_documents("range/bad.txt", options("text", "line")),
                      Contains("'range/bad.txt' line 9: invalid UTF-8 at byte 11"));
  REQUIRE_THROWS_WITH(glam::read_document_range("range/bad.txt", options("text", "line"), 2, 3),
                      Contains("'range/bad.txt' line 9: invalid UTF-8 at byte 11"));
  CHECK_NOTHROW(glam::read_document_range("range/bad.txt", options("text", "line"), 0, 3));
  write_text("range/bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n{\"txt\": 1}\n");
  REQUIRE_THROWS_WITH(glam::read_document_range("range/bad.jsonl", options("jsonl", "blank"), 1, 2),
                      Contains("'range/bad.jsonl' line 4: expected a JSON object"));
}

TEST_CASE("a part reads little more than its share", "[text_input]") {
  fs::create_directories("range");
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "document number " + std::to_string(i) + " of the big file\n";
  write_text("range/big.txt", text);
  for (int p = 0; p < 4; ++p) {
    const auto part = glam::read_document_range("range/big.txt", options("text", "line"), p, 4);
    INFO("part " << p << " read " << part.bytes_read << " of " << text.size());
    CHECK(part.bytes_read < static_cast<int64_t>(text.size()) / 4 + 2 * 4096 + 64);
  }
}
