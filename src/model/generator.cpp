// Generation with a KV cache and log-likelihood scoring (see generator.h).
// Every rank runs the same loop on the same prompts; the token choices are made
// on world rank 0 and broadcast, so all ranks always agree on what comes next.
#include "glam/model/generator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <numeric>
#include <random>

#include "glam/base/check.h"
#include "glam/base/cli.h"

namespace glam {

namespace {

// Full-vocabulary log-softmax of the last position of each of `rows` rows from
// the model's vocabulary-sharded logits [rows * n, Vl].
std::vector<std::vector<double>> last_logprobs(const Model& model, const Mesh& mesh, int64_t rows, int64_t n) {
  const int64_t Vl = model.config().vocab_size / mesh.model_size, V = Vl * mesh.model_size;
  std::vector<float> mine(rows * Vl), all(rows * V);
  for (int64_t r = 0; r < rows; r++)
    std::copy_n(model.logits().begin() + ((r + 1) * n - 1) * Vl, Vl, mine.begin() + r * Vl);
  mesh.allgather_model(mine.data(), rows * Vl, all.data());  // [model rank, rows, Vl]
  std::vector<std::vector<double>> lp(rows, std::vector<double>(V));
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t m = 0; m < mesh.model_size; m++)
      for (int64_t v = 0; v < Vl; v++) lp[r][m * Vl + v] = all[(m * rows + r) * Vl + v];
    const double mx = *std::max_element(lp[r].begin(), lp[r].end());
    GLAM_REQUIRE(std::isfinite(mx), "the model's logits are not finite (NaN or Inf in weights.h5; was it trained ",
                 "with a huge train.lr?)");
    double sum = 0.0;
    for (double x : lp[r]) sum += std::exp(x - mx);
    const double lse = mx + std::log(sum);
    for (double& x : lp[r]) x -= lse;
  }
  return lp;
}

int32_t sample(const std::vector<double>& lp, int64_t n_valid, const SamplingOptions& opt, std::mt19937_64& rng) {
  if (opt.temperature <= 0.0)
    return static_cast<int32_t>(std::max_element(lp.begin(), lp.begin() + n_valid) - lp.begin());
  std::vector<int32_t> order(n_valid);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return lp[a] > lp[b]; });
  int64_t k = opt.top_k > 0 ? std::min<int64_t>(opt.top_k, n_valid) : n_valid;
  std::vector<double> p(k);
  double total = 0.0;
  for (int64_t i = 0; i < k; i++) total += (p[i] = std::exp((lp[order[i]] - lp[order[0]]) / opt.temperature));
  if (opt.top_p < 1.0) {  // nucleus: the smallest prefix holding top_p of the mass
    double acc = 0.0;
    for (int64_t i = 0; i < k; i++)
      if ((acc += p[i] / total) >= opt.top_p) { k = i + 1; break; }
    p.resize(k);
  }
  std::discrete_distribution<int64_t> pick(p.begin(), p.end());
  return order[pick(rng)];
}

// Position of the first stop string in text, or npos.
size_t find_stop(const std::string& text, const std::vector<std::string>& stop) {
  size_t best = std::string::npos;
  for (const std::string& s : stop)
    if (!s.empty()) best = std::min(best, text.find(s));
  return best;
}

// The text the tokens add after the prompt, with the word boundary between them
// (SentencePiece drops a leading space when a piece starts the decoded text).
std::string continuation_text(const Tokenizer& tok, const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), tokens.begin(), tokens.end());
  const std::string head = tok.decode(prompt), full = tok.decode(all);
  return full.compare(0, head.size(), head) == 0 ? full.substr(head.size()) : tok.decode(tokens);
}

struct Beam {
  std::vector<int32_t> tokens;
  double score = 0.0;
};

