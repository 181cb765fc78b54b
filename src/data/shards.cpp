// The shard manifest (layout in include/glam/data/shards.h) as JSON through
// nlohmann::json. Reading checks every field it uses and names the manifest and
// the field in its UserErrors; loading checks every shard against its entry.
#include "glam/data/shards.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <type_traits>
#include <nlohmann/json.hpp>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"

namespace glam {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int64_t kMaxShardTokens = int64_t{1} << 40;
constexpr size_t kMaxShards = 1 << 20;  // with kMaxShardTokens: totals stay within int64

std::string hex16(uint64_t v) {
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(v));
  return out;
}

// Reads field `key` of object `obj` as T; a missing or mistyped field names the file.
template <typename T>
T field(const json& obj, const char* key, const std::string& path, const std::string& where) {
  GLAM_REQUIRE(obj.is_object() && obj.contains(key), "shard manifest '", path, "': ", where,
               "field \"", key, "\" is missing");
  // A float in an integer field would be cast (undefined beyond int64): refused.
  GLAM_REQUIRE(!std::is_integral<T>::value || obj.at(key).is_number_integer(), "shard manifest '", path, "': ", where,
               "field \"", key, "\" must be an integer");
  try {
    return obj.at(key).get<T>();
  } catch (const json::exception&) {
    throw UserError(msg("shard manifest '", path, "': ", where, "field \"", key,
                        "\" has the wrong type"));
  }
}

uint64_t parse_hex16(const std::string& text, const std::string& path, const std::string& where) {
  GLAM_REQUIRE(text.size() == 16 && text.find_first_not_of("0123456789abcdef") == std::string::npos,
               "shard manifest '", path, "': ", where, "checksum '", text,
               "' is not 16 lower-case hex digits");
  return std::stoull(text, nullptr, 16);
}

ShardEntry read_entry(const json& j, size_t i, const std::string& path) {
  const std::string where = msg("shards[", i, "]: ");
  ShardEntry e;
  e.file = field<std::string>(j, "file", path, where);
  e.split = field<std::string>(j, "split", path, where);
  e.n_docs = field<int64_t>(j, "n_docs", path, where);
  e.n_tokens = field<int64_t>(j, "n_tokens", path, where);
  e.checksum = parse_hex16(field<std::string>(j, "checksum", path, where), path, where);
  GLAM_REQUIRE(e.split == "train" || e.split == "val", "shard manifest '", path, "': ", where,
               "split is '", e.split, "', expected train or val");
  GLAM_REQUIRE(!e.file.empty() && fs::path(e.file).is_relative(), "shard manifest '", path, "': ",
               where, "file '", e.file, "' must be a path relative to the manifest");
  // Counts bounded by what a shard can hold: a damaged count cannot overflow the totals.
  GLAM_REQUIRE(e.n_tokens > 0 && e.n_tokens <= kMaxShardTokens, "shard manifest '", path, "': ", where,
               "n_tokens ", e.n_tokens, " is outside [1, ", kMaxShardTokens, "]");
  GLAM_REQUIRE(e.n_docs > 0 && e.n_docs <= e.n_tokens, "shard manifest '", path, "': ", where, "n_docs ",
               e.n_docs, " is outside [1, n_tokens = ", e.n_tokens, "]");
  return e;
}

}  // namespace

int64_t ShardManifest::n_tokens(const std::string& split) const {
  int64_t n = 0;
  for (const auto& s : shards) n += s.split == split ? s.n_tokens : 0;
  return n;
}

void write_manifest(const std::string& path, const ShardManifest& m) {
  json shards = json::array();
  for (const auto& s : m.shards)
    shards.push_back({{"file", s.file}, {"split", s.split}, {"n_docs", s.n_docs},
                      {"n_tokens", s.n_tokens}, {"checksum", hex16(s.checksum)}});
  const json j = {{"format", kShardsFormat},       {"version", kShardsVersion},
                  {"source", m.source},            {"tokenizer_hash", m.tokenizer_hash},
                  {"vocab_size", m.vocab_size},    {"eod_id", m.eod_id},
                  {"input_bytes", m.input_bytes},  {"unk_pieces", m.unk_pieces},
                  {"unk_bytes", m.unk_bytes},      {"shards", shards}};
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    GLAM_REQUIRE(out, "cannot write shard manifest '", tmp, "'");
    out << j.dump(1) << "\n";
    GLAM_REQUIRE(out.flush(), "error while writing shard manifest '", tmp, "'");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw UserError(msg("cannot rename '", tmp, "' to '", path, "': ", std::strerror(err)));
  }
}

