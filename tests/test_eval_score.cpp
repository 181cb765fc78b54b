// Eval scores: answer normalisation, exact match and token F1 on hand-worked cases;
// a continuation's log-likelihood from eval's batched scorer equals the sum of
// log-softmax(logits) over its tokens from a plain one-row forward; the loss of a
// token stream equals the training loss of the same tokens read through Corpus.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "glam/data/corpus.h"
#include "glam/eval/eval.h"

using namespace glam;

namespace {

Config small_config(int64_t vocab, int64_t seq_len) {
  Config c;
  c.model.vocab_size = vocab;
  c.model.d_model = 32;
  c.model.n_layers = 3;
  c.model.n_heads = 4;
  c.model.d_head = 8;
  c.model.d_ff = 48;
  c.model.n_experts = 4;
  c.model.group_size = 16;
  c.model.seq_len = seq_len;
  c.train.batch_rows = 2;
  c.train.seed = 21;
  c.validate();
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t lo, int64_t hi, std::mt19937_64& rng) {
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(lo + rng() % (hi - lo));
  return ids;
}

// log P(continuation | context) from one row: the last S+1 tokens, a forward
// with inference routing, log-softmax of the logits in double.
double reference_logprob(Model& model, const ScoreRequest& q) {
  const int64_t S = model.config().seq_len, V = model.config().vocab_size;
  std::vector<int32_t> all = q.context;
  all.insert(all.end(), q.continuation.begin(), q.continuation.end());
  const int64_t keep = std::min<int64_t>(S + 1, static_cast<int64_t>(all.size())), n = keep - 1;
  const std::vector<int32_t> w(all.end() - keep, all.end());
  Batch b;
  b.rows = 1; b.seq_len = n;
  b.ids.assign(w.begin(), w.end() - 1);
  b.targets.assign(n, -1);
  b.segments.assign(n, 0);
  model.forward(b, /*no_drop=*/true);
  double sum = 0.0;
  for (int64_t j = n - static_cast<int64_t>(q.continuation.size()); j < n; j++) {
    const float* logits = model.logits().data() + j * V;
    double mx = -INFINITY, z = 0.0;
    for (int64_t v = 0; v < V; v++) mx = std::max(mx, static_cast<double>(logits[v]));
    for (int64_t v = 0; v < V; v++) z += std::exp(logits[v] - mx);
    sum += logits[w[j + 1]] - mx - std::log(z);
  }
  return sum;
}

}  // namespace

TEST_CASE("answer normalisation: lower case, no punctuation, no articles, single spaces") {
  CHECK(normalize_answer("The  Eiffel Tower!") == "eiffel tower");
  CHECK(normalize_answer("An apple a day") == "apple day");
  CHECK(normalize_answer("  U.S.A. \t\n") == "usa");
  CHECK(normalize_answer("Anne and Theo") == "anne and theo");  // articles only as whole words
  CHECK(normalize_answer("rock-n-roll, (live)") == "rocknroll live");
  CHECK(normalize_answer("the") == "");
  CHECK(normalize_answer("Théâtre") == "théâtre");  // bytes beyond ASCII are kept as they are
  CHECK(normalize_answer("A the an") == "");
}

TEST_CASE("exact match and token F1 against hand-worked values") {
  CHECK(exact_match("the Beatles", "Beatles!"));
  CHECK(exact_match(" Paris.", "paris"));
  CHECK_FALSE(exact_match("Paris, France", "Paris"));
  CHECK(token_f1("Barack Obama", "Obama") == Approx(2.0 / 3.0));      // p = 1/2, r = 1
  CHECK(token_f1("the cat sat", "cat sat on mat") == Approx(2.0 / 3.0));  // p = 1, r = 1/2
  CHECK(token_f1("cat cat", "cat") == Approx(2.0 / 3.0));             // a word counts as often as it occurs in both
  CHECK(token_f1("dog", "cat") == 0.0);
  CHECK(token_f1("a", "the") == 1.0);   // both empty after normalisation
  CHECK(token_f1("x", "the") == 0.0);
  CHECK(token_f1("New York City", "new york city") == 1.0);
  const AnswerScore s = best_answer_score("New York", {"NYC", "New York City", "new york"});
  CHECK(s.em == 1.0);
  CHECK(s.f1 == 1.0);
  const AnswerScore t = best_answer_score("York", {"NYC", "New York City"});
  CHECK(t.em == 0.0);
  CHECK(t.f1 == Approx(0.5));  // against "new york city": p = 1, r = 1/3
}