// The KV cache (keys and values of every layer for `beam` rows of seq_len
// tokens, fp32) and the beam candidates (beam * vocabulary, 16 bytes each)
// against the machine's memory.
void check_cache_fits(const SamplingOptions& opt, const ModelConfig& c, int64_t width) {
  int64_t bytes = 0, candidates = 0;
  const bool ok = checked_mul(opt.beam, c.seq_len, &bytes) && checked_mul(bytes, c.n_layers, &bytes) &&
                  checked_mul(bytes, width, &bytes) && checked_mul(bytes, 2 * 4, &bytes) &&
                  checked_mul(opt.beam, c.vocab_size * 16, &candidates) && checked_add(bytes, candidates, &bytes);
  const int64_t have = host_memory_bytes();
  GLAM_REQUIRE(ok && (have <= 0 || bytes <= have), "--beam ", opt.beam, ": the KV cache (beam * model.seq_len ",
               c.seq_len, " * model.n_layers ", c.n_layers, " * ", width, " * 8 bytes) and the candidates (beam * ",
               "model.vocab_size ", c.vocab_size, " * 16 bytes) need ",
               ok ? msg(bytes >> 20, " MiB") : std::string("more than 2^63 bytes"), " but this machine has ",
               have >> 20, " MiB; lower --beam");
}

