// Tests of mixtures and the loader (include/glam/data/mixture.h, loader.h): source
// frequencies against the weights, a one-source mixture equals the plain corpus
// stream, the global batch does not depend on the number of data ranks, a
// resumed loader continues with the same rows, mixture files and manifests
// with bad content are refused naming the file. Files go to ./mixture/.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>

#include "glam/base/check.h"
#include "glam/data/corpus.h"
#include "glam/data/loader.h"
#include "glam/data/mixture.h"
#include "glam/data/shards.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

std::string temp_path(const std::string& name) {
  fs::create_directories("mixture");
  const std::string path = "mixture/" + name;
  fs::remove(path);
  return path;
}

glam::CorpusInfo make_info(const std::string& hash = "00000000000000aa") {
  glam::CorpusInfo info;
  info.source = "unit-test";
  info.tokenizer_hash = hash;
  info.vocab_size = 1000;
  info.eod_id = 1;
  return info;
}

// A corpus of n_docs documents whose token ids start at `base` (so rows show
// which source they came from), document d holding 1 + d % 7 tokens.
std::string write_source(const std::string& name, int base, int n_docs,
                         const std::string& hash = "00000000000000aa") {
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < n_docs; ++d) {
    docs.emplace_back();
    for (int t = 0; t <= d % 7; ++t) docs.back().push_back(base + (d * 7 + t) % 90);
  }
  const std::string path = temp_path(name);
  glam::write_corpus(path, docs, make_info(hash), true);
  return path;
}

glam::MixtureSource source(const std::string& name, double weight, const std::string& path) {
  glam::MixtureSource s;
  s.name = name;
  s.weight = weight;
  s.path = path;
  s.train = std::make_shared<glam::Corpus>(path);
  return s;
}

// Three sources, weights 5 : 3 : 2, ids in 100.., 200.., 300.. (eod 1 in all).
glam::Mixture three_sources() {
  return glam::Mixture({source("a", 5, write_source("a.h5", 100, 40)),
                        source("b", 3, write_source("b.h5", 200, 25)),
                        source("c", 2, write_source("c.h5", 300, 10))});
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const glam::UserError& e) {
    return e.what();
  }
  return "no error";
}

glam::LoaderOptions options(int64_t data_rank, int64_t data_size, int64_t first_step = 0) {
  glam::LoaderOptions o;
  o.seed = 77;
  o.batch_rows = 8;
  o.seq_len = 12;
  o.data_rank = data_rank;
  o.data_size = data_size;
  o.first_step = first_step;
  o.depth = 3;
  return o;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
}

}  // namespace

TEST_CASE("source frequencies converge to the weights", "[mixture]") {
  const glam::Mixture mix = three_sources();
  // N rows drawn independently: the count of source s is Binomial(N, w_s), so its
  // frequency is within 5 standard deviations sqrt(w (1-w) / N) of w but for a
  // chance below 1e-6 per source (and the draw is fixed by the seed).
  const int64_t N = 200000;
  std::vector<int64_t> count(mix.size(), 0);
  for (int64_t g = 0; g < N; ++g) ++count[mix.source_of_row(1234, g)];
  const double weights[] = {0.5, 0.3, 0.2};
  for (size_t s = 0; s < mix.size(); ++s) {
    const double w = weights[s], f = static_cast<double>(count[s]) / N;
    const double bound = 5 * std::sqrt(w * (1 - w) / N);
    INFO("source " << s << ": frequency " << f << ", weight " << w << ", bound " << bound);
    CHECK(mix.source(s).weight == Approx(w));
    CHECK(std::abs(f - w) < bound);
  }
  // The loader counts the same rows: after 1000 steps of 8 rows the epochs match.
  glam::RowPlan plan(mix, 1234, 8);
  plan.skip_to(1000);
  int64_t total = 0;
  for (size_t s = 0; s < mix.size(); ++s) total += plan.rows_drawn()[s];
  CHECK(total == 8000);
}

TEST_CASE("a one-source mixture reads the corpus stream in order", "[mixture][loader]") {
  const std::string path = write_source("one.h5", 100, 30);
  const glam::Mixture mix = glam::Mixture::open(path);
  const glam::Corpus corpus(path);
  REQUIRE(mix.size() == 1);
  CHECK(mix.source(0).name == "one");
  for (int64_t d : {0, 1}) {
    glam::DataLoader loader(mix, options(d, 2));
    for (int64_t step = 0; step < 6; ++step) {
      const glam::LoadedBatch b = loader.next();
      const glam::Batch want = corpus.rows(step * 8 + d * 4, 4, 12);
      CHECK(b.step == step);
      CHECK(b.batch.ids == want.ids);
      CHECK(b.batch.targets == want.targets);
      CHECK(b.batch.segments == want.segments);
      CHECK(b.rows_drawn[0] == (step + 1) * 8);
    }
  }
}