TEST_CASE("a continuation's log-likelihood equals the sum of its tokens' log-softmax from a plain forward") {
  const Config cfg = small_config(50, 24);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  std::mt19937_64 rng(4);
  std::vector<ScoreRequest> requests;
  for (int64_t ctx : {1, 5, 9, 23, 30}) {  // 23 + 3 and 30 + n exceed seq_len + 1: the context is cut from the left
    for (int64_t cont : {1, 3, 7}) requests.push_back({random_ids(ctx, 3, 50, rng), random_ids(cont, 3, 50, rng)});
  }
  requests.push_back({random_ids(2, 3, 50, rng), random_ids(24, 3, 50, rng)});  // a continuation of seq_len tokens
  // 3 rows per forward: several batches, rows of unequal length padded
  const std::vector<Continuation> got = score_continuations(model, mesh, requests, /*pad_id=*/2, /*rows=*/3);
  REQUIRE(got.size() == requests.size());
  double worst = 0.0;
  for (size_t i = 0; i < requests.size(); i++) {
    const double want = reference_logprob(model, requests[i]);
    CHECK(got[i].n_tokens == static_cast<int64_t>(requests[i].continuation.size()));
    CHECK(got[i].logprob < 0.0);
    worst = std::max(worst, std::abs(got[i].logprob - want) / (1.0 + std::abs(want)));
  }
  std::printf("  scorer vs plain forward + log-softmax over %zu continuations: worst rel diff %.2e (tol 1e-5)\n",
              requests.size(), worst);
  CHECK(worst < 1e-5);

  SECTION("a continuation longer than seq_len is refused") {
    std::vector<ScoreRequest> bad = {{random_ids(2, 3, 50, rng), random_ids(25, 3, 50, rng)}};
    CHECK_THROWS_WITH(score_continuations(model, mesh, bad, 2), Catch::Contains("does not fit the model's seq_len 24"));
  }
}

TEST_CASE("the loss of a token stream equals the training loss of the same tokens read through Corpus") {
  const int64_t S = 16;
  const Config cfg = small_config(40, S);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  std::mt19937_64 rng(8);
  const int32_t eod = 2;
  // documents whose tokens plus one eod each fill exactly 3 windows: 3*S + 1 stream tokens
  std::vector<std::vector<int32_t>> docs;
  std::vector<int32_t> stream;
  for (int64_t len : {5, 1, 12, 9, 7, 9}) {
    docs.push_back(random_ids(len, 3, 40, rng));
    stream.insert(stream.end(), docs.back().begin(), docs.back().end());
    stream.push_back(eod);
  }
  REQUIRE(static_cast<int64_t>(stream.size()) == 3 * S + 1);
  const std::string path = "eval_stream_test.h5";
  std::filesystem::remove(path);
  CorpusInfo info;
  info.source = "test";
  info.tokenizer_hash = "none";
  info.vocab_size = 40;
  info.eod_id = eod;
  write_corpus(path, docs, info, /*overwrite=*/true);
  Corpus corpus(path, 40);
  const Batch b = corpus.rows(0, 3, S);  // stream positions [0, 3S]: the same three windows
  const LossParts parts = model.forward(b, /*no_drop=*/true);
  const double want = parts.ce * static_cast<double>(parts.n_targets);
  for (int64_t rows : {1, 2, 8}) {
    const StreamNll got = stream_nll(model, mesh, stream, eod, rows);
    std::printf("  stream nll %.6f vs training ce * targets %.6f (%lld targets, %lld rows per forward)\n", got.nll, want,
                static_cast<long long>(got.n_targets), static_cast<long long>(rows));
    CHECK(got.n_targets == parts.n_targets);
    CHECK(got.n_targets == 3 * S - 5);  // 3S inputs, 5 of them eods (the sixth eod ends the stream: no input)
    CHECK(got.nll == Approx(want).epsilon(1e-6));
  }
  std::filesystem::remove(path);
}