// The W best of every beam's next tokens, by score (at the first step the beams
// are identical: only beam 0's): [W] parent beam, [W] token; -1 = none.
void best_candidates(std::vector<int32_t>& choice, const std::vector<Beam>& beams,
                     const std::vector<std::vector<double>>& lp, int64_t n_beams, int64_t n_valid) {
  const int64_t W = static_cast<int64_t>(choice.size()) / 2;
  std::vector<std::tuple<double, int32_t, int32_t>> cand;  // (score, beam, token)
  for (int32_t b = 0; b < n_beams; b++)
    for (int32_t v = 0; v < n_valid; v++) cand.emplace_back(beams[b].score + lp[b][v], b, v);
  const size_t k = std::min<size_t>(cand.size(), static_cast<size_t>(W));
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(),
                    [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  for (size_t i = 0; i < k; i++) {
    choice[i] = std::get<1>(cand[i]);
    choice[W + i] = std::get<2>(cand[i]);
  }
}

// The decoding of one prompt (Generator::generate): W beams (one when sampling),
// their rows of the KV cache, and the hypotheses that ended (eod or a stop string).
// The choices are made on world rank 0 and broadcast.
class Decoding {
 public:
  Decoding(Model& model, const Mesh& mesh, const Tokenizer& tok, const SamplingOptions& opt,
           const std::vector<int32_t>& prompt, uint64_t seed, KVCache& cache)
      : model_(model), mesh_(mesh), tok_(tok), opt_(opt), prompt_(prompt), cache_(cache), W_(opt.beam),
        max_positions_(model.config().seq_len),
        n_valid_(std::min<int64_t>(model.config().vocab_size, tok.vocab_size())),
        width_(model.config().n_heads / mesh.model_size * model.config().d_head), rng_(seed), beams_(W_) {}

  Generation run() {
    prefill(max_positions_);
    for (int64_t step = 0; step < opt_.max_tokens; step++) {
      const std::vector<int64_t> parent = advance(choose(step));
      if (parent.empty() || step + 1 == opt_.max_tokens) break;
      decode_next(parent);
    }
    return best();
  }

 private:
  // (Re)fills the cache with the last `keep` tokens of every beam's context.
  void prefill(int64_t keep) {
    cache_.reset(W_, max_positions_, model_.config().n_layers, width_);
    std::vector<int32_t> ids;
    int64_t n = 0;
    for (const Beam& b : beams_) {
      std::vector<int32_t> ctx = prompt_;
      ctx.insert(ctx.end(), b.tokens.begin(), b.tokens.end());
      n = std::min<int64_t>(keep, static_cast<int64_t>(ctx.size()));
      ids.insert(ids.end(), ctx.end() - n, ctx.end());
    }
    model_.forward_cached(cache_, ids, n);
    lp_ = last_logprobs(model_, mesh_, W_, n);
  }

  // Rank 0's choice on every rank: [W] parent beam, [W] token; -1 = none.
  std::vector<int32_t> choose(int64_t step) {
    std::vector<int32_t> choice(2 * W_, -1);
    if (mesh_.is_root()) {
      if (W_ == 1) {
        choice[0] = 0;
        choice[1] = sample(lp_[0], n_valid_, opt_, rng_);
      } else {
        best_candidates(choice, beams_, lp_, step == 0 ? 1 : static_cast<int64_t>(beams_.size()), n_valid_);
      }
    }
    mesh_.broadcast_world(choice.data(), 2 * W_);
    return choice;
  }

  // Extends the chosen beams, setting aside those that end; returns each new
  // beam's parent, or nothing when the search is over.
  std::vector<int64_t> advance(const std::vector<int32_t>& choice) {
    std::vector<Beam> next;
    std::vector<int64_t> parent;
    for (int64_t i = 0; i < W_ && choice[i] >= 0; i++) {
      Beam b = beams_[choice[i]];
      const int32_t tok = choice[W_ + i];
      b.score += lp_[choice[i]][tok];
      if (tok == tok_.eod_id()) {
        finished_.emplace_back(b, "eod");
        continue;
      }
      b.tokens.push_back(tok);
      if (find_stop(continuation_text(tok_, prompt_, b.tokens), opt_.stop) != std::string::npos) {
        finished_.emplace_back(b, "stop");
        continue;
      }
      next.push_back(b);
      parent.push_back(choice[i]);
    }
    if (static_cast<int64_t>(finished_.size()) >= W_ || next.empty()) {
      beams_.clear();
      return {};
    }
    // keep W rows in the cache: pad with copies of the first survivor that can never win
    while (static_cast<int64_t>(next.size()) < W_) {
      next.push_back(next[0]);
      next.back().score = -std::numeric_limits<double>::infinity();
      parent.push_back(parent[0]);
    }
    beams_ = next;
    return parent;
  }

  // The log-probabilities of each beam's next token, after its last one.
  void decode_next(const std::vector<int64_t>& parent) {
    if (cache_.len + 1 > max_positions_) {
      prefill(max_positions_ / 2);  // slide: keep the last half of the context
      return;
    }
    std::vector<int32_t> ids(W_);
    for (int64_t b = 0; b < W_; b++) ids[b] = beams_[b].tokens.back();
    cache_.reorder(parent);
    model_.forward_cached(cache_, ids, 1);
    lp_ = last_logprobs(model_, mesh_, W_, 1);
  }

  // The best hypothesis: the finished ones compete with what is still open.
  Generation best() const {
    std::vector<std::pair<Beam, std::string>> all = finished_;
    for (const Beam& b : beams_)
      if (std::isfinite(b.score)) all.emplace_back(b, "length");
    GLAM_ASSERT(!all.empty());
    const auto best = std::max_element(all.begin(), all.end(),
                                       [](const auto& a, const auto& b) { return a.first.score < b.first.score; });
    Generation g;
    g.tokens = best->first.tokens;
    g.logprob = best->first.score;
    g.finish = best->second;
    g.text = continuation_text(tok_, prompt_, g.tokens);
    const size_t at = find_stop(g.text, opt_.stop);
    if (at != std::string::npos) {
      g.text = g.text.substr(0, at);
      g.finish = "stop";
    }
    return g;
  }

  Model& model_;
  const Mesh& mesh_;
  const Tokenizer& tok_;
  const SamplingOptions& opt_;
  const std::vector<int32_t>& prompt_;
  KVCache& cache_;
  const int64_t W_, max_positions_, n_valid_, width_;  // beams, cache positions, tokens to choose from, cache row width
  std::mt19937_64 rng_;
  std::vector<Beam> beams_;                              // [W] the open hypotheses
  std::vector<std::pair<Beam, std::string>> finished_;  // ended ones and why: "eod" or "stop"
  std::vector<std::vector<double>> lp_;                  // [W][V] log P of each beam's next token
};

}  // namespace

