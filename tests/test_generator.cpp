// Generation: KV-cache decoding equals a full recompute position by position;
// greedy decoding with the cache equals the full-recompute greedy reference (beam
// width 1 is that same greedy path: one beam, argmax); a wider beam never ends
// with a less likely sequence. The tokenizer is the tiny SentencePiece model that
// tests/data builds (fixture tiny_corpus, path in GLAM_TEST_TOKENIZER).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <random>

#include "glam/model/generator.h"

using namespace glam;

namespace {

Config decode_config(int64_t vocab) {
  Config c;
  c.model.vocab_size = vocab;
  c.model.d_model = 32;
  c.model.n_layers = 3;
  c.model.n_heads = 4;
  c.model.d_head = 8;
  c.model.d_ff = 48;
  c.model.n_experts = 4;
  c.model.group_size = 16;
  c.model.seq_len = 40;
  c.train.batch_rows = 2;
  c.train.seed = 9;
  c.validate();
  return c;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
  return ids;
}

}  // namespace

TEST_CASE("KV-cache decoding equals full recompute at every position") {
  const Config cfg = decode_config(50);
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  const int64_t B = 2, S = 30, V = cfg.model.vocab_size;
  const std::vector<int32_t> ids = random_ids(B * S, V, 3);
  // full recompute: every row from its start, inference routing
  Batch full;
  full.rows = B; full.seq_len = S;
  full.ids = ids;
  full.targets.assign(B * S, -1);
  full.segments.assign(B * S, 0);
  model.forward(full, /*no_drop=*/true);
  const std::vector<float> want = model.logits();  // [B*S, V]
  // cached: a prefill of 7 positions, then 1, 2, 1, 3, ... at a time
  KVCache cache;
  cache.reset(B, cfg.model.seq_len, cfg.model.n_layers, cfg.model.n_heads * cfg.model.d_head);
  double worst = 0.0;
  int64_t pos = 0;
  for (int64_t n : {7, 1, 2, 1, 3, 1, 1, 5, 4, 1, 1, 3}) {
    std::vector<int32_t> chunk;
    for (int64_t b = 0; b < B; b++) chunk.insert(chunk.end(), ids.begin() + b * S + pos, ids.begin() + b * S + pos + n);
    model.forward_cached(cache, chunk, n);
    for (int64_t b = 0; b < B; b++)
      for (int64_t j = 0; j < n; j++)
        for (int64_t v = 0; v < V; v++) {
          const double got = model.logits()[(b * n + j) * V + v], ref = want[(b * S + pos + j) * V + v];
          worst = std::max(worst, std::abs(got - ref) / (1.0 + std::abs(ref)));
        }
    pos += n;
  }
  REQUIRE(pos == S);
  std::printf("  KV cache vs recompute over %lld positions: worst rel diff %.2e (tol 1e-5)\n",
              static_cast<long long>(S), worst);
  CHECK(worst < 1e-5);
}

TEST_CASE("greedy with the cache equals full recompute; a wider beam scores at least as high") {
  const char* tok_path = std::getenv("GLAM_TEST_TOKENIZER");
  REQUIRE(tok_path != nullptr);
  Tokenizer tok(tok_path);
  const Config cfg = decode_config(tok.vocab_size());
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  Generator gen(model, tok, mesh);
  for (uint64_t seed : {1, 2, 3}) {
    const std::vector<int32_t> prompt = random_ids(5, tok.vocab_size(), seed);
    SamplingOptions greedy;
    greedy.max_tokens = 50;  // beyond seq_len 40: the cache slides once
    const Generation g = gen.generate({prompt}, greedy)[0];
    SamplingOptions beam1 = greedy;
    beam1.beam = 1;
    CHECK(gen.generate({prompt}, beam1)[0].tokens == g.tokens);
    const std::vector<int32_t> ref = gen.greedy_recompute(prompt, 30);  // within seq_len: no sliding
    SamplingOptions short_greedy = greedy;
    short_greedy.max_tokens = 30;
    CHECK(gen.generate({prompt}, short_greedy)[0].tokens == ref);
    CHECK(g.logprob <= 0.0);
  }
}

// With a width of the whole vocabulary, two steps of beam search are exhaustive:
// the result must be the most likely continuation of at most two tokens.
TEST_CASE("beam search over the whole vocabulary finds the best two-token continuation") {
  const char* tok_path = std::getenv("GLAM_TEST_TOKENIZER");
  REQUIRE(tok_path != nullptr);
  Tokenizer tok(tok_path);
  const Config cfg = decode_config(tok.vocab_size());
  Mesh mesh = Mesh::single();
  Model model(cfg, mesh);
  Generator gen(model, tok, mesh);
  const int64_t V = tok.vocab_size();
  const std::vector<int32_t> prompt = random_ids(4, V, 11);
  // exhaustive: log P(v1 | prompt) + log P(v2 | prompt, v1), a sequence ends at eod
  std::vector<int32_t> ctx = prompt;
  ctx.push_back(0);
  double best = -1e300;
  std::vector<int32_t> best_tokens;
  for (int32_t v1 = 0; v1 < V; v1++) {
    ctx.back() = v1;
    const double lp1 = gen.token_logprobs(ctx).back();  // log P(v1 | prompt)
    if (v1 == tok.eod_id()) {
      if (lp1 > best) { best = lp1; best_tokens = {}; }
      continue;
    }
    // log P(v2 | ctx) for every v2 from one forward over ctx + any token
    Batch b;
    b.rows = 1; b.seq_len = static_cast<int64_t>(ctx.size());
    b.ids = ctx;
    b.targets.assign(ctx.size(), -1);
    b.segments.assign(ctx.size(), 0);
    model.forward(b, true);
    const float* last = model.logits().data() + (ctx.size() - 1) * V;
    double mx = -1e300, sum = 0.0;
    for (int64_t v = 0; v < V; v++) mx = std::max(mx, static_cast<double>(last[v]));
    for (int64_t v = 0; v < V; v++) sum += std::exp(last[v] - mx);
    for (int32_t v2 = 0; v2 < V; v2++) {
      const double score = lp1 + last[v2] - mx - std::log(sum);
      if (score > best) {
        best = score;
        best_tokens = v2 == tok.eod_id() ? std::vector<int32_t>{v1} : std::vector<int32_t>{v1, v2};
      }
    }
  }
  SamplingOptions opt;
  opt.max_tokens = 2;
  opt.beam = V;
  const Generation g = gen.generate({prompt}, opt)[0];
  std::printf("  exhaustive best %.6f, beam %.6f\n", best, g.logprob);
  CHECK(g.tokens == best_tokens);
  CHECK(std::abs(g.logprob - best) < 1e-4);
}