TEST_CASE("the global batch of a step is the same for 1, 2 and 4 data ranks", "[mixture][loader]") {
  const glam::Mixture mix = three_sources();
  glam::DataLoader one(mix, options(0, 1));
  std::vector<std::unique_ptr<glam::DataLoader>> twos, fours;
  for (int d = 0; d < 2; ++d) twos.push_back(std::make_unique<glam::DataLoader>(mix, options(d, 2)));
  for (int d = 0; d < 4; ++d) fours.push_back(std::make_unique<glam::DataLoader>(mix, options(d, 4)));
  bool saw_every_source = true;
  for (int64_t step = 0; step < 20; ++step) {
    const glam::LoadedBatch whole = one.next();
    for (auto* split : {&twos, &fours}) {
      std::vector<int32_t> ids, targets, segments;
      for (auto& loader : *split) {
        const glam::LoadedBatch part = loader->next();
        CHECK(part.rows_drawn == whole.rows_drawn);
        ids.insert(ids.end(), part.batch.ids.begin(), part.batch.ids.end());
        targets.insert(targets.end(), part.batch.targets.begin(), part.batch.targets.end());
        segments.insert(segments.end(), part.batch.segments.begin(), part.batch.segments.end());
      }
      CHECK(ids == whole.batch.ids);
      CHECK(targets == whole.batch.targets);
      CHECK(segments == whole.batch.segments);
    }
    if (step == 19)
      for (int64_t n : whole.rows_drawn) saw_every_source = saw_every_source && n > 0;
  }
  CHECK(saw_every_source);
}

TEST_CASE("rows come from the source the plan names, in the source's order", "[mixture][loader]") {
  const glam::Mixture mix = three_sources();
  glam::RowPlan plan(mix, 77, 8);
  glam::DataLoader loader(mix, options(0, 1));
  std::vector<glam::RowPlan::RowRef> refs;
  for (int64_t step = 0; step < 10; ++step) {
    plan.next(refs);
    const glam::LoadedBatch b = loader.next();
    for (int64_t r = 0; r < 8; ++r) {
      const glam::Batch want = mix.source(refs[r].source).train->rows(refs[r].row, 1, 12);
      CHECK(std::vector<int32_t>(b.batch.ids.begin() + r * 12, b.batch.ids.begin() + (r + 1) * 12) ==
            want.ids);
    }
  }
}

TEST_CASE("a loader started at step k continues with the rows of an uninterrupted one", "[mixture][loader]") {
  const glam::Mixture mix = three_sources();
  for (int64_t d : {0, 1}) {
    glam::DataLoader from_start(mix, options(d, 2));
    std::vector<glam::LoadedBatch> first;
    for (int64_t step = 0; step < 15; ++step) first.push_back(from_start.next());
    glam::DataLoader resumed(mix, options(d, 2, 9));
    for (int64_t step = 9; step < 15; ++step) {
      const glam::LoadedBatch b = resumed.next();
      CHECK(b.step == step);
      CHECK(b.batch.ids == first[step].batch.ids);
      CHECK(b.batch.targets == first[step].batch.targets);
      CHECK(b.batch.segments == first[step].batch.segments);
      CHECK(b.rows_drawn == first[step].rows_drawn);
    }
  }
  // Another seed draws other rows.
  glam::LoaderOptions other = options(0, 1);
  other.seed = 78;
  glam::DataLoader a(mix, options(0, 1)), b(mix, other);
  bool differ = false;
  for (int step = 0; step < 5; ++step) differ = differ || a.next().batch.ids != b.next().batch.ids;
  CHECK(differ);
}

TEST_CASE("epochs count the tokens drawn from each source", "[mixture][loader]") {
  const glam::Mixture mix = three_sources();
  glam::RowPlan plan(mix, 5, 8);
  plan.skip_to(50);
  for (size_t s = 0; s < mix.size(); ++s)
    CHECK(glam::epochs_of(mix, plan.rows_drawn(), s, 12) ==
          Approx(plan.rows_drawn()[s] * 12.0 / mix.source(s).train->info().n_tokens));
}

TEST_CASE("mixture files: sources, weights and paths relative to the file", "[mixture][files]") {
  write_source("x.h5", 100, 20);
  write_source("y.h5", 200, 20);
  const std::string path = temp_path("good.ini");
  write_text(path, "# a comment\n\nx 2 x.h5   # trailing comment\ny 0.5 y.h5\n");
  const glam::Mixture mix = glam::Mixture::open(path);
  REQUIRE(mix.size() == 2);
  CHECK(mix.source(0).name == "x");
  CHECK(mix.source(0).weight == Approx(0.8));
  CHECK(mix.source(1).weight == Approx(0.2));
  CHECK(mix.info().n_tokens == mix.source(0).train->info().n_tokens + mix.source(1).train->info().n_tokens);
}