void check_sampling_options(const SamplingOptions& opt) {
  GLAM_REQUIRE(opt.beam >= 1 && opt.beam <= kMaxBeam, "--beam must be from 1 to ", kMaxBeam, ", got ", opt.beam);
  GLAM_REQUIRE(opt.max_tokens >= 0 && opt.max_tokens <= kMaxNewTokens, "--max-tokens must be from 0 to ",
               kMaxNewTokens, ", got ", opt.max_tokens);
  GLAM_REQUIRE(std::isfinite(opt.temperature) && opt.temperature >= 0.0 && opt.temperature <= 1e4,
               "--temperature must be from 0 (greedy) to 10000, got ", opt.temperature);
  GLAM_REQUIRE(opt.top_k >= 0, "--top-k must be >= 0, got ", opt.top_k);
  GLAM_REQUIRE(opt.top_p > 0.0 && opt.top_p <= 1.0, "--top-p must be in (0, 1], got ", opt.top_p);
}

Generator::Generator(Model& model, const Tokenizer& tokenizer, const Mesh& mesh)
    : model_(model), tok_(tokenizer), mesh_(mesh) {}

std::vector<Generation> Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                            const SamplingOptions& opt) {
  const ModelConfig& c = model_.config();
  check_sampling_options(opt);
  check_cache_fits(opt, c, c.n_heads / mesh_.model_size * c.d_head);
  std::vector<Generation> out;
  KVCache cache;
  for (size_t pi = 0; pi < prompts.size(); pi++) {
    GLAM_REQUIRE(!prompts[pi].empty(), "prompt ", pi, " encodes to no tokens");
    out.push_back(Decoding(model_, mesh_, tok_, opt, prompts[pi], opt.seed + pi, cache).run());
  }
  return out;
}

std::vector<double> Generator::token_logprobs(const std::vector<int32_t>& ids) {
  std::vector<double> out;
  const int64_t S = model_.config().seq_len;
  for (int64_t start = 0; start + 1 < static_cast<int64_t>(ids.size()); start += S) {
    const int64_t n = std::min<int64_t>(S, static_cast<int64_t>(ids.size()) - 1 - start);
    Batch b;
    b.rows = 1; b.seq_len = n;
    b.ids.assign(ids.begin() + start, ids.begin() + start + n);
    b.targets.assign(ids.begin() + start + 1, ids.begin() + start + 1 + n);
    b.segments.assign(n, 0);
    model_.forward(b, /*no_drop=*/true);
    const std::vector<double> lp = model_.target_logprobs();
    out.insert(out.end(), lp.begin(), lp.end());
  }
  return out;
}

std::vector<int32_t> Generator::greedy_recompute(const std::vector<int32_t>& prompt, int64_t max_tokens) {
  const ModelConfig& c = model_.config();
  std::vector<int32_t> ids = prompt, out;
  for (int64_t i = 0; i < max_tokens; i++) {
    const int64_t S = std::min<int64_t>(static_cast<int64_t>(ids.size()), c.seq_len);
    Batch b;
    b.rows = 1; b.seq_len = S;
    b.ids.assign(ids.end() - S, ids.end());
    b.targets.assign(S, -1);
    b.segments.assign(S, 0);
    model_.forward(b, /*no_drop=*/true);
    const std::vector<std::vector<double>> lp = last_logprobs(model_, mesh_, 1, S);
    std::vector<int32_t> next(1, static_cast<int32_t>(
        std::max_element(lp[0].begin(), lp[0].begin() + std::min<int64_t>(c.vocab_size, tok_.vocab_size())) - lp[0].begin()));
    mesh_.broadcast_world(next.data(), 1);
    if (next[0] == tok_.eod_id()) break;
    ids.push_back(next[0]);
    out.push_back(next[0]);
  }
  return out;
}

}  // namespace glam
