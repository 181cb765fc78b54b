// Mixture files, sources and the choice of a source for each global row
// (include/glam/data/mixture.h). A source is loaded once, whole, into memory.
#include "glam/data/mixture.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "glam/data/bounded_read.h"
#include "glam/base/check.h"
#include "glam/base/hash.h"
#include "glam/data/shards.h"

namespace glam {

namespace {

namespace fs = std::filesystem;

// Weights are relative; bounded so that their sum stays finite. Sources each load a corpus.
constexpr double kMaxWeight = 1e12;
constexpr size_t kMaxSources = 4096;

bool has_extension(const std::string& path, const char* ext) {
  return fs::path(path).extension() == ext;
}

// One source from a corpus file (no held-out rows) or a shard manifest.
MixtureSource load_source(const std::string& name, double weight, const std::string& path,
                          int64_t expected_vocab) {
  MixtureSource s;
  s.name = name;
  s.weight = weight;
  s.path = path;
  if (has_extension(path, ".json")) {
    const ShardManifest m = read_manifest(path);
    if (s.name.empty()) s.name = m.source;
    s.train = std::make_shared<Corpus>(load_shards(path, m, "train", expected_vocab));
    if (m.n_tokens("val") > 0)
      s.val = std::make_shared<Corpus>(load_shards(path, m, "val", expected_vocab));
  } else {
    s.train = std::make_shared<Corpus>(path, expected_vocab);
  }
  return s;
}

std::string trim_comment(const std::string& line) {
  return line.substr(0, line.find('#'));
}

// Lines "name weight path"; paths relative to the mixture file's directory.
std::vector<MixtureSource> read_mixture_file(const std::string& path, int64_t expected_vocab) {
  GLAM_REQUIRE(fs::exists(path), "corpus file '", path, "' does not exist");
  GLAM_REQUIRE(!fs::is_directory(path), "corpus file '", path, "' is a directory");
  ReadingFile reading(path);
  std::ifstream in(path);
  GLAM_REQUIRE(in, "cannot read mixture file '", path, "'");
  const fs::path dir = fs::path(path).parent_path();
  std::vector<MixtureSource> sources;
  std::set<std::string> names;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    std::istringstream fields(trim_comment(line));
    std::string name, weight_text, file, extra;
    if (!(fields >> name)) continue;
    fields >> weight_text >> file;
    GLAM_REQUIRE(!file.empty() && !(fields >> extra), "mixture file '", path, "' line ", line_no,
                 ": expected 'name weight path', got '", line, "'");
    double weight = 0;
    std::istringstream w(weight_text);
    GLAM_REQUIRE((w >> weight) && w.eof() && weight > 0 && weight <= kMaxWeight, "mixture file '", path,
                 "' line ", line_no, ": weight '", weight_text, "' of source '", name,
                 "' must be a positive number up to ", kMaxWeight);
    GLAM_REQUIRE(sources.size() < kMaxSources, "mixture file '", path, "' line ", line_no, ": more than ",
                 kMaxSources, " sources");
    GLAM_REQUIRE(names.insert(name).second, "mixture file '", path, "' line ", line_no,
                 ": source '", name, "' is listed twice");
    const std::string resolved = fs::path(file).is_absolute() ? file : (dir / file).string();
    sources.push_back(load_source(name, weight, resolved, expected_vocab));
  }
  GLAM_REQUIRE(!sources.empty(), "mixture file '", path, "' lists no source ('name weight path' lines)");
  for (const auto& s : sources)
    GLAM_REQUIRE(s.train->info().tokenizer_hash == sources.front().train->info().tokenizer_hash,
                 "mixture file '", path, "': source '", s.name, "' (", s.path,
                 ") was tokenized with another model than source '", sources.front().name, "' (",
                 sources.front().path, ")");
  return sources;
}

}  // namespace

double uniform_hash(uint64_t seed, uint64_t index) {
  return unit_interval(splitmix64(splitmix64(seed) ^ index));
}

Mixture Mixture::open(const std::string& path, int64_t expected_vocab) {
  if (has_extension(path, ".json") || has_extension(path, ".h5") || has_extension(path, ".hdf5"))
    return Mixture({load_source(has_extension(path, ".json") ? "" : fs::path(path).stem().string(),
                                1.0, path, expected_vocab)});
  return Mixture(read_mixture_file(path, expected_vocab));
}

Mixture::Mixture(std::vector<MixtureSource> sources) : sources_(std::move(sources)) {
  GLAM_REQUIRE(!sources_.empty(), "a mixture needs at least one source");
  double total = 0;
  for (const auto& s : sources_) {
    // Names go into logs and metrics.jsonl keys as they are.
    GLAM_REQUIRE(!s.name.empty() && s.name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                             "0123456789_-.") == std::string::npos,
                 "source name '", s.name, "' (", s.path,
                 ") may hold only letters, digits, '_', '-' and '.'");
    GLAM_REQUIRE(s.weight > 0 && std::isfinite(s.weight) && s.train, "source '", s.name, "' needs a positive weight and rows");
    total += s.weight;
  }
  info_ = sources_.front().train->info();
  info_.n_docs = info_.n_tokens = 0;
  double acc = 0;
  for (auto& s : sources_) {
    s.weight /= total;
    acc += s.weight;
    cdf_.push_back(acc);
    info_.n_docs += s.train->info().n_docs;
    info_.n_tokens += s.train->info().n_tokens;
  }
  cdf_.back() = 1.0;
}

size_t Mixture::source_of_row(uint64_t seed, int64_t global_row) const {
  if (cdf_.size() == 1) return 0;
  const double u = uniform_hash(seed, static_cast<uint64_t>(global_row));
  return std::upper_bound(cdf_.begin(), cdf_.end(), u) - cdf_.begin();
}

}  // namespace glam
