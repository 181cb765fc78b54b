// Text -> tokens -> text through the whole encode path (include/glam/data/encode.h):
// plain text, JSON Lines and gzip-compressed JSON Lines are read, encoded into
// shards with a byte-fallback model, read back from the shards and decoded; each
// document must come back as its text after SentencePiece's normalisation
// (whitespace runs, line breaks included, become one space; no leading or
// trailing space; NFKC, which leaves the characters used here unchanged).
// Also: <unk> ids are counted with the bytes they replace, and bad input is
// refused naming the file and line. Runs in the data test directory, where the
// fixture tiny_bf_spm leaves cli/tiny_bf.model (and tiny_spm cli/tiny.model).
#include <mpi.h>
#include <zlib.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>

#include "glam/base/check.h"
#include "glam/data/encode.h"
#include "glam/data/mixture.h"
#include "glam/data/text_input.h"
#include "glam/data/tokenizer.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

void write_gzip(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

// What SentencePiece's default normaliser makes of text (for the characters here).
std::string normalised(const std::string& text) {
  std::string out;
  bool space = false;
  for (char c : text) {
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const glam::UserError& e) {
    return e.what();
  }
  return "no error";
}

const char* kText =
    "The quick brown fox jumps over the lazy dog.\n"
    "A second line of the first document, with caf\xc3\xa9 and na\xc3\xafve.\n"
    "\n"
    "Snowman \xe2\x98\x83, Greek \xce\xb1\xce\xb2\xce\xb3, kanji \xe6\xbc\xa2\xe5\xad\x97, "
    "emoji \xf0\x9f\x98\x80 and   several   spaces.\n"
    "\n\n"
    "Digits 0123456789 and punctuation: ;:!?()[]{}<>/\\|@#$%^&*_+=~`'\".\n";

const char* kJsonl =
    "{\"text\": \"A JSON document\\nwith two lines and an escaped \\u00e9.\", \"id\": 1}\n"
    "\n"
    "{\"text\": \"Quotes \\\"inside\\\" and a tab\\there.\"}\n"
    "{\"text\": \"   \"}\n"
    "{\"meta\": 3, \"text\": \"Zebras \\ud83e\\udd93 quiz jovial owners.\"}\n";

}  // namespace

TEST_CASE("text -> tokens -> text: plain, JSON Lines and gzip", "[roundtrip]") {
  fs::create_directories("roundtrip");
  write_text("roundtrip/plain.txt", kText);
  write_text("roundtrip/docs.jsonl", kJsonl);
  write_gzip("roundtrip/docs2.jsonl.gz", kJsonl);
  write_gzip("roundtrip/plain.txt.gz", kText);
  const glam::Tokenizer tok("cli/tiny_bf.model");

  glam::EncodeOptions opt;
  opt.inputs = {"roundtrip/plain.txt", "roundtrip/docs.jsonl", "roundtrip/docs2.jsonl.gz",
                "roundtrip/plain.txt.gz"};
  opt.out_dir = "roundtrip/shards";
  opt.source = "roundtrip";
  opt.shard_bytes = 100;  // several shards
  opt.overwrite = true;
  const glam::EncodeStats st = glam::encode_shards(tok, opt, glam::DataComm::world());

  std::vector<std::string> want;
  for (const auto& path : opt.inputs)
    for (const auto& doc : glam::read_documents(path, opt.input)) want.push_back(doc);
  REQUIRE(want.size() == 3 + 3 + 3 + 3);  // the blank JSON text is skipped
  CHECK(want[3] == "A JSON document\nwith two lines and an escaped \xc3\xa9.");
  CHECK(want[5] == "Zebras \xf0\x9f\xa6\x93 quiz jovial owners.");
  CHECK(want[9] == want[0]);  // gzip reads as the plain file
  CHECK(st.docs == 12);
  CHECK(st.shards > 3);
  CHECK(st.unk_pieces == 0);  // byte fallback spells everything

  const glam::Mixture mix = glam::Mixture::open("roundtrip/shards/manifest.json", tok.vocab_size());
  const glam::Corpus& corpus = *mix.source(0).train;
  REQUIRE(corpus.info().n_docs == static_cast<int64_t>(want.size()));
  for (size_t d = 0; d < want.size(); ++d) {
    INFO("document " << d << ": " << want[d]);
    CHECK(tok.decode(corpus.document(static_cast<int64_t>(d))) == normalised(want[d]));
  }
}

TEST_CASE("<unk> ids are counted with the bytes they replace", "[roundtrip]") {
  const glam::Tokenizer tok("cli/tiny.model");  // no byte fallback
  int64_t unk = 0, unk_bytes = 0;
  const auto ids = tok.encode("the dog \xe2\x98\x83\xe2\x98\x83 and \xf0\x9f\x98\x80", unk, unk_bytes);
  CHECK(ids == tok.encode("the dog \xe2\x98\x83\xe2\x98\x83 and \xf0\x9f\x98\x80"));
  CHECK(unk >= 2);
  CHECK(unk_bytes == 6 + 4);  // two snowmen, one emoji
  unk = unk_bytes = 0;
  tok.encode("the dog", unk, unk_bytes);
  CHECK(unk == 0);
  CHECK(unk_bytes == 0);
}

TEST_CASE("bad text input is refused naming the file and the line", "[roundtrip][errors]") {
  fs::create_directories("roundtrip");
  glam::InputOptions in;
  write_text("roundtrip/empty.txt", "");
  CHECK_THAT(error_of([&] { glam::read_documents("roundtrip/empty.txt", in); }),
             Contains("input file 'roundtrip/empty.txt' is empty"));
  CHECK_THAT(error_of([&] { glam::read_documents("roundtrip/missing.txt", in); }),
             Contains("input file 'roundtrip/missing.txt' does not exist"));
  write_text("roundtrip/bad.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"bad \xff byte\"}\n");
  CHECK_THAT(error_of([&] { glam::read_documents("roundtrip/bad.jsonl", in); }),
             Contains("input file 'roundtrip/bad.jsonl' line 2: invalid UTF-8 at byte 15"));
  write_text("roundtrip/notext.jsonl", "{\"text\": \"fine\"}\n{\"body\": \"x\"}\n");
  CHECK_THAT(error_of([&] { glam::read_documents("roundtrip/notext.jsonl", in); }),
             Contains("'roundtrip/notext.jsonl' line 2: expected a JSON object with a string field \"text\""));
  write_text("roundtrip/broken.jsonl", "{\"text\": \"fine\"\n");
  CHECK_THAT(error_of([&] { glam::read_documents("roundtrip/broken.jsonl", in); }),
             Contains("'roundtrip/broken.jsonl' line 1: not valid JSON"));
  write_gzip("roundtrip/cut.txt.gz", std::string(5000, 'x'));
  fs::resize_file("roundtrip/cut.txt.gz", fs::file_size("roundtrip/cut.txt.gz") - 6);
  CHECK_THAT(error_of([&] { glam::read_documents("roundtrip/cut.txt.gz", in); }),
             Contains("input file 'roundtrip/cut.txt.gz' is not a valid gzip file (truncated)"));
}