ShardManifest read_manifest(const std::string& path) {
  GLAM_REQUIRE(fs::exists(path), "shard manifest '", path, "' does not exist");
  GLAM_REQUIRE(!fs::is_directory(path), "shard manifest '", path, "' is a directory");
  ReadingFile reading(path);
  std::ifstream in(path);
  GLAM_REQUIRE(in, "cannot read shard manifest '", path, "'");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw UserError(msg("shard manifest '", path, "' is not valid JSON: ", e.what()));
  }
  const std::string format = field<std::string>(j, "format", path, "");
  GLAM_REQUIRE(format == kShardsFormat, "shard manifest '", path, "': format is '", format,
               "', expected '", kShardsFormat, "'");
  const int64_t version = field<int64_t>(j, "version", path, "");
  GLAM_REQUIRE(version == kShardsVersion, "shard manifest '", path, "': version ", version,
               " is not supported (this glam reads version ", kShardsVersion, ")");
  ShardManifest m;
  m.source = field<std::string>(j, "source", path, "");
  m.tokenizer_hash = field<std::string>(j, "tokenizer_hash", path, "");
  m.vocab_size = field<int64_t>(j, "vocab_size", path, "");
  m.eod_id = field<int64_t>(j, "eod_id", path, "");
  m.input_bytes = field<int64_t>(j, "input_bytes", path, "");
  m.unk_pieces = field<int64_t>(j, "unk_pieces", path, "");
  m.unk_bytes = field<int64_t>(j, "unk_bytes", path, "");
  GLAM_REQUIRE(m.vocab_size > 0 && m.vocab_size <= std::numeric_limits<int32_t>::max(), "shard manifest '", path,
               "': vocab_size ", m.vocab_size, " is out of range");
  GLAM_REQUIRE(m.eod_id >= 0 && m.eod_id < m.vocab_size, "shard manifest '", path, "': eod_id ", m.eod_id,
               " is outside the vocabulary [0, ", m.vocab_size, ")");
  const json shards = field<json>(j, "shards", path, "");
  GLAM_REQUIRE(shards.is_array(), "shard manifest '", path, "': field \"shards\" is not a list");
  GLAM_REQUIRE(shards.size() <= kMaxShards, "shard manifest '", path, "' lists ", shards.size(),
               " shards, more than ", kMaxShards);
  for (size_t i = 0; i < shards.size(); ++i) m.shards.push_back(read_entry(shards[i], i, path));
  GLAM_REQUIRE(m.n_tokens("train") > 0, "shard manifest '", path, "' lists no training shard");
  return m;
}

std::vector<std::string> shard_paths(const std::string& manifest_path, const ShardManifest& m,
                                     const std::string& split) {
  const fs::path dir = fs::path(manifest_path).parent_path();
  std::vector<std::string> out;
  for (const auto& s : m.shards)
    if (s.split == split) out.push_back((dir / s.file).string());
  return out;
}

Corpus load_shards(const std::string& manifest_path, const ShardManifest& m,
                   const std::string& split, int64_t expected_vocab) {
  const auto paths = shard_paths(manifest_path, m, split);
  GLAM_REQUIRE(!paths.empty(), "shard manifest '", manifest_path, "' lists no ", split, " shard");
  Corpus corpus(paths, expected_vocab);
  size_t k = 0;
  for (const auto& s : m.shards) {
    if (s.split != split) continue;
    const CorpusInfo& got = corpus.shard_infos()[k];
    const std::string& file = paths[k++];
    GLAM_REQUIRE(got.tokenizer_hash == m.tokenizer_hash && got.vocab_size == m.vocab_size &&
                     got.eod_id == m.eod_id,
                 "corpus shard '", file, "' has tokenizer_hash ", got.tokenizer_hash,
                 ", vocab_size ", got.vocab_size, ", eod_id ", got.eod_id, " but its manifest '",
                 manifest_path, "' says ", m.tokenizer_hash, ", ", m.vocab_size, ", ", m.eod_id);
    GLAM_REQUIRE(got.n_tokens == s.n_tokens && got.n_docs == s.n_docs && got.checksum == s.checksum,
                 "corpus shard '", file, "' does not match its manifest '", manifest_path, "' (",
                 got.n_docs, " docs, ", got.n_tokens, " tokens, checksum ", hex16(got.checksum),
                 "; expected ", s.n_docs, ", ", s.n_tokens, ", ", hex16(s.checksum),
                 "): damaged, truncated or replaced; encode it again");
  }
  return corpus;
}

}  // namespace glam