TEST_CASE("bad mixture files are refused naming the file and the line", "[mixture][files][errors]") {
  write_source("x.h5", 100, 20);
  write_source("other_hash.h5", 100, 20, "00000000000000bb");
  const std::string path = temp_path("bad.ini");
  auto error_with = [&](const std::string& text) {
    write_text(path, text);
    return error_of([&] { glam::Mixture::open(path); });
  };
  CHECK_THAT(error_with("x -1 x.h5\n"),
             Contains("mixture file 'mixture/bad.ini' line 1: weight '-1' of source 'x' must be a positive number"));
  CHECK_THAT(error_with("x 1 x.h5\nx 2 x.h5\n"), Contains("line 2: source 'x' is listed twice"));
  CHECK_THAT(error_with("x 1\n"), Contains("line 1: expected 'name weight path'"));
  CHECK_THAT(error_with("# nothing\n"), Contains("mixture file 'mixture/bad.ini' lists no source"));
  CHECK_THAT(error_with("x 1 missing.h5\n"), Contains("corpus file 'mixture/missing.h5' does not exist"));
  CHECK_THAT(error_with("x 1 x.h5\nz 1 other_hash.h5\n"),
             Contains("source 'z' (mixture/other_hash.h5) was tokenized with another model"));
  CHECK_THAT(error_with("x y x.h5\n"), Contains("line 1: weight 'y' of source 'x' must be a positive number"));
  CHECK_THAT(error_with("x\"y 1 x.h5\n"), Contains("source name 'x\"y' (mixture/x.h5) may hold only letters"));
  CHECK_THAT(error_of([] { glam::Mixture::open("mixture/none.ini"); }),
             Contains("corpus file 'mixture/none.ini' does not exist"));
}

TEST_CASE("a manifest's shards are checked: damaged, truncated, foreign", "[mixture][shards][errors]") {
  fs::create_directories("mixture/shards");
  std::vector<std::vector<int32_t>> docs = {{5, 6, 7}, {8, 9}};
  glam::ShardManifest m;
  m.source = "s";
  m.tokenizer_hash = "00000000000000aa";
  m.vocab_size = 1000;
  m.eod_id = 1;
  for (const char* split : {"train", "val"}) {
    const std::string file = std::string(split) + "-00000.h5";
    const auto info = glam::write_corpus("mixture/shards/" + file, docs, make_info(), true);
    m.shards.push_back({file, split, info.n_docs, info.n_tokens, info.checksum});
  }
  const std::string manifest = "mixture/shards/manifest.json";
  glam::write_manifest(manifest, m);
  const glam::Mixture good = glam::Mixture::open(manifest);
  CHECK(good.source(0).name == "s");
  REQUIRE(good.source(0).val);
  CHECK(good.source(0).val->info().n_tokens == 7);

  SECTION("a shard whose content changed") {
    glam::write_corpus("mixture/shards/train-00000.h5", {{5, 6, 7}, {8, 10}}, make_info(), true);
    CHECK_THAT(error_of([&] { glam::Mixture::open(manifest); }),
               Contains("corpus shard 'mixture/shards/train-00000.h5' does not match its manifest"));
  }
  SECTION("a truncated shard") {
    fs::resize_file("mixture/shards/val-00000.h5", fs::file_size("mixture/shards/val-00000.h5") / 2);
    CHECK_THAT(error_of([&] { glam::Mixture::open(manifest); }), Contains("mixture/shards/val-00000.h5"));
  }
  SECTION("a shard of another tokenizer") {
    glam::write_corpus("mixture/shards/train-00000.h5", docs, make_info("00000000000000bb"), true);
    CHECK_THAT(error_of([&] { glam::Mixture::open(manifest); }),
               Contains("corpus shard 'mixture/shards/train-00000.h5' has tokenizer_hash 00000000000000bb"));
  }
  SECTION("ids outside the model's vocabulary") {
    CHECK_THAT(error_of([&] { glam::Mixture::open(manifest, 8); }),
               Contains("train-00000.h5': token id 8 at position 4 is >= the expected vocabulary size 8"));
  }
  SECTION("a manifest that is not JSON, or lacks a field") {
    write_text(manifest, "{\"format\": \"glam-shards\",");
    CHECK_THAT(error_of([&] { glam::Mixture::open(manifest); }),
               Contains("shard manifest 'mixture/shards/manifest.json' is not valid JSON"));
    write_text(manifest, "{\"format\": \"glam-shards\", \"version\": 1}");
    CHECK_THAT(error_of([&] { glam::Mixture::open(manifest); }), Contains("field \"source\" is missing"));
  }
}
