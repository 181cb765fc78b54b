// Tests of glam::Tokenizer on a tiny SentencePiece model trained here (vocab
// ~400 with byte fallback, from generated English sentences): text -> ids -> text round trips,
// special ids, the model-file hash, and the UserErrors for bad model files.
// Files go to ./tokenizer/ under the working directory CTest gives (the build tree).
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>

#include "glam/base/check.h"
#include "glam/data/tokenizer.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// Deterministic English-like sentences from a small grammar.
std::vector<std::string> english_sentences(int n) {
  const std::vector<std::string> subjects = {"the cat",   "a small dog",   "my old teacher",
                                             "the river", "every student", "the quiet engineer",
                                             "a bird"};
  const std::vector<std::string> verbs = {"watches", "likes",   "follows", "remembers",
                                          "finds",   "carries", "opens",   "writes about"};
  const std::vector<std::string> objects = {
      "the green door",  "a long letter", "the morning train", "an empty garden",
      "the open window", "a heavy book",  "the evening news"};
  const std::vector<std::string> endings = {
      ".", " today.", " again.", " in the rain.", " before dinner.", " with great care."};
  std::mt19937 rng(42);
  auto pick = [&rng](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string s = pick(subjects) + " " + pick(verbs) + " " + pick(objects) + pick(endings);
    s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
    out.push_back(s);
  }
  return out;
}

// Trains the tiny model once per test run and returns its path.
const std::string& tiny_model() {
  static const std::string path = [] {
    fs::create_directories("tokenizer");
    {
      std::ofstream text("tokenizer/english.txt");
      for (const auto& s : english_sentences(3000)) text << s << "\n";
    }
    sentencepiece::SetRandomGeneratorSeed(1);
    const auto status =
        sentencepiece::SentencePieceTrainer::Train({{"input", "tokenizer/english.txt"},
                                                    {"model_prefix", "tokenizer/tiny"},
                                                    {"vocab_size", "400"},
                                                    {"model_type", "unigram"},
                                                    {"byte_fallback", "true"},
                                                    {"pad_id", "-1"},
                                                    {"unk_id", "0"},
                                                    {"bos_id", "1"},
                                                    {"eos_id", "2"},
                                                    {"hard_vocab_limit", "false"},
                                                    {"character_coverage", "1.0"},
                                                    {"num_threads", "2"},
                                                    {"minloglevel", "1"}});
    INFO(status.ToString());
    REQUIRE(status.ok());
    return std::string("tokenizer/tiny.model");
  }();
  return path;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const glam::UserError& e) {
    return e.what();
  }
  return "no error";
}

std::string fnv1a64_hex(const std::string& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

}  // namespace

TEST_CASE("the reference FNV-1a of the tests matches the published vectors", "[tokenizer]") {
  CHECK(fnv1a64_hex("") == "cbf29ce484222325");
  CHECK(fnv1a64_hex("a") == "af63dc4c8601ec8c");
}

TEST_CASE("Tokenizer loads the tiny model with glam's special ids", "[tokenizer]") {
  const glam::Tokenizer tok(tiny_model());
  CHECK(tok.vocab_size() > 256);  // the byte pieces and some more
  CHECK(tok.vocab_size() <= 400);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.eod_id() == 2);
}

TEST_CASE("text -> ids -> text round-trips", "[tokenizer]") {
  const glam::Tokenizer tok(tiny_model());
  for (const auto& s : english_sentences(50)) {
    const auto ids = tok.encode(s);
    CHECK_FALSE(ids.empty());
    CHECK(tok.decode(ids) == s);
  }
  SECTION("unseen characters go through byte fallback, not <unk>") {
    const std::string text = "Zebras quiz jovial café owners: naïve ☃ 42!";
    const auto ids = tok.encode(text);
    CHECK(std::count(ids.begin(), ids.end(), tok.unk_id()) == 0);
    CHECK(tok.decode(ids) == text);
  }
  SECTION("ids outside the vocabulary are an error") {
    CHECK_THAT(error_of([&] {
                 tok.decode({3, static_cast<int32_t>(tok.vocab_size())});
               }),
               Contains("outside the vocabulary"));
  }
}

TEST_CASE("hash is the FNV-1a 64 of the model file and stable", "[tokenizer]") {
  const glam::Tokenizer a(tiny_model()), b(tiny_model());
  std::ifstream in(tiny_model(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(a.hash().size() == 16);
  CHECK(a.hash() == fnv1a64_hex(bytes));
  CHECK(a.hash() == b.hash());
  fs::copy_file(tiny_model(), "tokenizer/copy.model", fs::copy_options::overwrite_existing);
  CHECK(glam::Tokenizer("tokenizer/copy.model").hash() == a.hash());
}

TEST_CASE("Tokenizer errors name the model file", "[tokenizer]") {
  fs::create_directories("tokenizer");
  SECTION("missing file") {
    CHECK_THAT(error_of([] { glam::Tokenizer t("tokenizer/missing.model"); }),
               Contains("tokenizer/missing.model") && Contains("missing or unreadable"));
  }
  SECTION("not a SentencePiece model") {
    std::ofstream("tokenizer/garbage.model") << "this is not a protobuf \xff\xfe\x01";
    CHECK_THAT(error_of([] { glam::Tokenizer t("tokenizer/garbage.model"); }),
               Contains("tokenizer/garbage.model") && Contains("not a valid SentencePiece model"));
  }
  SECTION("empty file") {
    std::ofstream("tokenizer/empty.model").close();
    CHECK_THAT(error_of([] { glam::Tokenizer t("tokenizer/empty.model"); }),
               Contains("tokenizer/empty.model") && Contains("is empty"));
  }
}
